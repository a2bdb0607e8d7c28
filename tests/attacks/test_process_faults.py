"""Attacks on a project's own session under ``--mps-isolate`` (issue 12, points 1 and 4): a test that
uses the device aborts like a failed Metal assertion, segfaults, hangs, exits, writes junk where the
protocol runs, is killed from outside, or crashes in a fixture; the parent is killed with ``kill -9``.
Each time the right test fails naming the signal, the session goes on in a fresh worker, the other
tests pass, and nothing is left running.

Most attacks share one of two real sessions (``python -m pytest`` on a small project, target ``cpu``:
one whose tests reach the device through torch, one whose tests only hold the device lock, so that
its many workers start cheaply): each attack test is followed by a healthy device test, and each case
reads its two tests' outcomes from the session's JUnit XML. Attacks that need a session of their own
(a hang, a worker that cannot start, the parent killed, pytest-xdist) run their own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

METAL_ASSERTION = (
    "/AppleInternal/Library/BuildRoots/0000/Library/Caches/com.apple.xbs/Sources/MetalPerformanceShaders/"
    "MPSCore/Types/MPSNDArray.mm:829: failed assertion `[MPSNDArray initWithDevice:descriptor:"
    "isTextureBacked:] Error: total bytes of NDArray > 2**32'"
)

# Every device test notes which process ran it; crashes write the Metal line natively (to fd 2, as
# Metal does), so pytest's output capture cannot swallow it.
HELPERS = f"""
import ctypes
import os
import subprocess
import sys
import time

import pytest

from pytest_mps import CheckResult, Status
from pytest_mps.plugin import session_of

METAL = {METAL_ASSERTION!r}


def ran(name):
    with open("pids.txt", "a") as out:
        out.write(f"{{name}} {{os.getpid()}}\\n")


def metal_abort():
    os.write(2, (METAL + "\\n").encode())
    os.abort()
"""

# Tests that reach the device through torch (their workers import torch before taking tests).
METAL = """
def test_plain_here():
    ran("plain_here")


def test_first(mps_device):
    ran("first")
    assert mps_device.type == "cpu"


def test_abort(mps_device):
    ran("abort")
    metal_abort()


def test_after_abort(mps_device):
    ran("after_abort")


@pytest.mark.mps
def test_marked_abort():  # the last test: nothing after it needs a fresh worker
    ran("marked_abort")
    metal_abort()
"""

# Tests that only hold the device lock (cheap workers: no torch), one healthy test after each attack.
FAULTS = """
@pytest.fixture
def aborts_in_setup():
    metal_abort()
    yield


@pytest.fixture
def aborts_in_teardown():
    yield
    metal_abort()


def test_first(mps_device_lock):
    ran("first")


def test_segfault(mps_device_lock):
    ran("segfault")
    ctypes.string_at(0)


def test_after_segfault(mps_device_lock):
    ran("after_segfault")


def test_exit(mps_device_lock):
    ran("exit")
    os._exit(3)


def test_after_exit(mps_device_lock):
    ran("after_exit")


def test_noise(mps_device_lock):
    ran("noise")
    print("{not json, on sys.stdout")
    os.write(1, b"{not json, on file descriptor 1\\n")
    sys.stdout.flush()


def test_after_noise(mps_device_lock):
    ran("after_noise")


def test_killed(mps_device_lock):
    ran("killed")
    subprocess.run(["kill", "-9", str(os.getpid())])
    time.sleep(60)


def test_after_killed(mps_device_lock):
    ran("after_killed")


def test_setup_crash(mps_device_lock, aborts_in_setup):
    ran("setup_crash")


def test_after_setup_crash(mps_device_lock):
    ran("after_setup_crash")


def test_teardown_crash(mps_device_lock, aborts_in_teardown):
    ran("teardown_crash")


def test_after_teardown_crash(mps_device_lock):
    ran("after_teardown_crash")


def test_result_then_abort(request, mps_device_lock):
    ran("result_then_abort")
    result = CheckResult(
        check="cpu_parity", status=Status.PASSED, target="cpu", pipeline="tiny-x", summary="max |diff| 0",
        nodeid=request.node.nodeid,
    )
    session_of(request.config).record(request.node, result)
    metal_abort()


def test_after_result_then_abort(request, mps_device_lock):
    ran("after_result_then_abort")
    result = CheckResult(
        check="batch", status=Status.PASSED, target="cpu", pipeline="tiny-x", summary="max |diff| 0",
        nodeid=request.node.nodeid,
    )
    session_of(request.config).record(request.node, result)
"""


@dataclass
class Session:
    """One finished run: its exit status, output, per-test outcomes and messages, and who ran what."""

    done: subprocess.CompletedProcess[str]
    outcomes: dict[str, tuple[str, str]]  # test name -> (passed | failure | error, message + text)
    pids: dict[str, int]
    folder: Path

    @property
    def out(self) -> str:
        return self.done.stdout + self.done.stderr


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTEST_ADDOPTS": "-p no:hypothesispytest", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def run_project(folder: Path, source: str, *args: str, timeout: float = 240) -> Session:
    """Run ``source`` as a project's test file with ``--mps-isolate`` on the cpu target."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_project.py").write_text(textwrap.dedent(source))
    junit = folder / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--mps-device",
        "cpu",
        "--mps-isolate",
        "-rA",
        f"--junitxml={junit}",
        *args,
    ]
    done = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, env=environment(), timeout=timeout
    )
    outcomes: dict[str, tuple[str, str]] = {}
    if junit.exists():
        for case in ET.parse(junit).iter("testcase"):
            name = str(case.get("name")).removeprefix("test_")
            kind, text = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    kind, text = child.tag, f"{child.get('message', '')}\n{child.text or ''}"
            outcomes[name] = (kind, text)
    pids: dict[str, int] = {}
    log = folder / "pids.txt"
    for line in log.read_text().splitlines() if log.exists() else []:
        name, pid = line.split()
        pids[name] = int(pid)
    return Session(done, outcomes, pids, folder)


@pytest.fixture(scope="module")
def metal(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """The shared session of the Metal-style aborts."""
    return run_project(tmp_path_factory.mktemp("metal"), HELPERS + METAL)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """The shared session of the other attacks (a JSON report too, to see that results arrive)."""
    folder = tmp_path_factory.mktemp("faults")
    return run_project(folder, HELPERS + FAULTS, f"--mps-report-json={folder / 'report.json'}")


# (the session, the attack test, the outcome it must get, words its report must contain, the healthy
# test after it)
ATTACKS = [
    pytest.param(
        "metal",
        "abort",
        "failure",
        [
            "CRASH: the test process was killed by SIGABRT (signal 6): an abort (how a failed Metal/MPS "
            "assertion ends a process)",
            f"stderr says: {METAL_ASSERTION}",
            "it happened during the test's call",
            "last Python frames: metal_abort (",
        ],
        "after_abort",
        id="metal-abort-in-a-test",
    ),
    pytest.param(
        "metal",
        "marked_abort",
        "failure",
        ["killed by SIGABRT", METAL_ASSERTION],
        None,
        id="abort-in-a-test-marked-mps",
    ),
    pytest.param(
        "faults",
        "segfault",
        "failure",
        [
            "killed by SIGSEGV (signal 11): a segmentation fault",
            "stderr says: Fatal Python error: Segmentation",
        ],
        "after_segfault",
        id="segfault",
    ),
    pytest.param(
        "faults",
        "exit",
        "failure",
        ["exited with status 3 without finishing the test"],
        "after_exit",
        id="exit-without-answer",
    ),
    pytest.param(
        "faults",
        "killed",
        "failure",
        ["killed by SIGKILL (signal 9): killed from outside"],
        "after_killed",
        id="killed-from-outside",
    ),
    pytest.param(
        "faults",
        "setup_crash",
        "error",
        ["killed by SIGABRT", "during the test's setup", "aborts_in_setup ("],
        "after_setup_crash",
        id="abort-in-fixture-setup",
    ),
    pytest.param(
        "faults",
        "teardown_crash",
        "error",
        ["killed by SIGABRT", "during the test's teardown", "aborts_in_teardown ("],
        "after_teardown_crash",
        id="abort-in-fixture-teardown",
    ),
    pytest.param(
        "faults",
        "result_then_abort",
        "failure",
        ["killed by SIGABRT", METAL_ASSERTION],
        "after_result_then_abort",
        id="abort-after-a-recorded-result",
    ),
]


@pytest.mark.parametrize(("which", "attack", "outcome", "words", "after"), ATTACKS)
def test_a_crash_fails_its_test_naming_the_signal_and_the_session_goes_on(
    request: pytest.FixtureRequest, which: str, attack: str, outcome: str, words: list[str], after: str | None
) -> None:
    session: Session = request.getfixturevalue(which)
    got, text = session.outcomes[attack]
    assert got == outcome, (attack, session.outcomes[attack], session.out[-3000:])
    for word in words:
        assert word in text, (word, text)
    assert "the session goes on: the next test that uses the device runs in a fresh process" in text
    crashed = re.search(r"\(pid (\d+), ", text)
    assert crashed is not None, text
    assert session.pids.get(attack, int(crashed[1])) == int(crashed[1])  # it ran in the worker named
    if after is not None:
        assert session.outcomes[after] == ("passed", ""), session.outcomes[after]
        assert session.pids[after] not in (int(crashed[1]), os.getpid())  # the next one in a fresh worker
    if attack == "teardown_crash":  # its call passed before the fixture's teardown aborted
        assert f"PASSED test_project.py::test_{attack}" in session.done.stdout


def test_the_sessions_end_with_every_test_accounted_for(metal: Session, faults: Session) -> None:
    for session, counts in ((metal, "2 failed, 3 passed"), (faults, "4 failed, 10 passed, 2 errors")):
        assert session.done.returncode == 1, session.out[-3000:]
        assert "INTERNALERROR" not in session.out
        assert f"{counts} in " in session.done.stdout, session.done.stdout[-2000:]
    # Tests that do not use the device ran here; healthy device tests in a row share a warm worker.
    assert metal.pids["plain_here"] != metal.pids["first"]
    assert metal.pids["first"] == metal.pids["abort"]
    assert faults.pids["first"] == faults.pids["segfault"]


def test_noise_on_stdout_and_fd_1_leaves_the_worker_answering(faults: Session) -> None:
    assert faults.outcomes["noise"] == ("passed", "")
    assert faults.outcomes["after_noise"] == ("passed", "")
    assert faults.pids["noise"] == faults.pids["after_noise"]  # the same warm worker served both
    assert "{not json, on sys.stdout" in faults.done.stdout  # captured into the test's report


def test_results_recorded_in_workers_reach_the_table_and_the_report(faults: Session) -> None:
    """Results travel in the reports; one recorded just before a crash is kept with the crash."""
    out = faults.done.stdout
    section = re.search(r"=+ pytest-mps =+", out)
    assert section is not None, out[-3000:]
    table = out[section.start() :]
    assert "tiny-x" in table and "cpu_parity" in table and "batch" in table
    report = json.loads((faults.folder / "report.json").read_text())
    checks = {(c["nodeid"].rsplit("::", 1)[-1], c["check"]) for c in report["checks"]}
    assert checks == {("test_result_then_abort", "cpu_parity"), ("test_after_result_then_abort", "batch")}


def test_the_workers_leave_the_parents_last_failed_cache_alone(faults: Session) -> None:
    lastfailed = json.loads((faults.folder / ".pytest_cache" / "v" / "cache" / "lastfailed").read_text())
    assert sorted(name.rsplit("::test_", 1)[-1] for name in lastfailed) == sorted(
        ["segfault", "exit", "killed", "setup_crash", "teardown_crash", "result_then_abort"]
    )


# --- attacks with a session of their own -----------------------------------------------------------

HANG = """
import time


def test_hang(mps_device_lock):
    time.sleep(600)


def test_after_hang(mps_device_lock):
    pass
"""


def test_a_hang_past_the_time_limit_is_killed_with_its_stack(tmp_path: Path) -> None:
    start = time.monotonic()
    run = run_project(tmp_path, HANG, "--mps-timeout", "2")
    assert time.monotonic() - start < 120
    kind, text = run.outcomes["hang"]
    assert kind == "failure", run.out[-3000:]
    assert "HANG: the test did not finish within 2s (--mps-timeout); its process was killed" in text
    assert "where it hung: test_hang (" in text
    assert run.outcomes["after_hang"] == ("passed", "")


CANNOT_START = """
import os

if os.environ.get("PYTEST_MPS_PARENT_PID"):  # only in a worker: it dies while collecting
    os.abort()


def test_a(mps_device_lock):
    pass


def test_b(mps_device_lock):
    pass


def test_c(mps_device_lock):
    pass


def test_here():
    pass
"""


def test_a_worker_that_cannot_start_fails_device_tests_and_stops_trying(tmp_path: Path) -> None:
    run = run_project(tmp_path, CANNOT_START)
    for name in ("a", "b"):
        kind, text = run.outcomes[name]
        assert kind == "error" and "killed by SIGABRT" in text and "while it started" in text, text
    kind, text = run.outcomes["c"]  # after two failed starts, no third
    assert kind == "error" and "no isolated worker: two in a row could not start" in text, text
    assert run.outcomes["here"] == ("passed", "")
    assert "1 passed, 3 errors" in run.done.stdout


SLEEPER = """
import os
import time


def test_sleeps(mps_device_lock):
    with open("worker.pid", "w") as out:
        out.write(str(os.getpid()))
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie left for a container's init to reap counts as gone
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def test_killing_the_parent_leaves_no_worker_behind(tmp_path: Path) -> None:
    (tmp_path / "test_project.py").write_text(textwrap.dedent(SLEEPER))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--mps-device",
        "cpu",
        "--mps-isolate",
        "-p",
        "no:cacheprovider",
    ]
    parent = subprocess.Popen(
        command, cwd=tmp_path, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pid_file = tmp_path / "worker.pid"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text()):
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    assert worker != parent.pid
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"the worker {worker} outlived its parent by 20 s")


XDIST = f"""
import os

METAL = {METAL_ASSERTION!r}


def test_here():
    pass


def test_first(mps_device_lock):
    pass


def test_abort(mps_device_lock):
    os.write(2, (METAL + "\\n").encode())
    os.abort()


def test_after_abort(mps_device_lock):
    pass
"""


def test_under_xdist_each_xdist_worker_isolates_its_device_tests(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    run = run_project(tmp_path, XDIST, "-n", "2")
    kind, text = run.outcomes["abort"]
    assert kind == "failure" and "killed by SIGABRT (signal 6)" in text and METAL_ASSERTION in text, text
    others = {name: run.outcomes[name][0] for name in ("here", "first", "after_abort")}
    assert others == {"here": "passed", "first": "passed", "after_abort": "passed"}
    assert "1 failed, 3 passed" in run.done.stdout


XFAIL = """
@pytest.mark.xfail(reason="a known Metal abort")
def test_xfail_abort(mps_device_lock):
    metal_abort()


@pytest.mark.xfail(reason="only this exception", raises=ValueError)
def test_xfail_other_kind(mps_device_lock):
    metal_abort()


@pytest.mark.xfail_mps(reason="aborts on MPS")
def test_xfail_mps(mps_device_lock):
    metal_abort()


def test_after(mps_device_lock):
    ran("after")
"""


@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_a_crash_an_xfail_mark_expects_is_xfailed(tmp_path: Path, device: str) -> None:
    """A crash is the test's failure: an xfail mark that runs the test and names no exception type
    expects it (XFAIL naming the signal); ``raises=`` does not match a crash; ``xfail_mps`` applies on an
    MPS-like target only."""
    session = run_project(tmp_path, HELPERS + XFAIL, "--mps-device", device)
    outcomes = {name: kind for name, (kind, _) in session.outcomes.items()}
    assert outcomes == {
        "xfail_abort": "skipped",
        "xfail_other_kind": "failure",
        "xfail_mps": "skipped" if device == "emulated" else "failure",
        "after": "passed",
    }, session.out[-3000:]
    xfailed = r"XFAIL test_project.py::test_xfail_abort - a known Metal abort \(.*SIGABRT"
    assert re.search(xfailed, session.out), session.out[-3000:]
    if device == "emulated":
        assert "XFAIL test_project.py::test_xfail_mps - [xfail_mps] aborts on MPS (" in session.out
    assert session.done.returncode == 1  # the two crashes nothing expected
