"""The plugin's markers: the one place their arguments are parsed (their names and registration lines
are the plugin's: :data:`pytest_mps.plugin.markers.MARKER_LINES`).

Every marker is parsed into a frozen dataclass by :func:`parse_marker`; unknown or malformed arguments
raise :class:`MarkerError`, which the plugin turns into a collection error naming the test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_mps.plugin.markers import MARKER_LINES

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

__all__ = [
    "MARKER_LINES",
    "MarkerError",
    "MpsMarker",
    "MpsRequires",
    "MpsTolerance",
    "SkipMps",
    "XfailMps",
    "parse_marker",
]


class MarkerError(ValueError):
    """A marker was given arguments it does not take, or values it cannot use."""


@dataclass(frozen=True)
class MpsMarker:
    """``@pytest.mark.mps``: the test needs the target device."""


@dataclass(frozen=True)
class SkipMps:
    """``@pytest.mark.skip_mps(reason=...)``: skip on an MPS target (real or emulated)."""

    reason: str | None = None


@dataclass(frozen=True)
class MpsRequires:
    """``@pytest.mark.mps_requires(...)``: needs the target and these versions; implies ``mps``."""

    macos: SpecifierSet | None = None
    torch: SpecifierSet | None = None
    memory_gb: float | None = None


@dataclass(frozen=True)
class XfailMps:
    """``@pytest.mark.xfail_mps(...)``: expected failure on the MPS target inside the version ranges."""

    reason: str | None = None
    macos: SpecifierSet | None = None
    torch: SpecifierSet | None = None
    raises: type[BaseException] | tuple[type[BaseException], ...] | None = None
    strict: bool = True


@dataclass(frozen=True)
class MpsTolerance:
    """``@pytest.mark.mps_tolerance(...)``: per-test tolerances for the parity checks."""

    values: Mapping[str, float]


Parsed = MpsMarker | SkipMps | MpsRequires | XfailMps | MpsTolerance

TOLERANCE_KEYS: tuple[str, ...] = (
    "atol",
    "rtol",
    "max_cosine_distance",
    "min_psnr",
    "max_rms",
    "max_pixel_fraction",
)


def _example(name: str) -> str:
    return {
        "mps": "@pytest.mark.mps",
        "skip_mps": '@pytest.mark.skip_mps(reason="...")',
        "mps_requires": '@pytest.mark.mps_requires(macos=">=13", torch=">=2.0", memory_gb=64)',
        "xfail_mps": '@pytest.mark.xfail_mps(reason="...", macos="<14")',
        "mps_tolerance": "@pytest.mark.mps_tolerance(atol=1e-3, max_cosine_distance=1e-4)",
    }[name]


def _fail(name: str, problem: str) -> MarkerError:
    return MarkerError(f"@pytest.mark.{name}: {problem} (e.g. {_example(name)})")


def _kwargs(
    name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    allowed: tuple[str, ...],
    positional: str | None = None,
) -> dict[str, Any]:
    values = dict(kwargs)
    if args:
        if positional is None or len(args) > 1:
            raise _fail(name, f"takes no positional arguments, got {len(args)}")
        if positional in values:
            raise _fail(name, f"got {positional!r} twice")
        values[positional] = args[0]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "no arguments"
        raise _fail(name, f"unknown argument {', '.join(map(repr, unknown))}; expected {expected}")
    return values


def _specifier(name: str, key: str, value: Any) -> SpecifierSet | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, f"{key}= must be a version specifier string such as '>=13', got {value!r}")
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(value.replace(" ", ""))
    except InvalidSpecifier:
        raise _fail(name, f"{key}={value!r} is not a valid version specifier") from None


def _reason(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _fail(name, f"reason= must be a string, got {type(value).__name__}")


def _raises(name: str, value: Any) -> type[BaseException] | tuple[type[BaseException], ...] | None:
    if value is None:
        return None
    candidates = value if isinstance(value, tuple) else (value,)
    if not candidates or not all(isinstance(c, type) and issubclass(c, BaseException) for c in candidates):
        raise _fail(name, f"raises= must be an exception class or a tuple of them, got {value!r}")
    return value


def parse_marker(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Parsed:
    """Parse one of the plugin's markers into its dataclass, or raise :class:`MarkerError`."""
    if name == "mps":
        _kwargs(name, args, kwargs, ())
        return MpsMarker()
    if name == "skip_mps":
        values = _kwargs(name, args, kwargs, ("reason",), positional="reason")
        return SkipMps(reason=_reason(name, values.get("reason")))
    if name == "mps_requires":
        values = _kwargs(name, args, kwargs, ("macos", "torch", "memory_gb"))
        if not values:
            raise _fail(name, "needs at least one of macos=, torch=, memory_gb=")
        memory = values.get("memory_gb")
        if memory is not None and (
            isinstance(memory, bool) or not isinstance(memory, int | float) or memory <= 0
        ):
            raise _fail(name, f"memory_gb= must be a positive number of gigabytes, got {memory!r}")
        return MpsRequires(
            macos=_specifier(name, "macos", values.get("macos")),
            torch=_specifier(name, "torch", values.get("torch")),
            memory_gb=None if memory is None else float(memory),
        )
    if name == "xfail_mps":
        values = _kwargs(
            name, args, kwargs, ("reason", "macos", "torch", "raises", "strict"), positional="reason"
        )
        strict = values.get("strict", True)
        if not isinstance(strict, bool):
            raise _fail(name, f"strict= must be True or False, got {strict!r}")
        return XfailMps(
            reason=_reason(name, values.get("reason")),
            macos=_specifier(name, "macos", values.get("macos")),
            torch=_specifier(name, "torch", values.get("torch")),
            raises=_raises(name, values.get("raises")),
            strict=strict,
        )
    if name == "mps_tolerance":
        values = _kwargs(name, args, kwargs, TOLERANCE_KEYS)
        if not values:
            raise _fail(name, f"needs at least one of {', '.join(TOLERANCE_KEYS)}")
        for key, value in values.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not value >= 0
                or value == float("inf")
            ):
                raise _fail(name, f"{key}= must be a finite, non-negative number, got {value!r}")
        return MpsTolerance(values={k: float(v) for k, v in values.items()})
    raise MarkerError(f"@pytest.mark.{name} is not a pytest-mps marker")
