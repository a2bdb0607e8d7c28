"""``pytest-mps check``: the verdict table on the bundled tiny pipelines, planted faults named by their
check, bad input as one line, pytest's options passing through, and the suite under plain pytest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from pytest_mps import cli
from pytest_mps.registry import CHECKS, required_checks
from pytest_mps.suite import Loaded, Outcome, PipelineSpec, SuiteSettings, run_suite_check
from pytest_mps.verdict import pipeline_verdict

from conftest import FIXTURES

TINY = ("tiny-sd", "tiny-ddpm", "tiny-dit")
STANDIN_HEAD = "a pre-check on a stand-in, not an MPS verdict; no badge is awarded"


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("pytest-mps")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pytest_mps"]


def run_cli(*args: str, timeout: float = 300, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **environ}  # 2 cores: no OpenMP spinning against the worker
    env.pop("PYTEST_MPS_CRASH_PROBE", None)
    return subprocess.run(
        [*console_script(), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def table_of(out: str) -> list[str]:
    return out[out.index("pytest-mps verdict") :].splitlines()


def row_of(out: str, label: str) -> str:
    return next(line for line in table_of(out) if line.startswith(f"{label} "))


@pytest.fixture
def one_thread() -> object:
    """In-process runs use one intra-op thread: on a shared 2-core machine OpenMP's spinning threads
    can make a 10 ms call take a second."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the newcomer's command ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``pytest-mps check`` on the three tiny pipelines, once, with a JUnit report passed through."""
    junit = tmp_path_factory.mktemp("bundled") / "junit.xml"
    done = run_cli("check", *(str(FIXTURES / name) for name in TINY), f"--junitxml={junit}")
    return done, junit


def test_the_bundled_pipelines_pass_as_a_standin_precheck(bundled) -> None:
    done, _ = bundled
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "30 passed" in out and "Traceback" not in out
    table = table_of(out)
    assert STANDIN_HEAD in table[1]
    header = table[2].split()
    assert header == ["pipeline", *(c for c in CHECKS if c != "explore"), "verdict"]  # explore: off
    for name in TINY:
        row = row_of(out, name)
        assert "FAIL" not in row and "CRASH" not in row
        assert row.endswith(("pre-check passed (emulated)", "pre-check passed (cpu stand-in)"))
    assert "earns the MPS badge" not in out


def _cells(line: str) -> list[str]:
    """A table row's cells, with the figures that vary from run to run masked: load seconds, speed, and
    differences below 1e-4 (their last digits follow the number of threads)."""
    cells = re.split(r"\s{2,}", line.strip())
    cells = [re.sub(r"^(ok|info) \d+\.\d+(s|x)$", r"\1 <\2>", cell) for cell in cells]
    return [re.sub(r"\d\.\d+e-0[5-9]", "<1e-4", cell) for cell in cells]


def test_the_readme_shows_what_the_bundled_run_prints(bundled) -> None:
    """The README's example output of its main command matches a real run of it (the header lines, the
    table's columns and cells, the verdicts), but for the load seconds and speed ratios."""
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```\n(mps: .*?)```", readme, re.S)
    assert block, "the README lost the example output of pytest-mps check"
    shown = [line for line in block.group(1).splitlines() if line.strip() and line != "..."]
    out = bundled[0].stdout.splitlines()
    assert [line.split(" | ")[0] for line in shown[:3]] == [line.split(" | ")[0] for line in out[:3]]
    assert shown[1:3] == out[1:3]  # the plan lines
    table = table_of(bundled[0].stdout)[1:]
    table = table[: next(i for i, line in enumerate(table) if line.startswith("speed is information")) + 1]
    run_rows = [_cells(line) for line in table if line.strip() and not line.startswith("---")]
    readme_rows = [_cells(line) for line in shown[3:] if not line.startswith("---")]
    assert readme_rows == run_rows


def test_the_run_shows_progress_and_says_it_is_a_standin(bundled) -> None:
    out = bundled[0].stdout
    assert "mps check: 3 pipeline(s): tiny-sd, tiny-ddpm, tiny-dit | target " in out
    assert "a pre-check, never an MPS verdict" in out
    assert "crash isolation on (a worker process, a fresh one after a crash; 600s limit per check)" in out
    assert "test_compat.py::test_load[tiny-sd] PASSED" in out  # -v: one line per check as it runs
    assert "speed is information only on a stand-in" in out


def test_junit_xml_carries_the_results(bundled) -> None:
    tree = ET.parse(bundled[1])
    cases = list(tree.iter("testcase"))
    assert len(cases) == 30
    parity = next(c for c in cases if c.get("name") == "test_cpu_parity[tiny-ddpm]")
    props = {p.get("name"): p.get("value") for p in parity.iter("property")}
    assert props["mps_suite"] == "tiny-ddpm::cpu_parity"
    result = json.loads(str(props["pytest_mps_result"]))
    assert result["status"] == "passed" and result["check"] == "cpu_parity"
    assert result["pipeline"] == "tiny-ddpm" and result["pipeline_class"] == "DDPMPipeline"
    assert result["real_mps"] is False


# --- planted faults --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of tiny-ddpm with one fault each."""
    root = tmp_path_factory.mktemp("faulty")

    def copy(name: str) -> tuple[Path, Path]:
        folder = root / name
        shutil.copytree(FIXTURES / "tiny-ddpm", folder)
        return folder, folder / "unet" / "diffusion_pytorch_model.safetensors"

    _, weights = copy("nan-weights")
    state = load_file(weights)
    state["conv_out.weight"] = torch.full_like(state["conv_out.weight"], float("nan"))
    save_file(state, weights)
    folder, _ = copy("bad-scheduler")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "bogus"}))
    folder, weights = copy("bin-only")
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    _, weights = copy("corrupt")
    weights.write_bytes(weights.read_bytes()[:1000])
    return root


def test_planted_faults_fail_and_the_table_says_they_fail_on_the_cpu_too(
    faulty: Path, capsys: pytest.CaptureFixture[str], one_thread: object
) -> None:
    """NaN weights and a bogus scheduler config break the pipeline everywhere: each failing check is
    re-run on the CPU, fails there too, and is labelled "not an MPS problem" (the run still fails)."""
    folders = [str(faulty / n) for n in ("nan-weights", "bad-scheduler")]
    status = cli.main(["check", *folders, "--no-isolate", "--checks", "load,inference,cpu_parity,schedulers"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "Traceback" not in out
    nan_row = row_of(out, "nan-weights")
    assert nan_row.endswith(
        "inference, cpu_parity, schedulers fail on the CPU too (not an MPS problem); "
        "no MPS-specific failure (emulated); not run: batch, attention_slicing, determinism, float16, speed"
    )
    assert "cpu-too NaN" in nan_row and "FAIL" not in nan_row
    assert "nan-weights inference, cpu_parity: fails on the CPU too (target output contains NaN/Inf" in out
    bad_row = row_of(out, "bad-scheduler")
    assert "cpu-too ValueError" in bad_row and "FAIL" not in bad_row
    assert "prediction_type given as bogus must be one of" in out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bin-only", "refusing to unpickle them (it can run code)"),
        ("corrupt", "a safetensors file is corrupt or truncated"),
    ],
)
def test_unsafe_or_corrupt_weights_are_bad_input(
    faulty: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    status = cli.main(["check", str(faulty / name), "--no-isolate"])
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("pytest-mps check: error: ")


def test_pickled_weights_load_when_the_user_opts_in(
    faulty: Path, capsys: pytest.CaptureFixture[str], one_thread: object
) -> None:
    folder = str(faulty / "bin-only")
    status = cli.main(["check", folder, "--no-isolate", "--allow-pickle", "--checks", "load,inference"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert row_of(out, "bin-only").startswith("bin-only  ok ")


# --- bad input: one line, exit status 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["fixtures/no-such-pipeline"],
            "pipeline folder fixtures/no-such-pipeline does not exist; check the path",
        ),
        (["pytest_mps"], "pytest_mps is not a Diffusers pipeline folder (no model_index.json)"),
        (
            ["fixtures/tiny-ddpm", "--device", "metal"],
            "argument --device: unknown target device 'metal'; choose one of auto, mps,",
        ),
        (["fixtures/tiny-ddpm", "--device", "mps"], "--device mps: MPS is unavailable: "),
    ],
)
def test_bad_input_is_one_line_from_the_console_script(args: list[str], message: str) -> None:
    done = subprocess.run(
        [*console_script(), "check", *args], capture_output=True, text=True, timeout=120, cwd=FIXTURES.parent
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pytest-mps check: error: ") and message in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--schedulers", "EulerDiscrete"],
            "unknown scheduler 'EulerDiscrete'; did you mean EulerDiscreteScheduler",
        ),
        (["--checks", "parity"], "argument --checks: unknown check 'parity'"),
        (["--checks", "parity"], "choose from load, inference, cpu_parity"),
        (["--steps", "x"], "argument --steps: 'x' is not a whole number of steps"),
        (["--steps", "0"], "argument --steps: '0': needs at least 1 step"),
        (["--timeout", "nan"], "argument --timeout: 'nan' is not a number of seconds (it must be finite)"),
        (["--timeout", "-1"], "argument --timeout: '-1': give seconds, or 0 for no limit"),
        (["--size", "4"], "argument --size: '4': give a side of at least 8 pixels"),
        (
            ["--frob", "out.xml"],
            "pipeline folder out.xml does not exist; check the path (if it is the value",
        ),
    ],
)
def test_bad_options_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(FIXTURES / "tiny-ddpm"), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "pytest-mps check fixtures/tiny-sd fixtures/tiny-ddpm fixtures/tiny-dit" in capsys.readouterr().out
    assert cli.main(["check"]) == 2
    assert "give at least one pipeline folder" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_is_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_mps", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("pytest-mps ")


def test_check_loads_the_plugin_without_plugin_autoload() -> None:
    """``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` (set by some CI images): the command names the plugin itself."""
    done = run_cli(
        "check",
        str(FIXTURES / "tiny-ddpm"),
        "--device",
        "cpu",
        "--checks",
        "load",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_check_names_the_plugin_module_where_no_entry_point_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run from a checkout (``PYTHONPATH=.``, as on a machine it was copied to): no ``mps`` entry point,
    so pytest would not load the plugin, and ``--mps-*`` would be unknown arguments."""
    import importlib.metadata

    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    assert cli.plugin_arguments() == []  # installed here
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert cli.plugin_arguments() == ["-p", "pytest_mps.plugin"]


def test_words_for_pytest_are_told_apart_from_pipeline_folders() -> None:
    ours, paths, passthrough = cli._split(
        [
            "a",
            "-x",
            "b",
            "--steps",
            "3",
            "-k",
            "parity",
            "--junitxml=j.xml",
            "--size=64",
            "c",
            "--",
            "-q",
            "d",
        ]
    )
    assert paths == ["a", "b", "c"]
    assert ours == ["--steps", "3", "--size=64"]
    assert passthrough == ["-x", "-k", "parity", "--junitxml=j.xml", "-q", "d"]


# --- the suite under a project's own pytest --------------------------------------------------------


def test_the_suite_runs_under_plain_pytest_with_k(pytester: pytest.Pytester, one_thread: object) -> None:
    result = pytester.runpytest(
        "--pyargs",
        "pytest_mps.suite",
        "--mps-pipelines",
        str(FIXTURES / "tiny-ddpm"),
        "--mps-device",
        "cpu",
        "-k",
        "parity",
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "test_cpu_parity[tiny-ddpm] PASSED" in out or "1 passed, 10 deselected" in out
    assert "crash isolation off (a crash on the target ends the session)" in out
    row = row_of(out, "tiny-ddpm")
    assert row.split()[1:3] == ["ok", "0"]
    assert row.endswith(
        "pre-check passed (cpu stand-in); not run: "
        + ", ".join(n for n in required_checks() if n != "cpu_parity")
    )


def test_no_pipelines_is_a_skip_with_the_reason(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--pyargs", "pytest_mps.suite", "-rs")
    result.assert_outcomes(skipped=10)
    result.stdout.fnmatch_lines(["*no pipelines to check: pass --mps-pipelines PATH*"])


def test_loading_the_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import sys\n\ndef test_a():\n    assert 'torch' not in sys.modules\n")
    result = pytester.runpytest_subprocess("--mps-checks", "cpu_parity")
    result.assert_outcomes(passed=1)


# --- the verdict: only real MPS earns the badge ----------------------------------------------------


def _all_ok(*, real_mps: bool = True, speed: float = 2.5, target: str = "mps") -> list[dict[str, Any]]:
    results = [
        {"check": name, "status": "passed", "real_mps": real_mps, "target": target}
        for name in required_checks()
    ]
    next(r for r in results if r["check"] == "speed")["figure"] = speed
    return results


def test_only_real_mps_with_every_check_and_a_speedup_earns_the_badge() -> None:
    from pytest_mps.target import Target

    assert pipeline_verdict(_all_ok()).text == "earns the MPS badge (2.50x faster than the CPU)"
    assert pipeline_verdict(_all_ok()).badge
    slow = _all_ok(speed=0.8)
    next(r for r in slow if r["check"] == "speed")["status"] = "failed"
    assert pipeline_verdict(slow).text == "fails: speed (0.80x the CPU's speed)"
    partial = [r for r in _all_ok() if r["check"] != "float16"]
    assert pipeline_verdict(partial).text.startswith("no badge yet: float16 not run")
    assert not pipeline_verdict(partial).badge
    for name, kind in (("emulated", "emulated"), ("cuda", "cuda stand-in"), ("cpu", "cpu stand-in")):
        verdict = pipeline_verdict(_all_ok(real_mps=False, target=Target(name, name).label))
        assert verdict.text == f"pre-check passed ({kind})" and not verdict.badge


class _SlowMPS:
    """A stand-in that calls itself real MPS and is slower than the CPU (its synchronize sleeps)."""

    name = "mps"
    label = "mps"
    is_real_mps = True
    is_mps_like = True
    available = True
    device_type = "cpu"  # where its tensors really are

    def synchronize(self) -> None:
        import time

        time.sleep(0.2)


def test_a_pipeline_no_faster_than_the_cpu_fails_the_speed_check_on_mps(one_thread: object) -> None:
    from pytest_mps.input_spec import InputSpec
    from pytest_mps.pipelines import load_pipeline, prepare_pipeline
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult

    pipe = prepare_pipeline(load_pipeline(FIXTURES / "tiny-ddpm"))
    settings = SuiteSettings(device="mps")
    target: Any = _SlowMPS()
    loaded = Loaded(
        PipelineSpec("x", "tiny-ddpm"),
        settings,
        target,
        Outcome(CheckResult("load")),
        pipe,
        inputs=InputSpec(),
        references=ReferenceCache(),
    )
    result = run_suite_check("speed", loaded).result
    assert result.status.value == "failed"
    assert result.failures[0].startswith("MPS is no faster than the CPU: 0.")
    assert result.details["judged"] is True and result.details["speedup"] < 1.0


def test_check_starts_its_worker_before_validating_and_stops_it_on_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worker's imports overlap the folder validation; a run that ends early leaves no worker."""
    from pytest_mps.isolation import worker_process

    started: list[Any] = []
    real = worker_process.WorkerPool.prewarm

    def spy(pool: Any) -> None:
        real(pool)
        started.append(pool._spare)

    monkeypatch.setattr(worker_process.WorkerPool, "prewarm", spy)
    assert cli.main(["check", str(tmp_path / "missing")]) == cli.USAGE_ERROR
    assert "missing" in capsys.readouterr().err
    assert len(started) == 1 and not started[0].alive
    assert worker_process.take_early_pool() is None
    assert cli.main(["check", str(tmp_path / "missing"), "--no-isolate"]) == cli.USAGE_ERROR
    assert len(started) == 1  # no isolation, no worker


def test_the_suite_takes_the_early_worker() -> None:
    from pytest_mps.isolation import worker_process
    from pytest_mps.plugin.suite import SuiteState

    worker_process.start_early_worker()
    early = worker_process._EARLY
    state = SuiteState(specs=[], checks=())
    try:
        assert state.worker_pool() is early and worker_process.take_early_pool() is None
        assert early is not None and early.started == 1
    finally:
        state.worker_pool().close()


def test_an_emulated_check_imports_no_torch_in_its_own_process_and_still_emulates() -> None:
    """With crash isolation (check's default) the workers enter the emulated device around their own
    work; the command's process, which only hands the work over, never imports torch or Diffusers."""
    script = (
        "import sys\n"
        "from pytest_mps import cli\n"
        "status = cli.main(sys.argv[1:])\n"
        "heavy = [m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["check", str(FIXTURES / "tiny-ddpm"), "--device", "emulated", "--checks", "load,audit"]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "HEAVY=\n" in done.stdout, done.stdout[-500:]
    assert "ok 0 hazards" in done.stdout and "pre-check passed (emulated)" in done.stdout
    # Without isolation the work runs here, in the session's emulated device.
    done = subprocess.run(
        [sys.executable, "-c", script, *args, "--no-isolate"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "HEAVY=torch,diffusers,numpy" in done.stdout and "ok 0 hazards" in done.stdout
