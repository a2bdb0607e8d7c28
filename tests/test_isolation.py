"""Crash isolation: a worker that aborts, segfaults, hangs or exits becomes a failed check that says so
(the signal, the quoted assertion, the Python frames), and the session goes on to print the table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_mps.isolation import (
    Death,
    IsolatedRunner,
    Worker,
    WorkerPool,
    crash_quote,
    python_frames,
)
from pytest_mps.metrics import Comparison
from pytest_mps.results import CheckResult
from pytest_mps.suite import PipelineSpec, SuiteSettings
from pytest_mps.target import Target
from pytest_mps.tolerances import resolve_tolerance
from pytest_mps.verdict import Status

from conftest import FIXTURES
from crashprobe import crash_probe

# A load request the worker answers without importing torch or diffusers: the device is refused first.
CHEAP_LOAD = {
    "op": "load",
    "spec": {"path": str(FIXTURES / "tiny-ddpm"), "label": "tiny-ddpm"},
    "settings": {"device": "no-such-device"},
}


def _worker(probe: str = "") -> Worker:
    return Worker(preload=False, env={crash_probe.ENV_VARIABLE: probe, "PYTHONPATH": crash_probe.FOLDER})


# --- one worker, no torch ------------------------------------------------------------------------


def test_a_healthy_worker_answers_in_json_despite_noise_on_stdout() -> None:
    worker = _worker("load=noise")
    try:
        got = worker.request(CHEAP_LOAD, timeout=60, doing="load")
        assert not isinstance(got, Death), got
        assert "noise on sys.stdout" in worker.stderr_since() and "noise on fd 1" in worker.stderr_since()
        outcome = got["outcome"]["result"]
        assert outcome["check"] == "load" and outcome["outcome"] == "failed"
        assert "unknown target device 'no-such-device'" in outcome["failures"][0]
        assert worker.ready is not None and worker.ready["pid"] == worker.pid
    finally:
        worker.close()
    assert not worker.alive


@pytest.mark.parametrize(
    ("kind", "signal_name", "quoted"),
    [
        (
            "abort",
            "SIGABRT",
            "failed assertion `[MPSNDArray initWithDevice:descriptor:isTextureBacked:] Error: ",
        ),
        ("segfault", "SIGSEGV", "Fatal Python error: Segmentation fault"),
    ],
)
def test_a_worker_killed_by_a_signal_is_a_crash_naming_it(kind: str, signal_name: str, quoted: str) -> None:
    worker = _worker(f"load={kind}")
    got = worker.request(CHEAP_LOAD, timeout=60, doing="load")
    worker.close()
    assert isinstance(got, Death)
    assert got.kind == "crash" and got.signal == signal_name and got.returncode is not None
    assert got.returncode < 0
    assert got.quote is not None and quoted in got.quote
    assert got.cell() == f"CRASH {signal_name}"
    lines = got.lines()
    assert lines[0].startswith(f"the worker process running load was killed by {signal_name}")
    assert any(line.startswith("last Python frames: ") and "crash_probe.py" in line for line in lines)
    assert quoted.split("`")[0] in got.stderr  # the full stderr is kept


def test_a_worker_that_stops_answering_is_killed_as_hung_with_its_stack() -> None:
    worker = _worker("load=hang")
    start = time.perf_counter()
    got = worker.request(CHEAP_LOAD, timeout=1.5, doing="load")
    worker.close()
    assert time.perf_counter() - start < 30
    assert isinstance(got, Death) and got.kind == "hang" and got.timeout == 1.5
    assert got.cell() == "HANG >1.5s"
    assert got.lines()[0].startswith("load did not finish within 1.5s (--mps-timeout): the worker (pid ")
    if sys.platform != "win32":  # the stack comes from faulthandler on SIGUSR1
        assert any(line.startswith("where it hung: _hang (") for line in got.lines())
    assert not worker.alive


def test_a_worker_that_exits_without_answering() -> None:
    worker = _worker("load=exit")
    got = worker.request(CHEAP_LOAD, timeout=60, doing="load")
    worker.close()
    assert isinstance(got, Death) and got.kind == "exit" and got.returncode == 3
    assert got.quote == "crash probe: leaving with status 3"
    # A dead worker stays dead: later requests get the same answer at once.
    assert worker.request(CHEAP_LOAD, timeout=60, doing="load") is got


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for a container's init to reap counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def test_a_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """``kill -9`` of the process that started a worker (a ``pytest-mps check`` run, say) leaves no
    orphan: the worker notices its parent is gone and leaves, even in the middle of a request."""
    import signal

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from pytest_mps.isolation import Worker\n"
        "w = Worker(preload=False)\n"
        "assert w.wait_ready()\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(worker_pid):
        time.sleep(0.1)
    if _alive(worker_pid):
        os.kill(worker_pid, signal.SIGKILL)
        pytest.fail(f"worker {worker_pid} outlived its parent by 20 s")


def test_a_pool_hands_out_its_spare_first() -> None:
    pool = WorkerPool(preload=False)
    pool.prewarm()
    spare = pool._spare
    assert spare is not None
    taken = pool.take()
    assert taken is spare and pool._spare is None
    other = pool.take()
    assert other is not spare and pool.started == 2
    for worker in (taken, other):
        worker.close(graceful=False)
    pool.close()


def test_a_worker_alive_after_one_pipeline_serves_the_next_and_a_dead_one_never(tmp_path: Path) -> None:
    """torch and diffusers are imported once per run: the worker that checked one pipeline loads the
    next (the previous pipeline is dropped first); a worker that died is replaced, never reused."""
    import shutil

    other = tmp_path / "other-ddpm"
    shutil.copytree(FIXTURES / "tiny-ddpm", other)
    pool = WorkerPool(preload=False)
    settings = SuiteSettings(device="cpu", steps=1)
    target = Target("cpu", "cpu")
    pids = []
    try:
        for path, label in ((FIXTURES / "tiny-ddpm", "tiny-ddpm"), (other, "other-ddpm")):
            runner = IsolatedRunner(
                PipelineSpec(str(path), label), settings, target=target, timeout=120, pool=pool
            )
            try:
                outcome = runner.check("inference")
                assert outcome.result.status is Status.PASSED, outcome.result.summary
                assert outcome.result.pipeline == label
                assert runner._worker is not None
                pids.append(runner._worker.pid)
            finally:
                runner.close()
        assert pids[0] == pids[1] and pool.started == 1 and pool.reused == 1
        survivor = pool.take()
        assert survivor.pid == pids[0] and pool.reused == 2
        survivor.close(graceful=False)  # it dies (killed): given back, it is not kept
        pool.give_back(survivor)
        fresh = pool.take()
        assert fresh is not survivor and pool.started == 2 and pool.reused == 2
        fresh.close(graceful=False)
    finally:
        pool.close()


def test_a_runner_reports_a_load_that_fails_and_skips_the_rest() -> None:
    runner = IsolatedRunner(
        PipelineSpec(str(FIXTURES / "tiny-ddpm"), "tiny-ddpm"),
        SuiteSettings(device="no-such-device"),
        target=Target("cpu", "cpu"),
        timeout=60,
        pool=WorkerPool(preload=False),
    )
    try:
        first = runner.load()
        assert first.result is not None and not first.result.passed
        assert first.result.pipeline == "tiny-ddpm"
        later = runner.check("cpu_parity")
        assert later.result.status.value == "skipped"
        assert later.result.summary.startswith("tiny-ddpm did not load: ")
        assert runner.workers == 1
    finally:
        runner.close()


# --- reading stderr --------------------------------------------------------------------------------

FAULTHANDLER_DUMP = """\
some warning
Fatal Python error: Aborted

Thread 0x00007f01 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait

Current thread 0x00007f02 (most recent call first):
  File "/x/site-packages/diffusers/models/attention_processor.py", line 1200 in __call__
  File "/x/site-packages/torch/nn/modules/module.py", line 1750 in _call_impl
  File "/x/site-packages/diffusers/models/unets/unet_2d.py", line 300 in forward
  File "/x/site-packages/torch/nn/modules/module.py", line 1740 in _wrapped_call_impl

Extension modules: torch._C (total: 1)
"""


def test_quotes_prefer_the_assertion_line() -> None:
    metal = f"noise\n{crash_probe.METAL_ASSERTION}\n{FAULTHANDLER_DUMP}"
    assert crash_quote(metal) == crash_probe.METAL_ASSERTION
    assert crash_quote("a.out: x.c:3: main: Assertion `n < 4' failed.\n") == (
        "a.out: x.c:3: main: Assertion `n < 4' failed."
    )
    cpp = "libc++abi: terminating due to uncaught exception of type std::runtime_error: boom\n"
    assert crash_quote(cpp) == cpp.strip()
    assert crash_quote(FAULTHANDLER_DUMP) == "Fatal Python error: Aborted"
    assert crash_quote("just a warning\n") is None


def test_python_frames_come_from_the_current_thread_innermost_first() -> None:
    assert python_frames(FAULTHANDLER_DUMP) == [
        "__call__ (diffusers/models/attention_processor.py:1200)",
        "_call_impl (torch/nn/modules/module.py:1750)",
        "forward (diffusers/models/unets/unet_2d.py:300)",
    ]
    assert python_frames("no dump here") == []


def test_results_cross_the_process_boundary_intact() -> None:
    comparison = Comparison(
        max_abs=0.5,
        mean_abs=0.1,
        rms_255=3.0,
        cosine_distance=1e-3,
        psnr=float("inf"),
        pixel_fraction=0.25,
        worst_index=(0, 1, 2, 0),
        worst_target=0.9,
        worst_reference=0.4,
        shape=(1, 4, 4, 3),
    )
    original = CheckResult(
        check="cpu_parity",
        status=Status.FAILED,
        target="cpu (stand-in for mps: CPU against CPU, a dry run)",
        real_mps=False,
        pipeline="tiny-ddpm",
        summary="max |diff| 0.5",
        failures=["max |diff| 0.5 exceeds atol 0.03"],
        comparisons={"target vs cpu": comparison},
        tolerance=resolve_tolerance("cpu_parity", ini={"atol": 0.1}),
        timings={"target": 0.01, "cpu": 0.02},
        details={"reference": "computed", "nested": {"a": [1, 2]}},
        nodeid="x::y",
    )
    rebuilt = CheckResult.from_dict(original.to_dict())
    assert rebuilt.to_dict() == original.to_dict()
    assert rebuilt.report() == original.report()


# --- a whole session with crashes ------------------------------------------------------------------

CRASHES = "cpu_parity=abort,batch=segfault,determinism=hang"
SOME_CHECKS = "load,inference,cpu_parity,batch,attention_slicing,determinism"


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("pytest-mps")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pytest_mps"]


@pytest.fixture(scope="module")
def crashed_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``pytest-mps check`` run on tiny-ddpm whose workers abort, segfault and hang on purpose."""
    junit = tmp_path_factory.mktemp("crashes") / "junit.xml"
    env = {**os.environ, crash_probe.ENV_VARIABLE: CRASHES, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (crash_probe.FOLDER, env.get("PYTHONPATH", "")) if p)
    command = [
        *console_script(),
        "check",
        str(FIXTURES / "tiny-ddpm"),
        "--timeout",
        "5",
        "--checks",
        SOME_CHECKS,
        f"--junitxml={junit}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    return done, junit


def test_crashes_fail_their_checks_and_the_session_goes_on(crashed_session) -> None:
    done, _ = crashed_session
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "Traceback" not in out
    assert "3 failed, 3 passed, 5 deselected" in out
    assert "::test_attention_slicing[tiny-ddpm] PASSED" in out  # after two crashes, in a fresh worker
    table = out[out.index("pytest-mps verdict") :]
    row = next(line for line in table.splitlines() if line.startswith("tiny-ddpm "))
    for cell in ("CRASH SIGABRT", "CRASH SIGSEGV", "HANG >5s"):
        assert cell in row
    assert row.endswith("fails: cpu_parity, batch, determinism")


def test_crash_reports_name_the_signal_quote_the_assertion_and_attach_stderr(crashed_session) -> None:
    out = crashed_session[0].stdout
    abort = out[out.index("_ test_cpu_parity[tiny-ddpm] _") : out.index("_ test_batch[tiny-ddpm] _")]
    assert "the worker process running cpu_parity was killed by SIGABRT (signal 6)" in abort
    assert "stderr says: " + crash_probe.METAL_ASSERTION in abort
    assert "Captured worker stderr call" in abort and "Current thread" in abort
    segv = out[out.index("_ test_batch[tiny-ddpm] _") : out.index("_ test_determinism[tiny-ddpm] _")]
    assert "killed by SIGSEGV (signal 11)" in segv and "Fatal Python error: Segmentation fault" in segv
    hang = out[out.index("_ test_determinism[tiny-ddpm] _") :]
    assert "determinism did not finish within 5s (--mps-timeout)" in hang
    assert "where it hung: _hang (" in hang and "crash_probe.py:" in hang


def test_junit_keeps_the_worker_stderr(crashed_session) -> None:
    import xml.etree.ElementTree as ET

    tree = ET.parse(crashed_session[1])
    case = next(c for c in tree.iter("testcase") if c.get("name") == "test_cpu_parity[tiny-ddpm]")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert crash_probe.METAL_ASSERTION in str(props["mps:worker_stderr"])
    assert props["mps:cpu_parity:outcome"] == "crashed"


def test_isolated_workers_use_the_sessions_reference_store(tmp_path: Path) -> None:
    """Worker processes store the CPU references in the session's folder and find them next time; the
    session's summary line counts what they did."""
    refs = tmp_path / "refs"
    command = [
        *console_script(),
        "check",
        str(FIXTURES / "tiny-ddpm"),
        "--checks",
        "load,cpu_parity",
        "--",
        "--mps-references",
        str(refs),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "crash isolation on" in first.stdout
    assert len(list(refs.glob("*.safetensors"))) == 1
    assert "references: 0 loaded, 1 written, 0 rewritten" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "references: 1 loaded, 0 written, 0 rewritten" in second.stdout


def test_emulated_device_notes_of_isolated_workers_reach_the_summary() -> None:
    """A CPU fallback the emulated device notes inside a worker's check is listed in the run's summary
    (the command's own process, which runs no check, has no emulated device of its own)."""
    env = {**os.environ, crash_probe.ENV_VARIABLE: "inference=fallback", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (crash_probe.FOLDER, env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "pytest_mps", "check", str(FIXTURES / "tiny-ddpm")]
    command += ["--device", "emulated", "--checks", "load,inference"]
    env["PYTORCH_ENABLE_MPS_FALLBACK"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    start = lines.index("emulated-MPS notes (no error on a Mac, but slower or less portable):")
    assert lines[start + 1].startswith("  fallback: ") and "adaptive_avg_pool3d" in lines[start + 1]
    # Without the fallback variable the same op is MPS's NotImplementedError, a failure of the check.
    env.pop("PYTORCH_ENABLE_MPS_FALLBACK")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "emulated-MPS notes" not in done.stdout
    assert "is not currently implemented for the MPS device" in done.stdout
