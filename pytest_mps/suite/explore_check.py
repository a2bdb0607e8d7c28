"""The bundled suite's exploration check (``pytest-mps check --explore N``, off by default): N Hypothesis
examples of the pipeline's inputs on the target against the CPU (:func:`pytest_mps.explore.explore`); a
failure is shrunk to the smallest input and reported as that input, and the example database (in
pytest's cache folder) replays it first next time. Seeded, so a run is reproducible."""

from __future__ import annotations

from typing import Any

from pytest_mps.checks.common import new_result, run_check
from pytest_mps.context import CheckContext, current_context
from pytest_mps.input_spec import Inputs, InputSpec
from pytest_mps.protocols import Pipeline
from pytest_mps.results import CheckResult

__all__ = ["check_explore"]


def _explore(
    pipe: Any, ctx: CheckContext, *, inputs: Inputs, examples: int, database: str | None, seed: int
) -> CheckResult:
    from pytest_mps.explore import explore

    result = new_result(ctx, "explore", pipe)
    steps = inputs.steps if isinstance(inputs, InputSpec) else 2
    found = explore(pipe, examples, target=ctx.target, database=database, seed=seed, max_steps=steps)
    result.details["explore"] = found.to_dict()
    result.timings["explore"] = found.seconds
    result.figure = float(found.examples)
    result.figure_text = f"{found.examples} examples"
    result.summary = found.summary
    if not found.passed:
        result.failures.append(found.summary)
        if found.message:
            result.details["lines"] = [line for line in found.message.splitlines()[:12]]
    return result


def check_explore(
    pipe: Pipeline, inputs: Inputs = None, *, examples: int = 20, database: str | None = None, seed: int = 0
) -> CheckResult:
    """Explore ``examples`` inputs of ``pipe`` (sizes, batches, prompts...) on the target against the
    CPU; the smallest failing input is the result's failure."""
    ctx = current_context(pipe)
    return run_check(
        "explore", _explore, pipe, ctx, inputs=inputs, examples=examples, database=database, seed=seed
    )
