"""Crash isolation of a project's own tests (``--mps-isolate``): device tests run in a warm worker
process and everything they produce comes back (outcomes, tracebacks, output, warnings, properties,
pytest-mps results and images, reference counts); the other tests run here; fixtures keep their scopes
on both sides. The faults themselves are attacked in ``tests/attacks/test_process_faults.py``."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from pytest_mps.isolation.death import Death
from pytest_mps.isolation.session_client import RunOutcome, crash_lines
from pytest_mps.plugin.isolation import isolates
from pytest_mps.reports.model import comparable

from conftest import FIXTURES

DDPM = str(FIXTURES / "tiny-ddpm")

CONFTEST = """
import os

import pytest


def note(event):
    with open(os.path.join(os.path.dirname(__file__), "events.txt"), "a") as out:
        out.write(f"{os.getpid()} {event}\\n")


@pytest.fixture(scope="session")
def warm():
    note("session-setup")
    yield
    note("session-teardown")


@pytest.fixture(scope="module")
def shared(request, warm):
    name = request.module.__name__
    note(f"{name}-setup")
    yield
    note(f"{name}-teardown")
"""

FIRST = """
from conftest import note


def test_here_1(shared):
    note("here_1")


def test_device_1(shared, mps_device):
    note("device_1")


def test_here_2(shared):
    note("here_2")


def test_device_2(shared, mps_device_lock):
    note("device_2")
"""

SECOND = """
from conftest import note


def test_device_3(shared, mps_device_lock):
    note("device_3")


def test_here_3(shared):
    note("here_3")
"""


def test_fixtures_keep_their_scopes_on_both_sides_and_the_worker_stays_warm(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_a=FIRST, test_b=SECOND)
    pytester.makeini("[pytest]\nmps_isolate = true\n")
    result = pytester.runpytest("--mps-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["mps: crash isolation on: each test that uses the device runs in a worker*"])
    by_pid: dict[str, list[str]] = {}
    for line in (pytester.path / "events.txt").read_text().splitlines():
        pid, event = line.split()
        by_pid.setdefault(pid, []).append(event)
    here = by_pid.pop(str(os.getpid()))
    assert here == [
        "session-setup",
        "test_a-setup",
        "here_1",
        "here_2",
        "test_a-teardown",
        "test_b-setup",
        "here_3",
        "test_b-teardown",
        "session-teardown",
    ]
    (worker,) = by_pid.values()  # one warm worker ran every device test
    assert worker == [
        "session-setup",
        "test_a-setup",
        "device_1",
        "device_2",
        "test_a-teardown",
        "test_b-setup",
        "device_3",
        "test_b-teardown",
        "session-teardown",
    ]
    # Off again from the command line: everything runs here.
    (pytester.path / "events.txt").unlink()
    pytester.runpytest("--mps-device", "cpu", "-p", "no:cacheprovider", "--no-mps-isolate").assert_outcomes(
        passed=6
    )
    pids = {line.split()[0] for line in (pytester.path / "events.txt").read_text().splitlines()}
    assert pids == {str(os.getpid())}


OUTCOMES = """
import os
import sys
import warnings

import pytest


def test_fails(mps_device):
    value = 41
    assert value == 42, "the answer"


def test_skips(mps_device_lock):
    pytest.skip("not today")


@pytest.mark.xfail(reason="known", strict=True)
def test_xfails(mps_device_lock):
    raise ValueError("known problem")


def test_talks(mps_device_lock, record_property):
    print("to stdout")
    print("to stderr", file=sys.stderr)
    warnings.warn("careful", UserWarning)
    record_property("where", str(os.getpid()))


@pytest.mark.mps
def test_marked():
    pass
"""


def test_every_outcome_comes_back_as_if_it_ran_here(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_outcomes=OUTCOMES)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "--mps-device", "cpu", "--mps-isolate", "-p", "no:cacheprovider", "-rA", f"--junitxml={junit}"
    )
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*def test_fails(mps_device):*",
            '>       assert value == 42, "the answer"',
            "E       AssertionError: the answer",
            "*= warnings summary =*",
            "*UserWarning: careful",
            "*Captured stdout call*",
            "to stdout",
            "*Captured stderr call*",
            "to stderr",
            "SKIPPED [[]1] test_outcomes.py:*: not today",
            "XFAIL test_outcomes.py::test_xfails - known",
        ]
    )
    import xml.etree.ElementTree as ET

    case = next(c for c in ET.parse(junit).iter("testcase") if c.get("name") == "test_talks")
    where = next(p.get("value") for p in case.iter("property") if p.get("name") == "where")
    assert where != str(os.getpid())


SUITE = f"""
from pytest_mps import assert_cpu_parity


def test_parity(mps_pipeline):
    pipe = mps_pipeline({DDPM!r})
    with open("pipes.txt", "a") as out:
        out.write(f"{{id(pipe.unet)}}\\n")
    assert_cpu_parity(pipe)


def test_drifting(mps_pipeline):
    pipe = mps_pipeline({DDPM!r})
    with open("pipes.txt", "a") as out:
        out.write(f"{{id(pipe.unet)}}\\n")
    calls = []

    def drift(module, args, output):  # only the target run (its 2 steps) drifts
        calls.append(1)
        if len(calls) <= 2:
            output.sample[:, :, 8:20, 10:24] += 0.4
        return output

    handle = pipe.unet.register_forward_hook(drift)
    try:
        assert_cpu_parity(pipe)
    finally:
        handle.remove()


def test_without_device():
    pass
"""


def test_an_isolated_run_reports_what_an_in_process_run_reports(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results, images and reference counts of the worker's checks reach the table and the reports;
    the pipeline loads once in the worker and stays cached for the next test."""
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reports = {}
    for name, extra in (("in-process", ()), ("isolated", ("--mps-isolate",))):
        result = pytester.runpytest(
            "--mps-device",
            "cpu",
            "-p",
            "no:cacheprovider",
            "--mps-references",
            f"{name}/refs",
            "--mps-report-json",
            f"{name}/report.json",
            "--mps-report-html",
            f"{name}/html",
            *extra,
        )
        result.assert_outcomes(passed=2, failed=1)
        result.stdout.fnmatch_lines(["*= pytest-mps =*", "tiny-ddpm (DDPMPipeline)  cpu_parity  failed*"])
        result.stdout.fnmatch_lines(["references: 0 loaded, 2 written, 0 rewritten*"])
        reports[name] = json.loads((pytester.path / name / "report.json").read_text())
        assert len(list((pytester.path / name / "html" / "images").glob("*.png"))) == 6
    assert _stable(reports["isolated"]) == _stable(reports["in-process"])
    unets = (pytester.path / "pipes.txt").read_text().split()
    assert len(unets) == 4 and unets[2] == unets[3]  # the isolated run's second test reused the load


def _stable(report: dict) -> dict:
    """``comparable(report)`` without the localisation's timings either."""
    out = comparable(report)
    for check in out["checks"]:
        localization = check["details"].get("localization") or {}
        localization.pop("seconds", None)
        localization.pop("timings", None)
    return out


def _item(fixtures: tuple[str, ...], marker: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        fixturenames=fixtures, get_closest_marker=lambda name: object() if marker else None
    )


def test_which_tests_are_isolated() -> None:
    assert isolates(_item(("mps_pipeline",)))
    assert isolates(_item(("mps_device", "tmp_path")))
    assert isolates(_item(("mps_device_lock",)))
    assert isolates(_item(("tmp_path",), marker=True))
    assert not isolates(_item(("tmp_path", "mps_target")))
    # The bundled suite's tests have workers of their own (one per pipeline): never isolated twice.
    assert not isolates(_item(("mps_suite", "mps_suite_pipeline", "mps_device"), marker=True))


@pytest.mark.parametrize(
    ("phases", "unfinished"),
    [
        ({}, "setup"),
        ({"setup": "passed"}, "call"),
        ({"setup": "failed"}, "teardown"),
        ({"setup": "skipped"}, "teardown"),
        ({"setup": "passed", "call": "failed"}, "teardown"),
        ({"setup": "passed", "call": "passed", "teardown": "passed"}, None),
    ],
)
def test_a_dead_workers_test_is_blamed_on_the_phase_it_was_in(phases: dict, unfinished: str | None) -> None:
    assert RunOutcome(phases=phases).unfinished_phase() == unfinished


def test_crash_lines_name_the_signal_the_phase_and_the_quote() -> None:
    stderr = "noise\n.../MPSNDArray.mm:829: failed assertion `total bytes of NDArray > 2**32'\n"
    death = Death("crash", "t.py::test_x", -6, "SIGABRT", 1.25, None, 4242, stderr)
    assert crash_lines(death, when="call") == [
        "CRASH: the test process was killed by SIGABRT (signal 6): an abort (how a failed Metal/MPS "
        "assertion ends a process)",
        "it happened during the test's call (pid 4242, 1.2s in)",
        "stderr says: .../MPSNDArray.mm:829: failed assertion `total bytes of NDArray > 2**32'",
        "the session goes on: the next test that uses the device runs in a fresh process",
    ]
    hang = Death("hang", "t.py::test_x", -9, "SIGKILL", 5.1, 5.0, 4242, "")
    assert crash_lines(hang, when="setup")[:2] == [
        "HANG: the test did not finish within 5s (--mps-timeout); its process was killed",
        "it happened during the test's setup (pid 4242, 5.1s in)",
    ]
    starting = Death("exit", "starting", 4, None, 0.5, None, 4242, "ERROR: usage\n")
    assert crash_lines(starting, when="setup")[:3] == [
        "CRASH: the test process exited with status 4 without finishing the test",
        "it happened while it started (collecting the session), before running the test (pid 4242, 0.5s in)",
        "stderr says: ERROR: usage",
    ]


def test_a_check_that_crashes_its_worker_is_a_crashed_result_in_the_table_and_reports(
    pytester: pytest.Pytester,
) -> None:
    """The worker says which check starts: when it dies in it, that check (and its pipeline) is a
    ``crashed`` result, so the session table and the JSON report list it like any failed check."""
    pytester.makepyfile(
        test_crash=f"""
        import os
        from pytest_mps import assert_cpu_parity

        def test_parity_aborts(mps_pipeline):
            pipe = mps_pipeline({str(FIXTURES / "tiny-ddpm")!r})
            pipe.unet.register_forward_hook(lambda *args: os.abort())
            assert_cpu_parity(pipe)
        """
    )
    result = pytester.runpytest_subprocess(
        "--mps-device", "cpu", "--mps-isolate", "--mps-report-json", "r.json", timeout=300
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["tiny-ddpm (DDPMPipeline)  cpu_parity  crashed *", "  tiny-ddpm: fails: cpu_parity"]
    )
    (check,) = json.loads((pytester.path / "r.json").read_text())["checks"]
    assert (check["check"], check["status"], check["pipeline"]) == ("cpu_parity", "crashed", "tiny-ddpm")
    assert check["details"]["death"]["signal"] == "SIGABRT"
