"""The check registry: every check pytest-mps knows, declared once.

Each :class:`CheckSpec` carries the check's one id (used by the public ``check_*``/``assert_*``
functions, the :class:`~pytest_mps.results.CheckResult`, the bundled suite's test, the tolerance
defaults, the verdict table's column and every report), what it proves, what its key figure means,
whether the MPS badge requires it, its default tolerances and the failure classes it guards against.
Everything else asks this module; adding a check is one entry here plus its function.

Importing this module is cheap (no torch, no numpy): the plugin reads it at pytest start-up.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "CHECKS",
    "TOLERANCE_FIELDS",
    "CheckSpec",
    "UnknownCheckError",
    "canonical",
    "check_ids",
    "check_list",
    "get",
    "required_checks",
    "resolve_function",
    "specs",
]

#: The figures a tolerance can judge (the fields of :class:`pytest_mps.tolerances.Tolerance`).
TOLERANCE_FIELDS: tuple[str, ...] = (
    "atol",
    "rtol",
    "max_cosine_distance",
    "min_psnr",
    "max_rms",
    "max_pixel_fraction",
)


@dataclass(frozen=True)
class CheckSpec:
    """One check, declared once.

    Attributes:
        id: the check's one name, everywhere (``cpu_parity``, ``batch``...).
        proves: what a pass proves, in one line (the suite test's docstring and ``--help``).
        figure: what the key figure in its table cell and report row means.
        required: the MPS badge needs this check to pass on real MPS.
        function: ``"module:attribute"`` of its compute function (returns a ``CheckResult``, never
            raises for a failed comparison); ``None`` for the suite's own checks without a public API.
        api: the public function stem: ``check_<api>`` computes, ``assert_<api>`` raises.
        tolerance: default tolerances (judged figures) on real MPS.
        standin_tolerance: overrides on stand-in targets (a figure set to ``None`` is reported, not
            judged there).
        cross_check: when it fails on the target, run it again on the CPU: a failure there too is
            "fails on the CPU too: not an MPS problem". A check without it whose failure is an
            exception the pipeline's call raised has that call run once on the CPU instead
            (:func:`pytest_mps.checks.common.cross_check_call`).
        localizes: when it fails on the target only, say where the divergence starts
            (:func:`pytest_mps.localize`: the first step and the module that introduces the error).
        only_on: the targets it runs on (``None``: every target).
        aliases: older names still accepted on input (``--mps-checks``, old reports).
        guards: the failure classes it catches (issue numbers), for documentation.
    """

    id: str
    proves: str
    figure: str
    required: bool
    function: str | None = None
    api: str | None = None
    tolerance: Mapping[str, float | None] = field(default_factory=dict)
    standin_tolerance: Mapping[str, float | None] = field(default_factory=dict)
    cross_check: bool = True
    localizes: bool = False
    only_on: frozenset[str] | None = None
    aliases: tuple[str, ...] = ()
    guards: str = ""

    def defaults(self, *, real_mps: bool) -> dict[str, float | None]:
        """The default tolerances for a run on real MPS or on a stand-in."""
        values = dict(self.tolerance)
        if not real_mps:
            values.update(self.standin_tolerance)
        return values

    def runs_on(self, target_name: str) -> bool:
        """Whether the check runs on target ``target_name`` at all."""
        return self.only_on is None or target_name in self.only_on


_PARITY = {"atol": 3e-2, "rtol": 0.0, "max_cosine_distance": 1e-3}

_SPECS: tuple[CheckSpec, ...] = (
    CheckSpec(
        id="load",
        proves="the folder loads from safetensors and moves to the target",
        figure="seconds",
        required=True,
        # The suite's loading step (pytest_mps.suite.runner.load_for_suite), not a function of a pipeline.
    ),
    CheckSpec(
        id="inference",
        proves="a call on the target gives finite, non-constant output",
        figure="output std",
        required=True,
        function="pytest_mps.suite.suite_checks:check_inference",
    ),
    CheckSpec(
        id="cpu_parity",
        proves="the target's output equals the CPU's for the same inputs",
        figure="max |diff|",
        required=True,
        function="pytest_mps.checks.parity:check_cpu_parity",
        localizes=True,
        api="cpu_parity",
        # Diffusers' MPS tolerance for DDPM (3x its CPU/CUDA 1e-2); the largest honest stand-in divergence
        # measured (a full-size SD-1.5 shape at 512x512, H100 with TF32) was 1.0e-3.
        tolerance=_PARITY,
        guards="silent kernel bugs: diffusers #1398, pytorch #133520",
    ),
    CheckSpec(
        id="batch",
        proves="each item of a batch equals the single call with its seed",
        figure="worst item max |diff|",
        required=True,
        function="pytest_mps.checks.batch:check_batch_consistency",
        api="batch_consistency",
        # Diffusers' batch-vs-single tolerance for Stable Diffusion.
        tolerance={"atol": 3e-3, "rtol": 0.0, "max_cosine_distance": 1e-4},
        aliases=("batch_consistency",),
        guards="batched prompts give noise or crash: diffusers #363, #1519, #941",
    ),
    CheckSpec(
        id="attention_slicing",
        proves="attention slicing on equals slicing off",
        figure="max |diff|",
        required=True,
        function="pytest_mps.checks.slicing:check_attention_slicing_parity",
        localizes=True,
        api="attention_slicing_parity",
        # Diffusers uses 1e-3 on tiny models; a full-size SD-1.5 shape at 512x512 on an H100 with TF32
        # differed by 1.13e-3 between sliced and unsliced attention.
        tolerance={"atol": 3e-3, "rtol": 0.0, "max_cosine_distance": 1e-4},
        guards="slicing NaN/black images: diffusers #11229, #14438",
    ),
    CheckSpec(
        id="determinism",
        proves="repeated calls with one seed agree",
        figure="max |diff|",
        required=True,
        function="pytest_mps.checks.determinism:check_deterministic",
        api="deterministic",
        tolerance={"atol": 1e-5, "rtol": 0.0, "max_cosine_distance": 1e-6},
        aliases=("deterministic",),
        guards="first-pass drift without warm-up: diffusers #372, #1630, #3037",
    ),
    CheckSpec(
        id="float16",
        proves="float16 on the target stays close to float32 on the CPU",
        figure="cosine distance to float32 CPU",
        required=True,
        function="pytest_mps.checks.parity:check_float16_parity",
        localizes=True,
        api="float16_parity",
        # Diffusers' float16-vs-float32 cosine limit; on real MPS also an absolute limit, since cosine
        # alone missed a float16 denoiser 3x too strong (max |diff| 0.38 at cosine 7.7e-3). On a
        # stand-in the float16 arithmetic is not Metal's, so only the cosine limit and finiteness judge.
        tolerance={"atol": 0.1, "rtol": 0.0, "max_cosine_distance": 5e-2},
        standin_tolerance={"atol": None},
        aliases=("float16_parity",),
        guards="float16 NaN, noise and black images: diffusers #2521, #4480, #7426",
    ),
    CheckSpec(
        id="schedulers",
        proves="every compatible scheduler runs and matches the CPU",
        figure="passing/tried schedulers",
        required=True,
        function="pytest_mps.checks.schedulers:check_schedulers_compatible",
        api="schedulers_compatible",
        tolerance=_PARITY,
        # Each scheduler that fails is re-run on the CPU inside the sweep.
        cross_check=False,
        guards="float64 timesteps: diffusers #1169, #2241, #6365, #10549",
    ),
    CheckSpec(
        id="audit",
        proves="the emulated-MPS hazard audit finds nothing that aborts or raises (emulated target only)",
        figure="hazards",
        required=False,
        function="pytest_mps.suite.suite_checks:check_audit",
        cross_check=False,
        only_on=frozenset({"emulated"}),
        guards="float64, complex, missing kernels, buffers over 2**32 bytes",
    ),
    CheckSpec(
        id="explore",
        proves="N explored inputs (sizes, batches, prompts) match the CPU on the target (--explore N)",
        figure="examples tried",
        required=False,
        function="pytest_mps.suite.explore_check:check_explore",
        # Each explored input is compared with the CPU; a failing input is reported as the smallest one.
        cross_check=False,
        guards="failures that depend on the input: batching (#363), sizes off multiples of 64",
    ),
    CheckSpec(
        id="speed",
        proves="the target is faster than the CPU on the same inputs (judged on real MPS only)",
        figure="CPU time / target time",
        required=True,
        function="pytest_mps.suite.suite_checks:check_speed",
        cross_check=False,
    ),
)

#: Every check by id, in the order they run and appear in tables.
CHECKS: Mapping[str, CheckSpec] = MappingProxyType({spec.id: spec for spec in _SPECS})
_ALIASES: Mapping[str, str] = MappingProxyType(
    {alias: spec.id for spec in _SPECS for alias in (spec.id, *spec.aliases)}
)


class UnknownCheckError(ValueError):
    """A name that is no check; the message is one line with the choices and close matches."""


def get(name: str) -> CheckSpec:
    """The check called ``name`` (an id or an alias); raises :class:`UnknownCheckError`."""
    key = _ALIASES.get(str(name).strip())
    if key is None:
        close = difflib.get_close_matches(str(name), list(_ALIASES), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise UnknownCheckError(f"unknown check {name!r}{hint}; choose from {', '.join(CHECKS)}")
    return CHECKS[key]


def canonical(name: str) -> str:
    """The id of ``name`` when it is a check or an alias, else ``name`` unchanged (for old reports)."""
    return _ALIASES.get(str(name), str(name))


def check_ids() -> tuple[str, ...]:
    """Every check id, in table order."""
    return tuple(CHECKS)


def required_checks() -> tuple[str, ...]:
    """The checks the MPS badge needs."""
    return tuple(spec.id for spec in _SPECS if spec.required)


def check_list(text: str) -> tuple[str, ...]:
    """``"cpu_parity, batch"`` -> ids in table order; an argparse ``type=`` (``--mps-checks``,
    ``pytest-mps check --checks``): unknown names raise ``argparse.ArgumentTypeError``."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no check named; choose from {', '.join(CHECKS)}")
    try:
        chosen = {get(name).id for name in names}
    except UnknownCheckError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return tuple(name for name in CHECKS if name in chosen)


def resolve_function(spec: CheckSpec) -> Callable[..., Any]:
    """The compute function of ``spec`` (imported on demand: it imports torch)."""
    if spec.function is None:
        raise LookupError(f"check {spec.id!r} has no compute function")
    module, _, attribute = spec.function.partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


def specs(ids: Iterable[str] | None = None) -> tuple[CheckSpec, ...]:
    """The specs of ``ids`` (default: all), in table order."""
    wanted = None if ids is None else {canonical(i) for i in ids}
    return tuple(spec for spec in _SPECS if wanted is None or spec.id in wanted)
