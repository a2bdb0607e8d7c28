"""A failing parity check says where its divergence starts (issue: localisation), in the failure
message, the JSON report and the HTML report; ``--no-mps-localize`` leaves only the verdict."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES

TEST = f"""
from pytest_mps import assert_cpu_parity


def kernel_bug(module, args, output):  # wrong only where the module runs on the device
    return output * 1.1 if output.device.type != "cpu" else output


def test_unet_parity(mps_pipeline):
    pipe = mps_pipeline({str(FIXTURES / "tiny-sd")!r})
    pipe.unet.up_blocks[1].resnets[0].register_forward_hook(kernel_bug)
    assert_cpu_parity(pipe)
"""


def test_a_failing_check_names_where_the_divergence_starts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kernel=TEST)
    result = pytester.runpytest(
        "--mps-device", "emulated", "--mps-report-json", "r.json", "--mps-report-html", "html"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E * divergence starts at step 0 in unet.up_blocks.1.resnets.0 (ResnetBlock2D): local max |diff| *"]
    )
    check = json.loads((pytester.path / "r.json").read_text())["checks"][0]
    found = check["details"]["localization"]
    assert found["culprit"]["path"] == "unet.up_blocks.1.resnets.0"
    assert found["ranking"][0]["path"] == "unet.up_blocks.1.resnets.0"
    page = (pytester.path / "html" / "index.html").read_text()
    assert "divergence starts at step 0 in unet.up_blocks.1.resnets.0" in page
    assert "<code>unet.up_blocks.1.resnets.0</code>" in page


def test_localisation_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kernel=TEST)
    result = pytester.runpytest("--mps-device", "emulated", "--no-mps-localize")
    result.assert_outcomes(failed=1)
    assert "divergence starts" not in result.stdout.str()
