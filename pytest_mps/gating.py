"""Decide, from a test's parsed markers, the target and the environment, whether it runs, skips or
is expected to fail. Pure functions: the plugin applies the decision, tests call them directly."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from pytest_mps.environment import MPSEnvironment
from pytest_mps.markers import MpsMarker, MpsRequires, Parsed, SkipMps, XfailMps
from pytest_mps.target import Target

__all__ = ["Decision", "decide"]


@dataclass(frozen=True)
class Decision:
    """What to do with one test: skip with a reason, expect failure, or run plainly."""

    skip_reason: str | None = None
    xfail: XfailMps | None = None


def _matches(spec: SpecifierSet | None, version: str | None) -> bool | None:
    """True/False when ``version`` is inside/outside ``spec``; None when the version is unknown."""
    if spec is None:
        return True
    if not version:
        return None
    try:
        public = Version(version).public
    except InvalidVersion:
        return None
    return spec.contains(public, prereleases=True)


def _unmet_requirement(req: MpsRequires, target: Target, env: MPSEnvironment) -> str | None:
    if req.macos is not None and target.is_real_mps:
        ok = _matches(req.macos, env.macos_version)
        if not ok:
            return f"requires macOS{req.macos} (this is macOS {env.macos_version or 'unknown'})"
    if req.torch is not None:
        ok = _matches(req.torch, env.torch_version)
        if not ok:
            return f"requires torch{req.torch} (installed: {env.torch_version or 'none'})"
    if req.memory_gb is not None and (env.memory_gb is None or env.memory_gb < req.memory_gb):
        have = "unknown" if env.memory_gb is None else f"{env.memory_gb:.0f} GB"
        return f"requires {req.memory_gb:g} GB of memory (this machine: {have})"
    return None


def _xfail_applies(mark: XfailMps, target: Target, env: MPSEnvironment) -> bool:
    if not target.is_mps_like:
        return False
    # macOS ranges describe Metal's behaviour: only a real Mac can be inside them.
    if mark.macos is not None and (not target.is_real_mps or not _matches(mark.macos, env.macos_version)):
        return False
    return bool(_matches(mark.torch, env.torch_version))


def decide(markers: Iterable[Parsed], target: Target, env: MPSEnvironment) -> Decision:
    """Combine a test's pytest-mps markers (closest first) into one :class:`Decision`.

    Skips win over expected failures; the first unmet requirement is the reason given.
    """
    parsed = list(markers)
    needs_target = any(isinstance(m, MpsMarker | MpsRequires) for m in parsed)
    if needs_target and not target.available:
        return Decision(skip_reason=f"needs an MPS target: {target.reason}")
    for mark in parsed:
        if isinstance(mark, SkipMps) and target.is_mps_like:
            why = mark.reason or "marked skip_mps"
            return Decision(skip_reason=f"skipped on {target.label}: {why}")
        if isinstance(mark, MpsRequires):
            unmet = _unmet_requirement(mark, target, env)
            if unmet:
                return Decision(skip_reason=f"{unmet} [mps_requires]")
    for mark in parsed:
        if isinstance(mark, XfailMps) and _xfail_applies(mark, target, env):
            return Decision(xfail=mark)
    return Decision()
