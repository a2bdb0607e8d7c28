"""The CPU cross-check: a check that fails on the target is re-run on the CPU; a failure there too is
"fails on the CPU too: not an MPS problem" (status ``cpu_too``), a failure only on the target stays a
failure of the target. Runs on the emulated MPS device, whose tensors say ``mps``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_mps import check_batch_consistency, check_cpu_parity, check_deterministic
from pytest_mps.context import CheckContext, using_context
from pytest_mps.emulation import EmulatedMPS
from pytest_mps.pipelines import load_pipeline, prepare_pipeline
from pytest_mps.references import ReferenceCache
from pytest_mps.target import Target
from pytest_mps.verdict import Status

import faults
from conftest import FIXTURES


@pytest.fixture
def emulated() -> Iterator[CheckContext]:
    """The emulated MPS device active, and a check context whose target is it."""
    with EmulatedMPS():
        ctx = CheckContext(target=Target("emulated", "emulated"), references=ReferenceCache())
        with using_context(ctx):
            yield ctx


def _pipe(name: str = "tiny-ddpm") -> Any:
    pipe = prepare_pipeline(load_pipeline(FIXTURES / name))
    pipe.to("mps")
    return pipe


def _device_only(pipe: Any) -> None:
    """A kernel bug of the target: the UNet's output is off only where tensors are not on the CPU."""

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        if output.sample.device.type != "cpu":
            output.sample = output.sample + 0.5
        return output

    pipe.unet.register_forward_hook(hook)


def test_a_failure_only_on_the_target_stays_a_failure(emulated: CheckContext) -> None:
    pipe = _pipe()
    _device_only(pipe)
    result = check_cpu_parity(pipe)
    assert result.status is Status.FAILED
    assert result.details["cpu_cross_check"]["status"] == "passed"
    assert not result.failures[0].startswith("fails on the CPU too")


def test_a_failure_on_the_cpu_too_is_not_an_mps_problem(emulated: CheckContext) -> None:
    pipe = _pipe()
    faults.couple_batch(pipe)  # a modelling bug: batch items leak into each other on every device
    result = check_batch_consistency(pipe)
    assert result.status is Status.CPU_TOO and not result.passed
    assert result.failures[0].startswith("fails on the CPU too (")
    assert result.failures[0].endswith("): not an MPS problem")
    assert result.details["cpu_cross_check"]["status"] == "failed"
    assert "FAILED (on the CPU too: not an MPS problem)" in result.report()
    assert pipe.device.type == "mps"  # moved back after the CPU run


def test_an_exception_on_the_cpu_too_is_not_an_mps_problem(emulated: CheckContext) -> None:
    pipe = _pipe()

    def hook(*_args: Any) -> None:
        raise NotImplementedError("this model does not support that path")

    pipe.unet.register_forward_hook(hook)
    result = check_deterministic(pipe)
    assert result.status is Status.CPU_TOO
    assert isinstance(result.exception, NotImplementedError)


def test_the_cross_check_can_be_turned_off(emulated: CheckContext) -> None:
    pipe = _pipe()
    faults.couple_batch(pipe)
    with using_context(dataclasses.replace(emulated, cross_check=False)):
        result = check_batch_consistency(pipe)
    assert result.status is Status.FAILED and "cpu_cross_check" not in result.details


def test_the_cpu_target_has_nothing_to_cross_check() -> None:
    pipe = prepare_pipeline(load_pipeline(FIXTURES / "tiny-ddpm"))
    faults.couple_batch(pipe)
    with using_context(CheckContext(target=Target("cpu", "cpu"), references=ReferenceCache())):
        result = check_batch_consistency(pipe)
    assert result.status is Status.FAILED and "cpu_cross_check" not in result.details


def test_usage_errors_stay_usage_errors(emulated: CheckContext) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        check_batch_consistency(_pipe(), batch_size=1)


def test_absolute_limits_are_relative_to_outputs_that_are_not_images() -> None:
    """An audio-like output of amplitude 1e-6 with a 50% error fails (an absolute 3e-2 would pass it);
    an embedding of magnitude 30 that moved by 0.05 passes (an absolute 3e-2 would fail it)."""
    import numpy as np

    from pytest_mps.checks import judge
    from pytest_mps.checks.common import output_scale
    from pytest_mps.tolerances import Tolerance

    limit = Tolerance(atol=3e-2)
    audio = np.linspace(-1e-6, 1e-6, 64, dtype=np.float32)
    assert output_scale(audio) == pytest.approx(1e-6)
    _, failures = judge(audio * 1.5, audio, limit)
    assert failures and "x max |reference| 1.00e-06 (not a 0-1 image)" in failures[0]
    embeddings = np.linspace(-30, 30, 64, dtype=np.float32)
    assert judge(embeddings + 0.05, embeddings, limit)[1] == []
    image = np.linspace(0, 1, 48, dtype=np.float32).reshape(1, 4, 4, 3)
    assert output_scale(image) == 1.0 and judge(image + 0.05, image, limit)[1]


def _raises(pipe: Any, *, only_on_target: bool) -> None:
    """The pipeline's own exception (not an MPS rule): everywhere, or only where tensors are not on
    the CPU."""

    def hook(_module: Any, args: Any) -> None:
        if not only_on_target or args[0].device.type != "cpu":
            raise NotImplementedError("decoding without tiling is not implemented")

    pipe.unet.register_forward_pre_hook(hook)


@pytest.mark.parametrize("check", ["audit", "speed"])
def test_checks_not_rerun_whole_ask_the_cpu_when_the_call_raised(emulated: CheckContext, check: str) -> None:
    """The audit and the speed check are not re-run on the CPU as a whole; when their failure is the
    pipeline's own exception, the call is run once on the CPU: raising there too is not MPS's."""
    from pytest_mps.registry import CHECKS
    from pytest_mps.suite.suite_checks import check_audit, check_speed

    assert not CHECKS[check].cross_check
    run = {"audit": check_audit, "speed": check_speed}[check]
    everywhere = _pipe()
    _raises(everywhere, only_on_target=False)
    result = run(everywhere)
    assert result.status is Status.CPU_TOO, result.failures
    assert result.failures[0].startswith("fails on the CPU too (raised NotImplementedError: decoding")
    assert result.details["cpu_cross_check"]["status"] == "failed"
    assert everywhere.device.type == "mps"

    target_only = _pipe()
    _raises(target_only, only_on_target=True)
    result = run(target_only)
    assert result.status is Status.FAILED, result.failures
    assert result.details["cpu_cross_check"] == {"status": "passed", "summary": "the call runs on the CPU"}
    assert not result.failures[0].startswith("fails on the CPU too")


def test_an_audit_that_found_an_mps_hazard_is_not_excused_by_the_cpu(emulated: CheckContext) -> None:
    """A float64 tensor on the target is MPS's problem even when the call then fails everywhere."""
    import torch

    from pytest_mps.suite.suite_checks import check_audit

    pipe = _pipe()

    def hook(_module: Any, args: Any) -> None:
        if args[0].device.type != "cpu":
            args[0].to(torch.float64)
        raise NotImplementedError("decoding without tiling is not implemented")

    pipe.unet.register_forward_pre_hook(hook)
    result = check_audit(pipe)
    assert result.status is Status.FAILED, result.failures
    assert "cpu_cross_check" not in result.details
    assert any("float64" in line for line in result.failures), result.failures
