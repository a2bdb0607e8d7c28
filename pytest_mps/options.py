"""Every option of pytest-mps, declared once: its ``--mps-*`` flag, its ini key, its environment variable
(the target only), the ``pytest-mps check`` flag that maps onto it, its validator and its default.

The validators are argparse ``type=`` callables: pytest's parser runs them on the command line,
:func:`resolve` runs the same ones on ini values, and ``pytest-mps check`` builds its own parser from the
same :data:`OPTIONS`; so each rule exists here alone. :func:`resolve` applies the one precedence:
command line > environment > ini > default.

Importing this module is cheap (no pytest, no torch).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "OPTIONS",
    "Option",
    "OptionError",
    "Settings",
    "check_ids",
    "finite_seconds",
    "resolve",
    "scheduler_names",
    "side_pixels",
    "steps_count",
    "target_name",
    "tolerance_value",
    "worker_slots",
]

#: The environment variable that picks the target (between the command line and ini).
DEVICE_VARIABLE = "PYTEST_MPS_DEVICE"
TARGET_CHOICES: tuple[str, ...] = ("auto", "mps", "emulated", "cuda", "xpu", "cpu")


class OptionError(ValueError):
    """An option value that fails its rule; the message is one line with the cause and a fix."""


# --- validators (argparse type= callables) ---------------------------------------------------------


def _number(text: str, kind: Callable[[str], float | int], what: str) -> Any:
    try:
        value = kind(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} (it must be finite)")
    return value


def target_name(text: str) -> str:
    """A target device name (``auto``, ``mps``, ``emulated``, ``cuda``, ``xpu``, ``cpu``)."""
    value = str(text).strip().lower()
    if value not in TARGET_CHOICES:
        raise argparse.ArgumentTypeError(
            f"unknown target device {text!r}; choose one of {', '.join(TARGET_CHOICES)}"
        )
    return value


def finite_seconds(text: str) -> float:
    """Seconds: a finite number, 0 or more (0: no limit)."""
    value = float(_number(text, float, "a number of seconds"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, or 0 for no limit")
    return value


def tolerance_value(text: str) -> float:
    """A tolerance: a finite number, 0 or more (a NaN limit would silently pass every check)."""
    value = float(_number(text, float, "a number"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a tolerance must be 0 or more")
    return value


def steps_count(text: str) -> int:
    """Inference steps: a whole number, at least 1."""
    value = int(_number(text, int, "a whole number of steps"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: needs at least 1 step")
    return value


def side_pixels(text: str) -> int:
    """An output side in pixels: a whole number, at least 8."""
    value = int(_number(text, int, "a whole number of pixels"))
    if value < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: give a side of at least 8 pixels")
    return value


def worker_slots(text: str) -> int:
    """pytest-xdist workers on the device at once: a whole number, 0 (no limit) or more."""
    value = int(_number(text, int, "a whole number"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 (no limit) or more")
    return value


def explore_examples(text: str) -> int:
    """Examples to explore: a whole number, 0 (off) or more."""
    value = int(_number(text, int, "a whole number of examples"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (off) or more examples")
    return value


def check_ids(text: str) -> tuple[str, ...]:
    """Comma-separated check ids of :mod:`pytest_mps.registry`."""
    from pytest_mps.registry import check_list

    return check_list(text)


def scheduler_names(text: str) -> str:
    """``compatible``, or comma-separated Diffusers scheduler class names (checked against the
    installed Diffusers, which is imported only when names are given)."""
    value = str(text).strip()
    if value == "compatible":
        return value
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no scheduler named; give 'compatible' or class names")
    import difflib

    import diffusers

    known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
    for name in names:
        cls = getattr(diffusers, name, None) if name in known else None
        if cls is None or not hasattr(cls, "from_config"):
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise argparse.ArgumentTypeError(
                f"unknown scheduler {name!r}; {hint}pass Diffusers scheduler class names (e.g. "
                "DDIMScheduler,EulerDiscreteScheduler) or 'compatible'"
            )
    return ",".join(names)


# --- the table -------------------------------------------------------------------------------------


class _Frozen:
    """A record whose fields are set once, in ``__init__`` (cheaper to define than a named tuple or a
    dataclass, both of which compile code: the option table and the settings are made at every pytest
    start-up)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen (use _replace)")

    def _asdict(self) -> dict[str, Any]:
        """The fields and their values, in order."""
        return {name: getattr(self, name) for name in self.__slots__}

    def _replace(self, **changes: Any) -> Any:
        """A copy with ``changes``."""
        return type(self)(**{**self._asdict(), **changes})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._asdict() == other._asdict()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(tuple(self._asdict().values()))  # (a TypeError where a field cannot be hashed)

    def __reduce__(self) -> tuple[Any, ...]:
        """Copies and pickles are made through ``__init__`` (fields cannot be set afterwards)."""
        fields = {k: dict(v) if isinstance(v, MappingProxyType) else v for k, v in self._asdict().items()}
        return (_rebuild, (type(self), fields))


def _rebuild(cls: type[_Frozen], fields: dict[str, Any]) -> _Frozen:
    return cls(**fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items())
        return f"{type(self).__name__}({fields})"


class Option(_Frozen):
    """One option.

    Attributes:
        name: the setting's name (``Settings.<name>``); the flag is ``--mps-<name with dashes>`` and
            the ini key ``mps_<name>``.
        help: one line for ``--help``.
        type: the validator (argparse ``type=``), also applied to ini values.
        default: the value when nothing sets it.
        kind: ``value``, ``flag`` (on/off: ``--mps-x`` / ``--no-mps-x``), ``path`` (relative to where
            it was given) or ``paths`` (several).
        ini: whether an ini key mirrors it.
        env: the environment variable that sets it (between command line and ini).
        cli: the ``pytest-mps check`` flag that maps onto it.
        metavar: the placeholder in ``--help``.
        negatable: a flag that also has its ``--no-`` form (to turn off what a default or ini turned on).
    """

    __slots__ = ("cli", "default", "env", "help", "ini", "kind", "metavar", "name", "negatable", "type")

    name: str
    help: str
    type: Callable[[str], Any] | None
    default: Any
    kind: str
    ini: bool
    env: str | None
    cli: str | None
    metavar: str | None
    negatable: bool

    def __init__(
        self,
        name: str,
        help: str,
        type: Callable[[str], Any] | None = None,
        default: Any = None,
        kind: str = "value",
        ini: bool = True,
        env: str | None = None,
        cli: str | None = None,
        metavar: str | None = None,
        negatable: bool = False,
    ) -> None:
        values = {"name": name, "help": help, "type": type, "default": default, "kind": kind, "ini": ini}
        values.update(env=env, cli=cli, metavar=metavar, negatable=negatable)
        for field, value in values.items():
            object.__setattr__(self, field, value)

    @property
    def flag(self) -> str:
        """The pytest flag, ``--mps-...``."""
        return "--mps-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute on pytest's option namespace."""
        return "mps_" + self.name

    @property
    def ini_key(self) -> str:
        """The ini key, ``mps_...``."""
        return "mps_" + self.name

    def convert(self, raw: Any, *, where: str) -> Any:
        """A value from ini or the environment through the option's rule; :class:`OptionError` (one
        line) when it breaks it."""
        if raw is None:
            return None
        if self.kind == "flag":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise OptionError(f"{where}: {raw!r} is not true or false")
        if self.kind == "paths":
            return tuple(str(p) for p in raw) if isinstance(raw, list | tuple) else tuple(str(raw).split())
        if self.type is None:
            return str(raw)
        try:
            return self.type(str(raw))
        except argparse.ArgumentTypeError as exc:
            raise OptionError(f"{where}: {exc}") from None


OPTIONS: tuple[Option, ...] = (
    Option(
        "device",
        "target device: auto (default: mps where available, else none), mps, emulated, cuda, xpu or cpu. "
        f"Anything but mps is a stand-in. Also ini mps_device and ${DEVICE_VARIABLE}.",
        type=target_name,
        default="auto",
        env=DEVICE_VARIABLE,
        cli="--device",
        metavar="TARGET",
    ),
    Option("atol", "default absolute tolerance of the parity checks", type=tolerance_value, metavar="X"),
    Option("rtol", "default relative tolerance of the parity checks", type=tolerance_value, metavar="X"),
    Option(
        "max_cosine_distance",
        "default cosine-distance limit of the parity checks",
        type=tolerance_value,
        metavar="X",
    ),
    Option(
        "references",
        "store CPU references in DIR (commit it, so CI on a Mac never computes them); default: pytest's "
        "cache folder. Also ini mps_references.",
        kind="path",
        metavar="DIR",
    ),
    Option(
        "update_references",
        "recompute and rewrite every stored CPU reference a test uses (the checks still report).",
        kind="flag",
        default=False,
        ini=False,
    ),
    Option(
        "report_json",
        "write every check with its metrics, tolerances, timings and the environment as JSON (schema: "
        "pytest_mps/reports/schema.json)",
        kind="path",
        metavar="PATH",
    ),
    Option(
        "report_md",
        "write a Markdown summary for a pull request or $GITHUB_STEP_SUMMARY (appended to when PATH is "
        "that file)",
        kind="path",
        metavar="PATH",
    ),
    Option(
        "report_html",
        "write an offline HTML page with the CPU, target and difference images of each parity check: "
        "FILE.html, one self-contained file (images inline); or a folder, DIR/index.html with DIR/images/",
        kind="path",
        metavar="PATH",
    ),
    Option(
        "xdist_workers",
        "how many pytest-xdist workers may use the real MPS device at once (default 1; 0: no limit)",
        type=worker_slots,
        default=1,
        metavar="N",
    ),
    Option(
        "pipelines",
        "pipeline folders for the bundled suite (pytest --pyargs pytest_mps.suite)",
        kind="paths",
        default=(),
        metavar="PATH",
    ),
    Option(
        "isolate",
        "run each test that uses the device (mps_pipeline, mps_device, mps_device_lock or the mps marker) "
        "in a worker process, and the bundled suite's checks in one (a fresh one after a crash), so a crash "
        "or hang fails that test, not the session (default in pytest-mps check)",
        kind="flag",
        default=False,
        cli="--isolate",
        negatable=True,
    ),
    Option(
        "localize",
        "after a parity, float16 or slicing check fails on the target only, say where the divergence "
        "starts: the first step and the module that introduces the error (default on)",
        kind="flag",
        default=True,
        cli="--localize",
        negatable=True,
    ),
    Option(
        "timeout",
        "with --mps-isolate: a device test (setup to teardown) or a suite check running longer is killed "
        "as hung (seconds; 0: no limit; default 600)",
        type=finite_seconds,
        default=600.0,
        cli="--timeout",
        metavar="SECONDS",
    ),
    Option(
        "steps",
        "inference steps of the suite's calls (default 2)",
        type=steps_count,
        default=2,
        cli="--steps",
        metavar="N",
    ),
    Option(
        "size",
        "output side of the suite's calls (default: the smallest valid; the speed check: the pipeline's own)",
        type=side_pixels,
        cli="--size",
        metavar="PX",
    ),
    Option(
        "schedulers",
        "schedulers the suite sweeps: 'compatible' (default) or comma-separated class names",
        type=scheduler_names,
        default="compatible",
        cli="--schedulers",
        metavar="LIST",
    ),
    Option(
        "checks",
        "comma-separated suite checks to run (default: all)",
        type=check_ids,
        cli="--checks",
        metavar="LIST",
    ),
    Option(
        "explore",
        "the bundled suite's exploration check: N Hypothesis examples of each pipeline's inputs (sizes, "
        "batches, prompts) on the target against the CPU, a failure shrunk to its smallest input "
        "(default 0: off)",
        type=explore_examples,
        default=0,
        cli="--explore",
        metavar="N",
    ),
    Option(
        "receipt",
        "after the run, write a signed receipt of its verdict and figures to FILE (and FILE.sig): MPS "
        "evidence from a contributor's Mac that pytest-mps verify-receipt checks in CI",
        kind="path",
        ini=False,
        cli="--receipt",
        metavar="FILE",
    ),
    Option(
        "receipt_key",
        "the SSH key that signs the receipt (default: git's user.signingkey, else ~/.ssh/id_ed25519...)",
        kind="path",
        ini=False,
        cli="--receipt-key",
        metavar="KEY",
    ),
    Option(
        "allow_pickle",
        "let the suite load pickled .bin weights (unpickling can run code: only for folders you trust)",
        kind="flag",
        default=False,
        ini=False,
        cli="--allow-pickle",
    ),
)

_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


def option(name: str) -> Option:
    """The option called ``name``."""
    return _BY_NAME[name]


class Settings(_Frozen):
    """pytest-mps's configuration for one run, resolved once (command line > environment > ini >
    default) and frozen; a field left out takes its option's default. Paths are absolute. ``sources``
    says where each value came from (``command line``, ``environment``, ``ini``, ``default``)."""

    __slots__ = (*(opt.name for opt in OPTIONS), "sources")

    device: str
    atol: float | None
    rtol: float | None
    max_cosine_distance: float | None
    references: Path | None
    update_references: bool
    report_json: Path | None
    report_md: Path | None
    report_html: Path | None
    xdist_workers: int
    pipelines: tuple[str, ...]
    isolate: bool
    localize: bool
    timeout: float
    steps: int
    size: int | None
    schedulers: str
    checks: tuple[str, ...] | None
    explore: int
    receipt: Path | None
    receipt_key: Path | None
    allow_pickle: bool
    sources: Mapping[str, str]

    def __init__(self, *, sources: Mapping[str, str] | None = None, **values: Any) -> None:
        unknown = values.keys() - _BY_NAME.keys()
        if unknown:
            raise TypeError(f"Settings has no field {', '.join(sorted(unknown))}")
        for opt in OPTIONS:
            object.__setattr__(self, opt.name, values.get(opt.name, opt.default))
        object.__setattr__(self, "sources", MappingProxyType(dict(sources or {})))

    @property
    def ini_tolerance(self) -> dict[str, float]:
        """The tolerance layer set in ini (``mps_atol``...)."""
        return {
            name: getattr(self, name)
            for name in ("atol", "rtol", "max_cosine_distance")
            if getattr(self, name) is not None
        }

    @property
    def writes_report(self) -> bool:
        """Whether the run writes a report or a receipt (at its end, from every result)."""
        return any(p is not None for p in (self.report_json, self.report_md, self.report_html, self.receipt))

    @property
    def timeout_or_none(self) -> float | None:
        """The time limit, ``None`` for none (0)."""
        return self.timeout or None


def resolve(
    given: Mapping[str, Any],
    ini: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    invocation_dir: Path,
    ini_dir: Path,
) -> Settings:
    """The :class:`Settings` from the layers, highest first: ``given`` (the command line, already
    validated by the parser; ``None`` where unset), ``environ``, ``ini`` (raw values, validated here).
    Paths given on the command line are relative to ``invocation_dir``, ini paths to ``ini_dir``.
    Raises :class:`OptionError` (one line) for a bad ini or environment value."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        value, source, base = given.get(opt.name), "command line", invocation_dir
        if value in (None, (), []) and opt.env and environ.get(opt.env):
            value = opt.convert(environ[opt.env], where=f"${opt.env}")
            source, base = "environment", invocation_dir
        if value in (None, (), []) and opt.ini:
            raw = ini.get(opt.ini_key)
            if raw not in (None, "", [], ()):
                value = opt.convert(raw, where=f"ini {opt.ini_key}")
                source, base = "ini", ini_dir
        if value in (None, (), []):
            value, source = opt.default, "default"
        if opt.kind == "path" and value is not None:
            value = Path(base, str(value))
        if opt.kind == "paths":
            value = tuple(str(Path(base, str(p))) for p in value or ())
        values[opt.name] = value
        sources[opt.name] = source
    return Settings(**values, sources=sources)
