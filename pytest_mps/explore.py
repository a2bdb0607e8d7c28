"""Explore a pipeline's inputs on the target against the CPU, with Hypothesis.

:func:`explore` draws ``n`` whole calls from :func:`pytest_mps.strategies.call_inputs` (sizes that are
not multiples of 64, batches, several images per prompt, empty, long and non-ASCII prompts...), runs
each on the target and on the CPU (``assert_cpu_parity`` by default), and on a divergence lets
Hypothesis shrink it to the smallest input that still fails, which it reports as a readable dict. With
a ``database`` folder a failure is stored and replayed first next time. Deterministic under a fixed
``seed`` (which wins over a loaded profile), or, unseeded, under the ``pytest-mps-ci`` Hypothesis
profile (derandomized, no database), which CI loads with ``pytest --hypothesis-profile=pytest-mps-ci``
(or ``settings.load_profile(CI_PROFILE)``), or Hypothesis's own ``ci`` profile.

The result is computed, never raised (:class:`ExploreResult`); the bundled suite turns it into a check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["CI_PROFILE", "ExploreResult", "explore", "register_profiles"]

#: A Hypothesis profile for CI: the same examples on every run (derandomized), no deadline, no database.
CI_PROFILE = "pytest-mps-ci"


def register_profiles() -> None:
    """Register :data:`CI_PROFILE` with Hypothesis (idempotent; importing this module does it)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        CI_PROFILE,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass(frozen=True)
class ExploreResult:
    """What :func:`explore` found.

    Attributes:
        passed: no example diverged.
        examples: calls made (generation, shrinking and the final replay).
        invalid: inputs the pipeline refused on the CPU as well (not MPS findings; redrawn).
        failure: the smallest failing input (``CallInputs.describe()``: height, width, prompt, seed...),
            or None.
        message: the failure's message (first lines), or None.
        error_type: the exception type the comparison raised (``AssertionError``, or what MPS raised).
        target: the target the pipeline ran on.
        seconds: wall time.
        database: the example database folder, or None.
        seed: the seed, when one was fixed.
    """

    passed: bool
    examples: int
    invalid: int
    failure: dict[str, Any] | None
    message: str | None
    error_type: str | None
    target: str
    seconds: float
    database: str | None = None
    seed: int | None = None

    @property
    def summary(self) -> str:
        """One line: ``clean after 20 examples`` or ``fails at {height: 66, ...}: <message>``."""
        if self.passed:
            return f"clean after {self.examples} examples"
        shown = ", ".join(f"{k}={_clip(v)}" for k, v in (self.failure or {}).items())
        first = (self.message or "").splitlines()[0] if self.message else ""
        return f"smallest failing input: {shown}: {first}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)

    def report(self) -> str:
        """Readable lines: the verdict, the smallest failing input one key per line, the message."""
        lines = [f"explored {self.examples} inputs on {self.target} in {self.seconds:.1f}s"]
        if self.passed:
            lines.append("no input diverged from the CPU")
            return "\n".join(lines)
        lines.append("smallest failing input:")
        lines += [f"  {k}: {v!r}" for k, v in (self.failure or {}).items()]
        lines.append(f"{self.error_type}: {self.message}")
        return "\n".join(lines)


def _clip(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _database_key(pipe: Any) -> bytes:
    """Stable across runs, distinct per pipeline: its class and its components' classes and configs."""
    parts: dict[str, Any] = {"class": type(pipe).__name__}
    for name, component in sorted((getattr(pipe, "components", None) or {}).items()):
        config = getattr(component, "config", None)
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        parts[name] = [type(component).__name__, dict(config) if isinstance(config, dict) else None]
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class _RefusedEverywhere(Exception):
    """The pipeline fails this input on the CPU as well: not an MPS finding (Hypothesis draws again)."""


def _cpu_parity(pipe: Any, inputs: dict[str, Any]) -> Any:
    """The default comparison: :func:`pytest_mps.check_cpu_parity`, whose CPU cross-check tells a
    failure of the target from one the CPU shares."""
    from pytest_mps.checks import check_cpu_parity
    from pytest_mps.checks.common import assert_result
    from pytest_mps.verdict import Status

    result = check_cpu_parity(pipe, inputs)
    if result.status is Status.CPU_TOO:
        raise _RefusedEverywhere(result.summary)
    return assert_result(result)


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Diffusers logs a warning, with the whole tokenised prompt, for every prompt past 77 tokens:
    exploring long prompts on purpose, that is noise."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _fails_on_cpu(pipe: Any, inputs: dict[str, Any]) -> bool:
    """True when the same call raises on the CPU as well."""
    from pytest_mps.checks.common import raises_on_cpu
    from pytest_mps.context import current_context

    return raises_on_cpu(pipe, inputs, current_context(pipe)) is not None


def _first_lines(exc: BaseException, count: int = 6) -> str:
    text = str(exc).strip() or type(exc).__name__
    return "\n".join(text.splitlines()[:count])


def explore(
    pipe: Any,
    n: int = 20,
    *,
    compare: Callable[[Any, dict[str, Any]], Any] | None = None,
    target: Any = None,
    database: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    derandomize: bool | None = None,
    strategy: Any = None,
    **strategy_options: Any,
) -> ExploreResult:
    """Run ``n`` Hypothesis examples of ``pipe``'s inputs on its target against the CPU.

    Args:
        pipe: a pipeline already on the target (as the checks expect).
        n: examples to generate (shrinking a failure adds calls).
        compare: ``compare(pipe, inputs)`` raises on a divergence; default
            :func:`pytest_mps.assert_cpu_parity` (its tolerances, and the running test's).
        target: the :class:`~pytest_mps.Target` to name in the result (default: the current check
            context's).
        database: a folder for Hypothesis's example database (failures replay first next time); None:
            no database. Ignored when derandomized.
        seed: fix Hypothesis's seed: the same examples every run, after the database's stored failures.
            A seed wins over a loaded profile's ``derandomize`` (as Hypothesis's own ``@seed`` does):
            Hypothesis's built-in ``ci`` profile, loaded wherever ``CI`` is set, does not change it.
        derandomize: derandomize (the CI profile's way to be deterministic); None: seeded when
            ``seed`` is given, else the loaded Hypothesis profile decides.
        strategy: a strategy of call inputs; default :func:`pytest_mps.strategies.call_inputs` with
            ``strategy_options`` (``max_side``, ``max_batch``, ``max_images_per_prompt``, ``max_steps``...).

    Returns:
        An :class:`ExploreResult`; a divergence (or an exception from the target) is a failed result,
        never raised.
    """
    from hypothesis import HealthCheck, Verbosity, given, reject, settings
    from hypothesis import seed as fix_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    from pytest_mps.context import current_context, using_context
    from pytest_mps.references import ReferenceCache
    from pytest_mps.strategies import call_inputs

    if n < 1:
        raise ValueError(f"explore needs at least 1 example, got n={n}")
    strategy = strategy if strategy is not None else call_inputs(pipe, **strategy_options)
    compare = compare or _cpu_parity
    context = current_context(pipe)
    # One result per exploration, not one per example: nothing is recorded in the session table, and
    # the CPU references of explored inputs stay out of the session's (possibly stored) references.
    quiet = dataclasses.replace(context, record=None, references=ReferenceCache(max_entries=8))
    label = getattr(target, "label", None) or context.target.label
    parent = settings.default
    derand = _derandomized(seed, derandomize, parent.derandomize)
    db = DirectoryBasedExampleDatabase(os.fspath(database)) if database is not None and not derand else None
    calls: list[int] = []
    invalid: list[int] = []
    failures: list[tuple[Any, BaseException]] = []

    def check(inputs: Any) -> None:
        calls.append(1)
        try:
            compare(pipe, inputs)
        except _RefusedEverywhere:
            invalid.append(1)
            reject()
        except AssertionError as exc:
            failures.append((inputs, exc))
            raise
        except Exception as exc:
            if _fails_on_cpu(pipe, inputs):
                # The pipeline refuses this input on the CPU too (Diffusers' own validation, or its own
                # bug): not an MPS finding. Hypothesis draws another.
                invalid.append(1)
                reject()
            failures.append((inputs, exc))
            raise

    options = settings(
        parent,
        max_examples=n,
        deadline=None,
        database=db,
        derandomize=derand,
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )
    # The seed goes on the inner function: applied outside, @seed also turns the database off, and a
    # failure must replay first next time while everything else stays deterministic.
    inner = fix_seed(seed)(check) if seed is not None and not derand else check
    probe = options(given(strategy)(inner))
    probe.hypothesis.inner_test._hypothesis_internal_add_digest = _database_key(pipe)  # type: ignore[attr-defined]
    start = time.perf_counter()
    error: BaseException | None = None
    with using_context(quiet), _quiet_diffusers():
        try:
            probe()
        except Exception as exc:  # the final replay of the smallest failing example re-raises it
            error = exc
    seconds = time.perf_counter() - start
    if error is None:
        return ExploreResult(
            True, len(calls), len(invalid), None, None, None, label, seconds, _path(db, database), seed
        )
    if failures:
        smallest, raised = failures[-1]
        described = _describe(smallest)
    else:  # Hypothesis itself failed (e.g. a flaky example): report that, without an input
        described, raised = None, error
    return ExploreResult(
        False,
        len(calls),
        len(invalid),
        described,
        _first_lines(raised),
        type(raised).__name__,
        label,
        seconds,
        _path(db, database),
        seed,
    )


def _derandomized(seed: int | None, derandomize: bool | None, profile_derandomize: bool) -> bool:
    """Whether an exploration is derandomized: the ``derandomize`` argument when given, else not when a
    ``seed`` is given, else the loaded Hypothesis profile's setting (the one place this is decided)."""
    if derandomize is not None:
        return derandomize
    if seed is not None:
        return False
    return bool(profile_derandomize)


def _describe(inputs: Any) -> dict[str, Any]:
    if hasattr(inputs, "describe"):
        return dict(inputs.describe())
    if isinstance(inputs, dict):
        return dict(inputs)
    return {"inputs": inputs}


def _path(db: Any, database: Any) -> str | None:
    return os.fspath(database) if db is not None else None


register_profiles()
