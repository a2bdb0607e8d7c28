"""What a new user reads: the check command's header, quiet check output, library warnings that are
not failures under ``-W error``, and the HTML report as one self-contained file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from pytest_mps import cli
from pytest_mps.quiet import quiet_libraries

from conftest import FIXTURES

DDPM = str(FIXTURES / "tiny-ddpm")


def test_the_check_header_has_no_lines_that_read_like_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", DDPM, "--no-isolate", "--checks", "load", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "rootdir:" not in out and "configfile:" not in out and "devnull" not in out
    lines = out.splitlines()
    assert lines[0].startswith("mps: ") and "torch " in lines[0]
    assert lines[1].startswith("mps check: 1 pipeline(s): tiny-ddpm | target cpu (stand-in")
    assert lines[2].startswith("mps check: crash isolation off")


def test_library_notices_and_progress_bars_are_off_inside_checks_and_restored_after() -> None:
    import diffusers.utils.logging as diffusers_logging

    diffusers_logging.set_verbosity_warning()
    diffusers_logging.enable_progress_bar()
    with quiet_libraries():
        assert diffusers_logging.get_verbosity() == logging.ERROR
        assert not diffusers_logging.is_progress_bar_enabled()
    assert diffusers_logging.get_verbosity() == logging.WARNING
    assert diffusers_logging.is_progress_bar_enabled()


def test_a_strict_run_of_the_bundled_suite_passes_and_lists_library_warnings_once(
    pytester: pytest.Pytester,
) -> None:
    """Under ``-W error`` the scheduler sweep meets numpy-2 deprecations raised inside Diffusers: not
    the pipeline's MPS story, so not failures; they are listed once at the end."""
    result = pytester.runpytest(
        "--pyargs", "pytest_mps.suite", "--mps-pipelines", DDPM, "--mps-device", "cpu", "-W", "error",
        "-k", "schedulers or cpu_parity",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    if "warnings raised inside libraries during checks" in out:  # numpy 2 and this Diffusers
        assert "(not failures, whatever -W says; each shown once)" in out


def test_the_html_report_is_one_self_contained_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        from pytest_mps import assert_cpu_parity

        def test_a(mps_pipeline):
            assert_cpu_parity(mps_pipeline({DDPM!r}))
        """
    )
    result = pytester.runpytest(
        "--mps-device", "cpu", "--mps-report-html", "out/report.html", "--mps-report-json", "out/r.json"
    )
    result.assert_outcomes(passed=1)
    page = (pytester.path / "out" / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == 3  # CPU, target, difference
    assert sorted(p.name for p in (pytester.path / "out").iterdir()) == ["r.json", "report.html"]
    assert json.loads((pytester.path / "out" / "r.json").read_text())["checks"][0]["images"] is None


def test_numeric_ini_keys_are_typed_in_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    line = next(line for line in out.splitlines() if line.strip().startswith("mps_timeout ("))
    assert "(float)" in line
