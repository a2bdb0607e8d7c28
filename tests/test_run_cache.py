"""Target runs are reused across checks only when a fresh call would give exactly the same output: the
same pipeline state, inputs, target, dtype and global-RNG seed. Fault detection stays honest, the CPU
reference is shared by every check that asks for it, and the speed check reuses the session's timings
or labels its probe (never a full CPU call when the reference is stored)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from pytest_mps.checks import (
    check_batch_consistency,
    check_cpu_parity,
    check_deterministic,
    check_float16_parity,
    check_schedulers_compatible,
)
from pytest_mps.context import CheckContext, using_context
from pytest_mps.input_spec import InputSpec
from pytest_mps.pipelines import load_pipeline, prepare_pipeline
from pytest_mps.references import ReferenceCache
from pytest_mps.run_cache import RunCache, RunKey, Served, fresh_on_target, run_on_target
from pytest_mps.running import Run, moved, run_pipeline
from pytest_mps.suite import suite_checks
from pytest_mps.target import Target

import faults
from conftest import FIXTURES

SPEC = InputSpec()


def load(name: str = "tiny-ddpm") -> Any:
    return prepare_pipeline(load_pipeline(FIXTURES / name))


@contextlib.contextmanager
def session(target: str = "cpu", references: ReferenceCache | None = None) -> Iterator[CheckContext]:
    """A fresh check session (its own CPU references and target runs) on ``target``."""
    ctx = CheckContext(target=Target(target, "test"), references=references or ReferenceCache())
    with using_context(ctx):
        yield ctx


@contextlib.contextmanager
def counted_calls(pipe: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every call of ``pipe``: (its device type, num_inference_steps)."""
    calls: list[tuple[str, Any]] = []
    cls = type(pipe)
    original = cls.__call__

    @functools.wraps(original)
    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is pipe:
            calls.append((self.device.type, kwargs.get("num_inference_steps")))
        return original(self, *args, **kwargs)

    cls.__call__ = counting
    try:
        yield calls
    finally:
        cls.__call__ = original


def served(pipe: Any, ctx: CheckContext, **kw: Any) -> Served:
    return run_on_target(pipe, SPEC.build(pipe), ctx, **kw)


def fresh(pipe: Any) -> np.ndarray:
    return run_pipeline(pipe, SPEC.build(pipe)).array


# --- a reused run is exactly a fresh one ---------------------------------------------------------------


def test_a_reused_run_equals_a_fresh_one_and_is_read_only() -> None:
    pipe = load()
    with session() as ctx, counted_calls(pipe) as calls:
        first = served(pipe, ctx)
        again = served(pipe, ctx)
    assert not first.reused and again.reused
    assert again.run is first.run and len(calls) == 1
    np.testing.assert_array_equal(again.run.array, fresh(pipe))
    assert not again.run.array.flags.writeable
    assert ctx.references is not None and (ctx.references.runs.hits, ctx.references.runs.misses) == (1, 1)


def _hook(pipe: Any) -> None:
    faults.denoiser(pipe).register_forward_hook(lambda m, a, out: out)  # changes nothing but the state


def _no_grad_edit(pipe: Any) -> None:
    with torch.no_grad():
        next(faults.denoiser(pipe).parameters()).mul_(1.5)


def _data_edit(pipe: Any) -> None:
    next(faults.denoiser(pipe).parameters()).data.mul_(1.5)  # leaves the version counter alone


def _scheduler(pipe: Any) -> None:
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)


def _attribute(pipe: Any) -> None:
    faults.denoiser(pipe).training = True


@pytest.mark.parametrize(
    "change", [_hook, _no_grad_edit, _data_edit, _scheduler, _attribute], ids=lambda f: f.__name__.strip("_")
)
def test_a_changed_pipeline_is_never_served_a_stale_run(change) -> None:
    pipe = load()
    with session() as ctx:
        served(pipe, ctx)
        change(pipe)
        after = served(pipe, ctx)
    assert not after.reused
    np.testing.assert_array_equal(after.run.array, fresh(pipe))


@pytest.mark.parametrize(
    "change", [_data_edit, _no_grad_edit, _attribute], ids=lambda f: f.__name__.strip("_")
)
def test_the_state_key_sees_changes_on_the_emulated_device_too(change) -> None:
    """The key reads the weights with torch-function handling off (the emulated device's mode among
    it): a ``.data`` edit of an emulated tensor still changes it, and an unchanged pipeline keeps it."""
    from pytest_mps.emulation import EmulatedMPS
    from pytest_mps.state_key import pipeline_state

    pipe = load()
    with EmulatedMPS():
        pipe.to("mps")
        try:
            before = pipeline_state(pipe)
            assert pipeline_state(pipe) == before
            change(pipe)
            assert pipeline_state(pipe) != before
        finally:
            pipe.to("cpu")


def test_another_dtype_is_a_fresh_run_and_the_restored_pipeline_reuses_again() -> None:
    pipe = load()
    with session() as ctx:
        float32 = served(pipe, ctx)
        with moved(pipe, dtype=torch.float16):
            half = served(pipe, ctx)
        restored = served(pipe, ctx)  # moved() restores every weight bit for bit
    assert not half.reused and half.run.dtype == "float16"
    assert restored.reused and restored.run is float32.run


def test_attention_processors_and_module_attributes_are_part_of_the_key() -> None:
    pipe = load("tiny-sd")
    with session() as ctx:
        plain = served(pipe, ctx)
        pipe.enable_attention_slicing(1)
        sliced = served(pipe, ctx)
        pipe.disable_attention_slicing()
        pipe.vae.enable_tiling()  # a plain attribute (use_tiling): no processor, hook or weight changes
        tiled = served(pipe, ctx)
        pipe.vae.disable_tiling()
        back = served(pipe, ctx)
    assert not sliced.reused and not tiled.reused
    assert back.reused and back.run is plain.run


def test_other_inputs_seed_target_and_global_seed_are_fresh_runs() -> None:
    pipe = load()
    with session() as ctx:
        base = served(pipe, ctx)
        other_seed = run_on_target(pipe, InputSpec(seed=1).build(pipe), ctx)
        other_seed_global = served(pipe, ctx, global_seed=1)
    with session("cpu", ctx.references) as cross:
        cross.target = Target("emulated", "test")  # another target label: another place
        elsewhere = served(pipe, cross)
    assert not base.reused
    assert not other_seed.reused and not other_seed_global.reused and not elsewhere.reused


def test_a_process_setting_that_changes_arithmetic_is_part_of_the_key() -> None:
    pipe = load()
    with session() as ctx:
        served(pipe, ctx)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - 1) if threads > 1 else 2)
        try:
            changed = served(pipe, ctx)
        finally:
            torch.set_num_threads(threads)
    assert not changed.reused


def test_a_call_with_a_callback_is_never_reused() -> None:
    pipe = load("tiny-sd")
    steps: list[int] = []

    def callback(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        steps.append(step)
        return kwargs

    call = {**SPEC.build(pipe), "callback_on_step_end": callback}
    with session() as ctx:
        run_on_target(pipe, call, ctx)
        again = run_on_target(pipe, call, ctx)
    assert not again.reused and steps == [0, 1, 0, 1]


def test_a_reused_run_raises_the_warnings_of_its_call_again() -> None:
    pipe = load()

    def warn(module: Any, args: Any, output: Any) -> Any:
        warnings.warn("denoiser says hello", UserWarning, stacklevel=1)
        return output

    faults.denoiser(pipe).register_forward_hook(warn)
    with session() as ctx:
        with pytest.warns(UserWarning, match="denoiser says hello"):
            served(pipe, ctx)
        with pytest.warns(UserWarning, match="denoiser says hello"):
            again = served(pipe, ctx)
    assert again.reused


def test_the_cache_is_bounded() -> None:
    cache = RunCache(max_entries=2, max_bytes=3 * 400)
    runs = [Run(np.zeros(100, dtype=np.float32), 0.1) for _ in range(4)]
    from pytest_mps.run_cache import _Entry

    for i, run in enumerate(runs):
        cache.put(RunKey("p", str(i), "w"), _Entry(run))
    assert len(cache) == 2 and cache.bytes == 800
    assert cache.get(RunKey("p", "0", "w")) is None and cache.get(RunKey("p", "3", "w")) is not None
    cache.put(RunKey("p", "big", "w"), _Entry(Run(np.zeros(1000, dtype=np.float32), 0.1)))
    assert cache.get(RunKey("p", "big", "w")) is None  # larger than the whole budget: not kept


# --- checks share what the session has ---------------------------------------------------------------


def test_checks_share_the_single_run_and_one_cpu_reference() -> None:
    pipe = load()
    own = type(pipe.scheduler)
    with session() as ctx, counted_calls(pipe) as calls:
        suite_checks.check_inference(pipe, SPEC)
        parity = check_cpu_parity(pipe, SPEC)
        batch = check_batch_consistency(pipe, SPEC)
        determinism = check_deterministic(pipe, SPEC)
        half = check_float16_parity(pipe, SPEC)
        sweep = check_schedulers_compatible(pipe, SPEC, schedulers=[own], audit=False)
    assert all(r.passed for r in (parity, batch, determinism, half, sweep))
    assert parity.details["target_run"] == "reused" and determinism.details["first_run"] == "reused"
    assert batch.details["reused_singles"] == [0]  # item 1 has another prompt and seed: run fresh
    references = ctx.references
    # cpu_parity's reference, shared by float16 and the sweep's own scheduler
    assert references is not None and references.computed == 1
    assert half.details["reference"] == "memory"
    # inference 1, CPU reference 1, batched 1 + single 1, determinism's second run 1, float16 1
    assert len(calls) == 6, calls


def test_determinism_still_sees_first_pass_drift_through_a_reused_first_run() -> None:
    pipe = load()
    faults.first_call_drift(pipe)
    with session():
        suite_checks.check_inference(pipe, SPEC)  # the very first call: the drifted one
        result = check_deterministic(pipe, SPEC, runs=3)
    assert result.details["first_run"] == "reused"
    assert not result.passed
    assert "first-pass drift" in result.failures[0] and "#372" in result.failures[0]


def test_determinism_still_sees_unseeded_noise_through_a_reused_first_run() -> None:
    pipe = load()
    faults.nondeterministic(pipe)
    with session():
        suite_checks.check_inference(pipe, SPEC)
        result = check_deterministic(pipe, SPEC)
    assert result.details["first_run"] == "reused"
    assert not result.passed and "exceeds atol" in result.failures[0]


# --- the speed check ---------------------------------------------------------------------------------


def test_speed_reuses_the_session_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite_checks, "SHORT_CALL_S", 0.0)  # no top-up of short calls: count exactly
    monkeypatch.setattr(suite_checks, "COLD_CPU_MIN_S", 0.0)
    pipe = load()
    with session(), counted_calls(pipe) as calls:
        check_cpu_parity(pipe, SPEC)
        check_deterministic(pipe, SPEC)
        made = len(calls)
        result = suite_checks.check_speed(pipe, SPEC)
    assert len(calls) == made  # no call of its own
    assert result.details["timing"] == "session" and not result.details["estimated"]
    assert "probe" not in result.summary


def test_speed_with_a_stored_reference_runs_no_full_cpu_call(tmp_path) -> None:
    from pytest_mps.emulation import EmulatedMPS
    from pytest_mps.reference_store import ReferenceStore

    with EmulatedMPS():
        pipe = load().to("mps")
        with session("emulated", ReferenceCache(store=ReferenceStore(tmp_path))):
            check_cpu_parity(pipe, SPEC)  # computes and stores the reference
        stored = ReferenceCache(store=ReferenceStore(tmp_path))
        with session("emulated", stored), counted_calls(pipe) as calls:
            parity = check_cpu_parity(pipe, SPEC)
            check_deterministic(pipe, SPEC)
            speed = suite_checks.check_speed(pipe, SPEC)
    assert parity.details["reference"] == "disk"
    on_cpu = [steps for device, steps in calls if device == "cpu"]
    assert on_cpu and all(steps == suite_checks.PROBE_STEPS for steps in on_cpu), calls
    assert speed.details["timing"] == "probe" and speed.details["estimated"]
    assert "estimated from a 1-step probe" in speed.summary
    assert "probe" in speed.details["how"] and "probe" in speed.figure_text


def test_speed_probe_without_session_timings_is_labelled() -> None:
    pipe = load()
    with session(), counted_calls(pipe) as calls:
        result = suite_checks.check_speed(pipe, SPEC)
    assert result.details["timing"] == "probe" and result.details["probe_steps"] == 1
    assert all(steps == 1 for _, steps in calls), calls
    assert "(estimated from a 1-step probe)" in result.summary


def test_fresh_runs_are_timed_but_never_reused_nor_kept() -> None:
    pipe = load()
    with session() as ctx, counted_calls(pipe) as calls:
        fresh_on_target(pipe, SPEC.build(pipe), ctx, global_seed=0)
        after = served(pipe, ctx)
    assert not after.reused and len(calls) == 2
