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
