"""pytest-xdist: every worker's results reach the controller, which alone writes the reports (the same
report as a serial run) and the shared files; metrics reach JUnit XML; only one worker at a time holds
the real MPS device unless ``--mps-xdist-workers`` allows more."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_mps.reference_store import stored_entries, verify_entry
from pytest_mps.reports.atomic import TEMP_PREFIX
from pytest_mps.reports.model import comparable

from conftest import FIXTURES, REPO

pytest.importorskip("xdist")

DDPM = str(FIXTURES / "tiny-ddpm")
PLUGIN = ("-W", "default::pytest_mps.warnings.PytestMPSWarning")

SUITE = f"""
import pytest
import torch

from pytest_mps import assert_cpu_parity, default_inputs

DDPM = {DDPM!r}


def test_drifting_kernel(mps_pipeline):
    pipe = mps_pipeline(DDPM)
    calls = []

    def drift(module, args, output):  # only the target run (its 2 steps) drifts
        calls.append(1)
        if len(calls) <= 2:
            output.sample[:, :, 8:20, 10:24] += 0.4
        return output

    pipe.unet.register_forward_hook(drift)
    assert_cpu_parity(pipe)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity(mps_pipeline, seed):
    pipe = mps_pipeline(DDPM)
    assert_cpu_parity(pipe, default_inputs(pipe, seed=seed))
    assert_cpu_parity(pipe, default_inputs(pipe, seed=seed))  # two checks in one test


def test_without_checks():
    pass
"""


def junit_properties(path: Path) -> dict[str, list[str]]:
    tree = ET.parse(path)
    out: dict[str, list[str]] = {}
    for case in tree.iter("testcase"):
        names = [p.get("name", "") for p in case.iter("property")]
        out[f"{case.get('classname')}::{case.get('name')}"] = names
    return out


def test_xdist_report_equals_serial_report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two workers on few cores: no oversubscription
    runs = {}
    for name, extra in (("serial", ()), ("xdist", ("-n", "2"))):
        result = pytester.runpytest(
            *PLUGIN,
            "--mps-device",
            "cpu",
            "--mps-references",
            f"{name}/refs",
            "--mps-report-json",
            f"{name}/report.json",
            "--mps-report-html",
            f"{name}/html",
            "--junitxml",
            f"{name}/junit.xml",
            *extra,
        )
        result.assert_outcomes(passed=4, failed=1)
        runs[name] = json.loads((pytester.path / name / "report.json").read_text())
    serial, xdist = runs["serial"], runs["xdist"]
    assert xdist["sources"][0]["xdist_workers"] == 2 and serial["sources"][0]["xdist_workers"] == 0
    assert len(serial["checks"]) == 7
    assert comparable(xdist) == comparable(serial)
    # the controller printed the session table from the workers' results
    result.stdout.fnmatch_lines(["*= pytest-mps =*", "tiny-ddpm (DDPMPipeline)  cpu_parity  failed*"])
    for name in runs:
        folder = pytester.path / name
        # images sent by the workers, written once by the controller
        assert len(list((folder / "html" / "images").glob("*.png"))) == 21
        # shared files: whole, verified references; no temporary file left anywhere
        entries = stored_entries(folder / "refs")
        # 3 hook-free pipeline states + the drifting test's hooked one (hooks are part of the key)
        assert len(entries) == 4 and all(verify_entry(e) is None for e in entries)
        assert not [p for p in folder.rglob(f"{TEMP_PREFIX}*")]
        # metrics reach JUnit XML through the report properties
        properties = junit_properties(folder / "junit.xml")
        assert properties["test_suite::test_parity[0]"].count("pytest_mps_result") == 2
        assert "mps:cpu_parity:target_vs_cpu:max_abs" in properties["test_suite::test_drifting_kernel"]
        assert properties["test_suite::test_without_checks"] == []


LOCK_CONFTEST = """
import os

from pytest_mps.target import Target

if os.environ.get("PYTEST_XDIST_WORKER"):  # workers only: pretend the target is real MPS
    Target.is_real_mps = property(lambda self: True)
"""

LOCK_TESTS = """
import json, os, time

import pytest

LOG = os.environ["LOCK_LOG"]


@pytest.mark.mps
@pytest.mark.parametrize("i", range(4))
def test_on_device(i):
    start = time.time()
    time.sleep(0.15)
    with open(LOG, "a") as handle:
        handle.write(json.dumps([os.environ["PYTEST_XDIST_WORKER"], start, time.time()]) + "\\n")


@pytest.mark.parametrize("i", range(2))
def test_own_fixture(mps_device_lock, i):
    start = time.time()
    time.sleep(0.15)
    with open(LOG, "a") as handle:
        handle.write(json.dumps([os.environ["PYTEST_XDIST_WORKER"], start, time.time()]) + "\\n")
"""


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1])
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_one_worker_at_a_time_on_real_mps(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, tests that use the (pretended real) MPS device: never two at once by default."""
    pytester.makeconftest(LOCK_CONFTEST)
    pytester.makepyfile(test_lock=LOCK_TESTS)
    log = pytester.path / "log.jsonl"
    monkeypatch.setenv("LOCK_LOG", str(log))
    result = pytester.runpytest(*PLUGIN, "--mps-device", "cpu", "-n", "2")
    result.assert_outcomes(passed=6)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert {row[0] for row in rows} == {"gw0", "gw1"}  # both workers ran tests...
    assert most_at_once([(row[1], row[2]) for row in rows]) == 1  # ...one at a time


HOLDER = """
import json, sys, time
from pathlib import Path
from pytest_mps.plugin.xdist import DeviceLock

folder, slots, slot, hold, log = sys.argv[1:]
lock = DeviceLock(Path(folder), slots=int(slots), slot=int(slot))
with lock.hold():
    with lock.hold():  # re-entrant: a check inside a locked test does not wait for itself
        start = time.time()
        time.sleep(float(hold))
        end = time.time()
with open(log, "a") as handle:
    handle.write(json.dumps([start, end]) + "\\n")
"""


@pytest.mark.parametrize(("slots", "expected"), [(1, 1), (2, 2)])
def test_device_lock_slots(tmp_path: Path, slots: int, expected: int) -> None:
    """``--mps-xdist-workers N``: N places; 3 processes holding the lock for 0.4 s each."""
    log = tmp_path / "log.jsonl"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(slots), str(i), "0.4", str(log)],
            cwd=REPO,
        )
        for i in range(3)
    ]
    assert all(p.wait(timeout=60) == 0 for p in processes)
    intervals = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert len(intervals) == 3
    assert most_at_once(intervals) <= expected
    if expected == 1:
        assert most_at_once(intervals) == 1


def test_device_lock_is_a_no_op_outside_workers(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            """
            import contextlib
            from pytest_mps.plugin.xdist import device_lock

            def pytest_sessionfinish(session):
                lock = device_lock(session.config)
                print("\\nLOCK", type(lock).__name__)
            """
        )
    )
    pytester.makepyfile("def test_a(mps_device_lock):\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--mps-device", "cpu", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOCK nullcontext*"])


def test_bad_worker_count_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--mps-xdist-workers", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --mps-xdist-workers: '-1': must be 0 (no limit) or more*"])


def _library_warning_lines(out: str) -> list[str]:
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if "warnings raised inside libraries during checks" in line]
    if not heads:
        return []
    block = []
    for line in lines[heads[0] + 2 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


def test_library_warnings_of_workers_reach_the_controllers_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warnings raised inside libraries during the bundled suite's checks in pytest-xdist workers are
    listed once by the controller, as in a serial run (the scheduler sweep meets numpy-2 deprecations
    inside Diffusers)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    suite = ("--pyargs", "pytest_mps.suite", "--mps-pipelines", DDPM, "--mps-device", "cpu")
    checks = ("-k", "schedulers or cpu_parity")
    serial = pytester.runpytest(*suite, *checks)
    serial.assert_outcomes(passed=2)
    shown = _library_warning_lines(serial.stdout.str())
    if not shown:
        pytest.skip("this numpy and Diffusers raise no warning during the sweep")
    xdist = pytester.runpytest(*suite, *checks, "-n", "2")
    xdist.assert_outcomes(passed=2)
    assert sorted(_library_warning_lines(xdist.stdout.str())) == sorted(shown)
