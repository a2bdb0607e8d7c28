"""``pytest-mps init-ci``: the generated GitHub Actions workflow validates against GitHub's workflow
schema (check-jsonschema's vendored copy, offline), a broken one does not, its jobs do what they say
(the Linux step's command really runs and stores CPU references), and bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from pytest_mps import ci_workflow
from pytest_mps.ci_workflow import main, render_workflow

from conftest import FIXTURES

WORKFLOW = Path(".github/workflows/mps.yml")


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    """GitHub's workflow schema as vendored in check-jsonschema. Proxies point at a closed port, so a
    validator that reached for the network would fail here instead of passing quietly."""
    exe = Path(sys.executable).with_name("check-jsonschema")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "check_jsonschema"]
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    return subprocess.run(
        [*command, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def load(path: Path) -> dict[str, Any]:
    """The workflow as GitHub reads it (YAML 1.2: ``on`` stays a string)."""
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def step(job: dict[str, Any], needle: str) -> dict[str, Any]:
    found = [s for s in job["steps"] if needle in json.dumps(s)]
    assert len(found) == 1, f"{needle!r} in {len(found)} steps"
    return found[0]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root holding a copy of tiny-ddpm under a path with a space (quoting is tested)."""
    shutil.copytree(FIXTURES / "tiny-ddpm", tmp_path / "my pipes" / "tiny ddpm")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_generated_workflows_validate_against_githubs_schema(tmp_path: Path) -> None:
    variants = {
        "pytest.yml": render_workflow(),
        "both.yml": render_workflow(pipelines=["my pipes/tiny ddpm", "fixtures/tiny-sd"], python="3.10"),
        "self-hosted.yml": render_workflow(pipelines=["p"], pytest=False, runner="self-hosted", lfs=True),
        "receipt.yml": render_workflow(pipelines=["p q"], receipt="mps receipt.json", lfs=True),
    }
    for name, text in variants.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = check_jsonschema(*(tmp_path / name for name in variants))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_a_broken_workflow_is_rejected_by_the_same_validator(tmp_path: Path) -> None:
    workflow = load_text(render_workflow(pipelines=["p"]))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(workflow))
    assert check_jsonschema(good).returncode == 0  # the JSON form of the workflow is valid as is
    broken = json.loads(json.dumps(workflow))
    broken["jobs"]["mps"]["runs_on"] = broken["jobs"]["mps"].pop("runs-on")  # a typo GitHub refuses
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    result = check_jsonschema(bad)
    assert result.returncode == 1
    assert "$.jobs.mps" in result.stdout


def load_text(text: str) -> dict[str, Any]:
    return YAML(typ="safe").load(text)


def test_jobs_precheck_on_linux_then_gate_on_apple_silicon(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(capsys, "--pipelines", "my pipes/tiny ddpm", "--python", "3.10")
    assert code == 0 and out.startswith(f"wrote {WORKFLOW}")
    wf = load(repo / WORKFLOW)
    assert set(wf["on"]) == {"push", "pull_request", "workflow_dispatch"}
    linux, mac = wf["jobs"]["precheck"], wf["jobs"]["mps"]

    assert linux["runs-on"] == "ubuntu-latest"
    install = step(linux, "pip install torch")["run"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    assert install.index("pip install torch") < install.index(
        "pip install -e ."
    )  # torch first: CPU build kept
    setup = step(linux, "actions/setup-python")
    assert setup["with"]["python-version"] == "3.10"  # a string: YAML's 3.10 would be the float 3.1
    precheck = step(linux, "pytest-mps check")["run"]
    assert "--device emulated 'my pipes/tiny ddpm'" in precheck
    assert "--mps-references=mps-references" in precheck
    tests = step(linux, "python -m pytest")["run"]
    assert "--mps-device=emulated" in tests and "--mps-references=mps-references" in tests
    stored = step(linux, "mps-cpu-references")
    assert stored["uses"].startswith("actions/upload-artifact@")

    assert mac["needs"] == "precheck"
    assert mac["runs-on"] == "macos-latest"
    fetched = step(mac, "actions/download-artifact")
    assert (fetched["with"]["name"], fetched["with"]["path"]) == ("mps-cpu-references", "mps-references")
    assert stored["with"]["path"].rstrip("/") == fetched["with"]["path"]
    pins = step(mac, "torch==")
    assert "torch==$TORCH_VERSION" in pins["run"] and "diffusers==$DIFFUSERS_VERSION" in pins["run"]
    assert mac["env"]["TORCH_VERSION"] == "${{ needs.precheck.outputs.torch }}"
    assert linux["outputs"]["torch"] == "${{ steps.versions.outputs.torch }}"
    assert step(linux, "GITHUB_OUTPUT")["id"] == "versions"
    real_check, real_tests = step(mac, "pytest-mps check")["run"], step(mac, "python -m pytest")["run"]
    assert "--device mps 'my pipes/tiny ddpm'" in real_check and "--mps-device=mps" in real_tests
    for command in (real_check, real_tests):
        assert '--mps-report-md="$GITHUB_STEP_SUMMARY"' in command
        assert "--mps-report-html=mps-report/" in command
        assert "--mps-references=mps-references" in command
    upload = step(mac, "actions/upload-artifact")
    assert upload["if"] == "always()" and upload["with"]["path"] == "mps-report/"
    # A failed check fails the job: no test step may swallow its exit status.
    for job in (linux, mac):
        assert not any(s.get("continue-on-error") for s in job["steps"] if "run" in s)
    assert "preflight" in {s.get("id") for s in mac["steps"]}


def test_the_linux_step_runs_as_written_and_stores_cpu_references(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(capsys, "--no-pytest", "--pipelines", "my pipes/tiny ddpm")[0] == 0
    wf = load(repo / WORKFLOW)
    summary = repo / "summary.md"
    env = {
        **os.environ,
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTEST_ADDOPTS": "-k cpu_parity",  # one check keeps the test short; the command is as written
        "OMP_NUM_THREADS": "1",
    }
    linux = step(wf["jobs"]["precheck"], "pytest-mps check")["run"]
    done = subprocess.run(["bash", "-e", "-c", linux], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list((repo / "mps-references").glob("*.safetensors")), "no CPU reference stored for the Mac"
    assert json.loads((repo / "mps-precheck" / "check.json").read_text())["totals"]["passed"] == 1
    assert "pytest-mps" in summary.read_text()
    # The Mac's command parses the same way; here it stops at the target (no MPS), not at a path.
    mac = step(wf["jobs"]["mps"], "pytest-mps check")["run"]
    done = subprocess.run(["bash", "-e", "-c", mac], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--device mps: MPS is unavailable" in done.stderr


def test_the_pytest_steps_options_are_accepted_by_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    wf = load_text(render_workflow())
    command = step(wf["jobs"]["precheck"], "python -m pytest")["run"]
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    done = subprocess.run(
        [
            "bash",
            "-e",
            "-c",
            command.replace("python -m pytest", f"{sys.executable} -m pytest -q -p no:cacheprovider"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_refuses_to_overwrite_without_force(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = repo / WORKFLOW
    target.parent.mkdir(parents=True)
    target.write_text("mine\n")
    code, out, err = run_main(capsys)
    assert (code, out) == (2, "")
    assert err == f"pytest-mps init-ci: error: {WORKFLOW} exists; pass --force to overwrite it\n"
    assert target.read_text() == "mine\n"
    assert run_main(capsys, "--force")[0] == 0
    assert "jobs" in load(target)


def test_self_hosted_runner_and_lfs(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    assert run_main(capsys, "--runner", "self-hosted", "--output", "ci.yml")[0] == 0
    wf = load(repo / "ci.yml")
    assert wf["jobs"]["mps"]["runs-on"] == ["self-hosted", "macOS", "ARM64"]
    for job in wf["jobs"].values():
        assert step(job, "actions/checkout")["with"] == {"lfs": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--python", "3"], "--python '3': give a Python 3 version such as 3.11"),
        (["--runner", "macos 14"], "--runner 'macos 14': give one runner label"),
        (["--no-pytest"], "nothing to run: give --pipelines PATH ..., or drop --no-pytest"),
        (["--pipelines", "/abs/pipe"], "--pipelines /abs/pipe: give a path inside the repository"),
        (["--pipelines", "../pipe"], "--pipelines ../pipe: give a path inside the repository"),
        (["--pipelines", "missing"], "pipeline folder missing does not exist"),
        (["--install", ""], "--install: give one shell command line"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    repo: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_main(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("pytest-mps init-ci: error: ") and message in err
    assert err.count("\n") == 1
    assert not (repo / WORKFLOW).exists()


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and "--pipelines PATH" in out and ci_workflow.DEFAULT_OUTPUT in out


def test_receipt_mode_verifies_a_receipt_instead_of_running_on_a_mac(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(capsys, "--pipelines", "my pipes/tiny ddpm", "--receipt", "mps-receipt.json")
    assert code == 0 and "a job that verifies mps-receipt.json against .github/allowed_signers" in out
    wf = load(repo / WORKFLOW)
    assert set(wf["jobs"]) == {"precheck", "receipt"}
    job = wf["jobs"]["receipt"]
    assert job["runs-on"] == "ubuntu-latest"
    assert "--no-deps pytest-mps" in step(job, "pip install")["run"]
    # The signed code is the pull request's head, not GitHub's merge commit.
    assert (
        step(job, "actions/checkout")["with"]["ref"]
        == "${{ github.event.pull_request.head.sha || github.sha }}"
    )
    command = step(job, "verify-receipt")["run"]
    assert "pytest-mps verify-receipt mps-receipt.json" in command
    assert "--allowed-signers .github/allowed_signers" in command
    assert not any("mps-cpu-references" in json.dumps(s) for s in wf["jobs"]["precheck"]["steps"])
    code, _, err = run_main(capsys, "--force", "--receipt", "/tmp/r.json")
    assert code == 2 and "--receipt /tmp/r.json: give a path inside the repository" in err
