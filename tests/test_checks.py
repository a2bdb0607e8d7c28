"""Each check passes on every healthy tiny pipeline, and fails with the right message on a pipeline
with the fault it exists for."""

from __future__ import annotations

import pytest
import torch

from pytest_mps import (
    assert_attention_slicing_parity,
    assert_batch_consistency,
    assert_cpu_parity,
    assert_deterministic,
    assert_float16_parity,
    assert_schedulers_compatible,
    check_schedulers_compatible,
)
from pytest_mps.pipelines import load_pipeline, prepare_pipeline
from pytest_mps.verdict import Status

import faults
from conftest import FIXTURES

PIPELINES = ("tiny-sd", "tiny-ddpm", "tiny-dit")
CHECKS = (
    assert_cpu_parity,
    assert_batch_consistency,
    assert_attention_slicing_parity,
    assert_deterministic,
    assert_float16_parity,
)


def load(name: str):
    return prepare_pipeline(load_pipeline(FIXTURES / name))


@pytest.fixture(scope="module", params=PIPELINES)
def healthy(request):
    return load(request.param)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_healthy_pipelines_pass(healthy, check) -> None:
    result = check(healthy)
    assert result.passed and not result.failures
    assert result.target.startswith("cpu (stand-in")
    assert not result.real_mps


def test_healthy_scheduler_sweep(healthy) -> None:
    result = assert_schedulers_compatible(healthy)
    tried = [n for n, o in result.details["schedulers"].items() if o.startswith(("passed", "failed"))]
    assert len(tried) >= 3, result.details
    assert result.summary.startswith(f"{len(tried)}/{len(tried)} schedulers pass")


def test_parity_reports_every_metric() -> None:
    result = assert_cpu_parity(load("tiny-ddpm"))
    comparison = result.comparisons["target vs cpu"]
    assert comparison.max_abs == 0.0 and comparison.psnr == float("inf")
    report = result.report()
    for label in (
        "max |diff|",
        "cosine distance",
        "PSNR dB",
        "RMS (0-255)",
        "pixels off >1 level",
        "worst at",
    ):
        assert label in report
    assert "is a stand-in; this is not an MPS verdict" in report
    assert result.details["reference"] in ("computed", "memory")


def test_batch_coupled_module_fails_batch_check() -> None:
    pipe = load("tiny-ddpm")
    faults.couple_batch(pipe)
    assert_cpu_parity(pipe)  # a single item is unaffected
    with pytest.raises(AssertionError) as info:
        assert_batch_consistency(pipe)
    message = str(info.value)
    assert "batch FAILED" in message
    assert "max |diff|" in message and "exceeds atol 3.00e-03" in message
    assert "batch item 0" in message or "batch item 1" in message


def test_slicing_dependent_processor_fails_slicing_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.models import attention_processor

    original = attention_processor.SlicedAttnProcessor.__call__

    def wrong(self, *args, **kwargs):
        return original(self, *args, **kwargs) * 3.0

    pipe = load("tiny-sd")
    before = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    monkeypatch.setattr(attention_processor.SlicedAttnProcessor, "__call__", wrong)
    with pytest.raises(
        AssertionError, match=r"attention_slicing FAILED .*\n.*max \|diff\| .* exceeds atol 3.00e-03"
    ):
        assert_attention_slicing_parity(pipe)
    # the check restores the processors it replaced
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == before


def test_slicing_not_applicable_without_attention() -> None:
    pipe = load("tiny-ddpm")
    if any(hasattr(m, "set_attention_slice") for m in pipe.unet.modules()):
        pytest.skip("this tiny DDPM UNet has attention")
    result = assert_attention_slicing_parity(pipe)
    assert result.summary.startswith("n/a")


def test_nondeterministic_module_fails_determinism() -> None:
    pipe = load("tiny-ddpm")
    faults.nondeterministic(pipe)
    with pytest.raises(
        AssertionError, match=r"determinism FAILED.*\n  - max \|diff\| .* exceeds atol 1.00e-05"
    ):
        assert_deterministic(pipe)


def test_first_pass_drift_is_named() -> None:
    pipe = load("tiny-ddpm")
    faults.first_call_drift(pipe)
    with pytest.raises(AssertionError, match=r"the first run differs from later runs.*diffusers #372"):
        assert_deterministic(pipe, runs=3)


def test_nan_module_fails_parity_by_name() -> None:
    pipe = load("tiny-ddpm")
    faults.nan_module(pipe)
    with pytest.raises(AssertionError) as info:
        assert_cpu_parity(pipe)
    assert "target output contains NaN/Inf" in str(info.value)
    assert "black image" in str(info.value)


def test_float16_overflow_fails_float16_check() -> None:
    pipe = load("tiny-ddpm")
    faults.float16_overflow(pipe)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(AssertionError) as info:
        assert_float16_parity(pipe)
    assert "float16 target" in str(info.value)
    # the float32 weights are back, bit for bit
    after = pipe.unet.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in weights.items())


def test_unknown_scheduler_name_is_refused() -> None:
    with pytest.raises(
        ValueError, match="unknown scheduler 'EulerDiscreteSchedulr'; compatible with this pipeline"
    ):
        assert_schedulers_compatible(load("tiny-ddpm"), schedulers=["EulerDiscreteSchedulr"])


def test_scheduler_that_cannot_run_anywhere_is_skipped_not_failed() -> None:
    from diffusers import DDIMScheduler

    class Broken(DDIMScheduler):
        def set_timesteps(self, *args, **kwargs):
            raise RuntimeError("broken everywhere")

    result = assert_schedulers_compatible(load("tiny-ddpm"), schedulers=[Broken, DDIMScheduler])
    assert result.details["schedulers"]["Broken"].startswith("cpu-too: fails on the CPU too")
    assert result.passed and "1 fail on the CPU too" in result.summary
    assert result.details["schedulers"]["DDIMScheduler"].startswith("passed")


def test_training_mode_is_warned() -> None:
    from pytest_mps import TrainingModeWarning

    pipe = load("tiny-ddpm")
    pipe.unet.train()
    with pytest.warns(TrainingModeWarning, match="modules in training mode: unet"):
        assert_cpu_parity(pipe)


def test_cpu_reference_is_computed_once_per_state() -> None:
    from pytest_mps.context import CheckContext, using_context
    from pytest_mps.references import ReferenceCache
    from pytest_mps.target import Target

    cache = ReferenceCache()
    pipe = load("tiny-ddpm")
    with using_context(CheckContext(target=Target("cpu", "cpu"), references=cache)):
        assert_cpu_parity(pipe)
        assert_cpu_parity(pipe)
        assert_float16_parity(pipe)  # float32 CPU reference: the same entry
        assert (cache.computed, cache.hits) == (1, 2)
        with torch.no_grad():
            pipe.unet.conv_out.bias.add_(0.01)  # in-place edit: a new reference is due
        assert_cpu_parity(pipe)
        assert cache.computed == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_tolerances_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="must be a finite, non-negative number"):
        assert_batch_consistency(load("tiny-ddpm"), atol=bad)


def test_slicing_that_changes_nothing_is_not_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.models import attention_processor

    # DDPM's UNet2DModel has attention, but exposes no set_attention_slice: the call is a no-op.
    monkeypatch.setattr(attention_processor.SlicedAttnProcessor, "__call__", lambda *a, **k: 1 / 0)
    result = assert_attention_slicing_parity(load("tiny-ddpm"))
    assert result.summary == "n/a: enable_attention_slicing() changes no attention processor here"
    assert result.status is Status.NOT_APPLICABLE and result.passed


def test_a_sweep_that_tested_nothing_fails() -> None:
    from diffusers import DDIMScheduler

    class Unbuildable(DDIMScheduler):
        @classmethod
        def from_config(cls, *args, **kwargs):
            raise ValueError("takes no such config")

    with pytest.raises(AssertionError, match="no scheduler could be tested: all 1 were skipped"):
        assert_schedulers_compatible(load("tiny-ddpm"), schedulers=[Unbuildable])


def test_a_sweep_whose_every_scheduler_fails_on_the_cpu_too_is_not_an_mps_failure() -> None:
    from diffusers import DDIMScheduler

    class Broken(DDIMScheduler):
        def set_timesteps(self, *args, **kwargs):
            raise RuntimeError("broken everywhere")

    result = check_schedulers_compatible(load("tiny-ddpm"), schedulers=[Broken])
    assert result.status is Status.CPU_TOO
    with pytest.raises(AssertionError, match="every scheduler that could be built fails on the CPU too"):
        assert_schedulers_compatible(load("tiny-ddpm"), schedulers=[Broken])


def test_audit_module_sees_float64_buffers() -> None:
    from pytest_mps import audit_module
    from pytest_mps.emulation.shape_trace import spec

    class Rope(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("freqs", torch.arange(8, dtype=torch.float64))

        def forward(self, x):
            return x * torch.cos(self.freqs).float().sum()

    report = audit_module(Rope(), spec(1, 4, 8, 8), module_name="rope")
    assert [(f.kind, f.severity, f.module) for f in report.findings] == [("float64", "error", "rope")]
    assert "buffer 'freqs'" in report.findings[0].source


def test_float16_fault_hidden_from_cosine_is_caught_by_the_absolute_limit() -> None:
    pipe = load("tiny-sd")

    faults._output_hook(pipe.unet, lambda x: x * 3 if x.dtype == torch.float16 else x)
    with pytest.raises(AssertionError, match=r"float16 .*\n  - max \|diff\| .* exceeds atol 0.1"):
        assert_float16_parity(pipe, atol=0.1)


def test_float16_on_a_stand_in_is_judged_by_cosine_and_finiteness_only() -> None:
    """float16 arithmetic on a stand-in is not Metal's: the absolute limit is real MPS's alone."""
    result = assert_float16_parity(load("tiny-ddpm"))
    assert result.tolerance is not None and result.tolerance.atol is None
    assert result.tolerance.max_cosine_distance == 5e-2
    assert result.tolerance.sources["atol"] == "stand-in default"
    from pytest_mps.tolerances import resolve_tolerance

    assert resolve_tolerance("float16", real_mps=True).atol == 0.1


def test_reference_keys_follow_identity_behaviour_and_content() -> None:
    from pytest_mps.keys import pipeline_fingerprint, session_fingerprint

    a, b = load("tiny-ddpm"), load("tiny-ddpm")
    assert session_fingerprint(a) == session_fingerprint(a)
    assert session_fingerprint(a) != session_fingerprint(b)  # another object: never shares a reference
    assert pipeline_fingerprint(a) == pipeline_fingerprint(b)  # same content: one stored reference
    before = (session_fingerprint(a), pipeline_fingerprint(a))
    handle = a.unet.register_forward_hook(lambda *args: None)
    assert session_fingerprint(a) != before[0] and pipeline_fingerprint(a) != before[1]
    handle.remove()
    assert (session_fingerprint(a), pipeline_fingerprint(a)) == before
