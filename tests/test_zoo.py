"""The pipeline zoo (``tests/zoo``): one tiny pipeline per Diffusers family.

Default run: every entry builds, gets a complete default call, and runs on the CPU and on the emulated
MPS target with a readable, finite output of the same shape on both; an entry whose verdict is a
load or inference failure fails there, with its cause, where it must (the emulated target only for an
MPS hazard; the CPU too for a pipeline Diffusers breaks everywhere). About 30 s on an idle 2-core
machine.

With ``--run-slow``: the full verdict of ``pytest-mps check --device emulated`` on each saved entry,
against the failing checks the entry records (``python benchmarks/zoo.py`` prints the same table).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zoo
from zoo import CPU_TOO, MPS_HAZARD, PASSES, ZooEntry
from zoo.checking import check_statuses, failed_checks, run_check

from pytest_mps.emulated_target import cpu_arithmetic
from pytest_mps.emulation import EmulatedMPS
from pytest_mps.input_sizes import MIN_SIDE, spatial_multiple
from pytest_mps.inputs import default_inputs
from pytest_mps.running import Run, run_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

ENTRIES = [
    pytest.param(entry, id=entry.name, marks=[pytest.mark.slow] if entry.slow else [])
    for entry in zoo.ZOO.values()
]
# A failure in these checks happens in the default run's load-and-infer step too.
_EARLY = ("load", "inference")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine OpenMP's spinning
    threads make them several times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _attempt(step: Callable[[], Run]) -> Run | BaseException:
    try:
        return step()
    except Exception as exc:
        return exc


def _emulated(pipe: Any, inputs: dict[str, Any]) -> Run:
    pipe.to("mps")
    try:
        return run_pipeline(pipe, inputs)
    finally:
        pipe.to("cpu")


def assert_complete_call(pipe: Any, inputs: dict[str, Any]) -> None:
    """``inputs`` give every argument the call requires, name only arguments it takes, use the
    smallest valid size and leave resolution binning off."""
    params = inspect.signature(pipe.__call__).parameters
    required = {
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    assert required <= set(inputs) <= set(params)
    if "height" in inputs:
        side = inputs["height"]
        assert side == inputs["width"] and side % spatial_multiple(pipe) == 0
        assert side <= MIN_SIDE or side == spatial_multiple(pipe)
    if "use_resolution_binning" in params:
        assert inputs["use_resolution_binning"] is False


def _fails_early(entry: ZooEntry) -> bool:
    return any(check in _EARLY for check in entry.failing)


def test_the_zoo_covers_the_families() -> None:
    assert len(zoo.ZOO) >= 25
    assert len({entry.pipeline for entry in zoo.ZOO.values()}) == len(zoo.ZOO)
    kinds = {entry.kind.split(" from ")[0] for entry in zoo.ZOO.values()}
    assert kinds >= {"image", "video", "audio", "embeddings"}
    for entry in zoo.ZOO.values():
        assert (entry.verdict == PASSES) == (not entry.failing), entry.name
        assert entry.verdict in (PASSES, MPS_HAZARD, CPU_TOO), entry.name
        assert not entry.failing or entry.cause, f"{entry.name}: a failing entry says why"


def test_an_entry_judges_a_run_against_its_expectations() -> None:
    healthy = zoo.ZOO["stable-cascade-prior"]
    assert healthy.judge({}) == []
    assert healthy.judge({"float16": ["max |diff| 0.49 exceeds atol 0.1"]}) == [
        "unexpected failures {'float16': 'max |diff| 0.49 exceeds atol 0.1'}"
    ]
    latte = zoo.ZOO["latte"]
    assert latte.judge({"batch": ["batch item 0 vs single call 0"]}) == []
    assert latte.judge({"batch": ["x"], "load": ["y"]}) == ["unexpected failures {'load': 'y'}"]
    # With the statuses, a failure on the CPU too must say so: blamed on MPS, it is not as expected.
    failed = {"batch": ["batch item 0 vs single call 0"]}
    assert latte.judge(failed, {"batch": "cpu_too", "load": "passed"}) == []
    assert latte.judge(failed, {"batch": "failed"}) == ["expected status 'cpu_too', got {'batch': 'failed'}"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_zoo_pipeline_runs_on_the_cpu_and_emulated_mps(entry: ZooEntry) -> None:
    # Built with the emulation on, as on a Mac: some models choose dtypes at construction from
    # torch.backends.mps.is_available() (Lumina 2's RoPE table is float64 without MPS).
    with EmulatedMPS():
        pipe = entry.build()
        inputs = default_inputs(pipe)
        assert_complete_call(pipe, inputs)
        with cpu_arithmetic():
            cpu = _attempt(lambda: run_pipeline(pipe, inputs))
        target = _attempt(lambda: _emulated(pipe, inputs))
    if entry.verdict == CPU_TOO and _fails_early(entry):
        for outcome in (cpu, target):
            assert isinstance(outcome, Exception) and entry.cause in str(outcome), outcome
        return
    assert isinstance(cpu, Run), f"{entry.name} failed on the CPU: {cpu!r}"
    assert np.isfinite(cpu.array).all() and cpu.array.size and cpu.array.std() > 0
    if entry.verdict == MPS_HAZARD and _fails_early(entry):
        assert isinstance(target, Exception) and entry.cause in str(target), target
        return
    assert isinstance(target, Run), f"{entry.name} failed on emulated MPS: {target!r}"
    assert target.array.shape == cpu.array.shape and np.isfinite(target.array).all()


# --- the full verdicts (slow) ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
def test_zoo_verdict(entry: ZooEntry, tmp_path: Path) -> None:
    missing = zoo.missing_modules(entry)
    if missing:
        pytest.skip(f"{entry.name} needs {', '.join(missing)} to load from a folder")
    folder = zoo.save(entry.name, tmp_path / entry.name)
    report = run_check(folder, tmp_path / "report.json")
    # A failure that happens on the CPU too is labelled so and never counted against MPS; an MPS hazard
    # is a failure of the target.
    assert entry.judge(failed_checks(report, entry.name), check_statuses(report, entry.name)) == []
    (row,) = [r for r in report["pipelines"] if r["pipeline"] == entry.name]
    assert row["kind"] == {CPU_TOO: "cpu_too", MPS_HAZARD: "failed"}.get(entry.verdict, "passed"), row
    assert not row["badge"]
