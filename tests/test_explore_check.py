"""The bundled suite's exploration check (``--mps-explore N`` / ``pytest-mps check --explore N``): off by
default; on, it finds a device-only fault that appears only at batch >= 2 and reports its smallest
input."""

from __future__ import annotations

import pytest

from conftest import FIXTURES

DDPM = str(FIXTURES / "tiny-ddpm")

BATCH_FAULT = """
import diffusers

_forward = diffusers.UNet2DModel.forward


def forward(self, sample, *args, **kwargs):
    out = _forward(self, sample, *args, **kwargs)
    if sample.shape[0] >= 2 and sample.device.type != "cpu":  # a device-only batching bug
        out.sample = out.sample + 0.5
    return out


diffusers.UNet2DModel.forward = forward
"""


def test_exploration_is_off_by_default(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(
        "--pyargs", "pytest_mps.suite", "--mps-pipelines", DDPM, "--mps-device", "cpu", "--mps-checks", "load"
    )
    result.assert_outcomes(passed=1)
    assert "explore" not in result.stdout.str().split("pytest-mps verdict")[-1]


def test_exploration_finds_a_batch_fault_and_reports_its_smallest_input(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(batchfault=BATCH_FAULT)
    pytester.syspathinsert()
    result = pytester.runpytest(
        "-p", "batchfault", "--pyargs", "pytest_mps.suite", "--mps-pipelines", DDPM,
        "--mps-device", "emulated", "--mps-explore", "6", "--mps-checks", "load,explore",
    )  # fmt: skip
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*tiny-ddpm explore: smallest failing input: *batch*=2*"])
