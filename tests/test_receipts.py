"""Signed receipts end to end, with throwaway SSH keys and a faked real-MPS run: a receipt of a
real-MPS badge run verifies; every tampering (figures, verdict, fingerprint), a wrong signer, a changed
source or weight file and a stand-in run are refused with one line and exit status 1; unreadable input
is one line and exit status 2."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

import pytest_mps
from pytest_mps.ci_workflow import render_workflow
from pytest_mps.receipts import (
    NAMESPACE,
    ReceiptError,
    canonical_bytes,
    describe_written,
    parse_receipt,
    signature_path,
    write_receipt,
)
from pytest_mps.receipts.sign import main as sign_main
from pytest_mps.receipts.ssh import sign_bytes
from pytest_mps.receipts.verify import main as verify_main
from pytest_mps.registry import required_checks
from pytest_mps.reports.model import SCHEMA_PATH, build_report

from conftest import FIXTURES

PROG = "pytest-mps verify-receipt"

#: The environment a real-MPS run records (MPSEnvironment.to_dict() on an M2 Mac).
MAC = {
    "os_name": "Darwin",
    "macos_version": "14.5",
    "machine_arch": "arm64",
    "python_arch": "arm64",
    "rosetta": False,
    "python_version": "3.11.9",
    "torch_version": "2.5.1",
    "diffusers_version": "0.31.0",
    "mps_built": True,
    "mps_available": True,
    "memory_gb": 16.0,
    "fallback_enabled": False,
    "unusable_reason": None,
    "usable": True,
}
MAC_SIGNER = {**MAC, "platform": "macOS-14.5-arm64-arm-64bit", "chip": "Apple M2", "model": "Mac14,2"}
LINUX = {
    **MAC,
    "os_name": "Linux",
    "macos_version": None,
    "machine_arch": "x86_64",
    "python_arch": "x86_64",
    "torch_version": "2.5.1+cpu",
    "mps_built": False,
    "mps_available": False,
    "unusable_reason": "MPS needs macOS on Apple silicon; this is Linux",
    "usable": False,
}
EMULATED = "emulated mps (stand-in: MPS rules, CPU arithmetic)"


def check_record(
    check: str, *, real: bool, outcome: str = "passed", max_abs: float = 2.1e-06
) -> dict[str, Any]:
    """One check as the suite records it (the shape of a real cpu_parity record, relabelled)."""
    metrics = {
        "max_abs": max_abs,
        "mean_abs": max_abs / 4,
        "rms_255": 1.3e-04,
        "cosine_distance": 1.2e-12,
        "psnr": 118.2,
        "pixel_fraction": 0.0,
        "worst_index": [0, 3, 7, 1],
        "worst_target": 0.4901,
        "worst_reference": 0.4901,
        "shape": [1, 32, 32, 3],
    }
    return {
        "check": check,
        "status": outcome,
        "outcome": outcome,
        "figure": 2.5 if check == "speed" else max_abs,
        "target": "mps" if real else EMULATED,
        "real_mps": real,
        "pipeline": "tiny-ddpm",
        "summary": f"max |diff| {max_abs:.2g}",
        "failures": [] if outcome == "passed" else [f"max |diff| {max_abs:.2g} > atol 0.03"],
        "metrics": {"target vs cpu": metrics},
        "tolerance": {
            "atol": 0.03,
            "rtol": 0.0,
            "max_cosine_distance": 0.001,
            "sources": {"atol": "default"},
        },
        "timings": {"target": 0.03, "cpu": 0.01},
        "details": {"reference": "computed", "pipeline_class": "DDPMPipeline", "suite_check": check},
        "nodeid": f"test_compat.py::test_{check}[tiny-ddpm]",
        "source": 0,
        "images": None,
    }


def make_report(
    *, real: bool = True, failing: str | None = None, environment: dict[str, Any] = MAC
) -> dict[str, Any]:
    checks = [
        check_record(
            name,
            real=real,
            outcome="failed" if name == failing else "passed",
            max_abs=0.5 if name == failing else 2.1e-06,
        )
        for name in required_checks()  # a full run: the badge needs every required check
    ]
    source = {
        "name": "session",
        "created": "2026-12-01T10:00:00+00:00",
        "duration": 12.5,
        "exitstatus": 0 if failing is None else 1,
        "target": {"label": "mps" if real else EMULATED, "real_mps": real},
        "environment": environment,
        "xdist_workers": 0,
        "references": None,
    }
    return build_report(checks, [source], created="2026-12-01T10:00:13+00:00")


@dataclass
class Keys:
    alice: Path
    mallory: Path
    allowed: Path


def new_key(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    assert shutil.which("ssh-keygen"), (
        "these tests need OpenSSH's ssh-keygen (apt-get install openssh-client)"
    )
    folder = tmp_path_factory.mktemp("keys")
    alice, mallory = new_key(folder, "alice"), new_key(folder, "mallory")
    allowed = folder / "allowed_signers"
    allowed.write_text(
        f"# trusted receipt signers\nalice@example.com {alice.with_suffix('.pub').read_text()}"
    )
    return Keys(alice=alice, mallory=mallory, allowed=allowed)


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
    )


@dataclass
class Project:
    root: Path
    pipeline: Path  # outside the repository: given to verify-receipt with --pipeline
    receipt: Path


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A git project (source and tests) and, outside it, a copy of the tiny DDPM pipeline."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "model.py").write_text("SCALE = 1.0\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_model.py").write_text("def test_scale():\n    pass\n")
    (root / ".gitignore").write_text("*.log\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    pipeline = shutil.copytree(FIXTURES / "tiny-ddpm", tmp_path / "pipelines" / "tiny-ddpm")
    return Project(root=root, pipeline=pipeline, receipt=root / "mps-receipt.json")


def sign(project: Project, key: Path, report: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    kwargs.setdefault("pipelines", [project.pipeline])
    kwargs.setdefault("environment", MAC_SIGNER)
    write_receipt(report or make_report(), project.receipt, key=key, source=project.root, **kwargs)
    return project.receipt


def verify(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys, *extra: str, pipeline: bool = True
) -> tuple[int, str, str]:
    args = [str(project.receipt), "--allowed-signers", str(keys.allowed), "--source", str(project.root)]
    if pipeline:
        args += ["--pipeline", str(project.pipeline)]
    code = verify_main([*args, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def refused(result: tuple[int, str, str], *phrases: str) -> None:
    code, out, err = result
    assert (code, out) == (1, ""), err
    assert err.startswith(f"{PROG}: refused: ") and err.count("\n") == 1, err
    for phrase in phrases:
        assert phrase in err


def bad_input(result: tuple[int, str, str], *phrases: str) -> None:
    code, out, err = result
    assert (code, out) == (2, ""), err
    assert err.startswith(f"{PROG}: error: ") and err.count("\n") == 1, err
    for phrase in phrases:
        assert phrase in err


def edit(receipt: Path, change: Any) -> None:
    """Change the document and write it back in canonical form, keeping the old signature."""
    document = json.loads(receipt.read_bytes())
    change(document)
    receipt.write_bytes(canonical_bytes(document))


def test_the_faked_real_mps_report_follows_the_report_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    for report in (make_report(), make_report(real=False), make_report(failing="float16")):
        jsonschema.validate(report, schema)
    assert [p["badge"] for p in make_report()["pipelines"]] == [True]


def test_a_real_mps_badge_receipt_verifies(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    receipt = sign(project, keys.alice)
    assert signature_path(receipt).read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    code, out, err = verify(capsys, project, keys)
    assert (code, err) == (0, "")
    assert out.startswith(
        f"{PROG}: verified: {receipt}: signed by alice@example.com; real MPS (macOS 14.5, Apple M2"
    )
    assert "the MPS badge earned by tiny-ddpm" in out and out.count("\n") == 1
    # OpenSSH alone verifies it too: the signature covers the file's exact bytes.
    done = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(keys.allowed),
            "-I",
            "alice@example.com",
            "-n",
            NAMESPACE,
            "-s",
            str(signature_path(receipt)),
        ],
        stdin=receipt.open("rb"),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_receipt_is_canonical_and_records_what_was_checked(project: Project, keys: Keys) -> None:
    (project.root / "src" / "model.py").write_text("SCALE = 2.0\n")  # uncommitted: the tree is dirty
    (project.root / "src" / "new.py").write_text("NEW = True\n")  # untracked, not ignored: it counts
    (project.root / "run.log").write_text("ignored\n")
    receipt = sign(project, keys.alice)
    data = receipt.read_bytes()
    document = parse_receipt(data)
    assert canonical_bytes(document) == data
    source = document["fingerprint"]["source"]
    assert source["kind"] == "git" and source["dirty"] is True and len(source["commit"]) == 40
    assert sorted(source["files"]) == [".gitignore", "src/model.py", "src/new.py", "tests/test_model.py"]
    assert source["excluded"] == ["mps-receipt.json", "mps-receipt.json.sig"]
    (pipeline,) = document["fingerprint"]["pipelines"]
    assert pipeline["name"] == "tiny-ddpm" and pipeline["path"] is None
    assert (
        "model_index.json" in pipeline["files"]
        and "unet/diffusion_pytorch_model.safetensors" in pipeline["files"]
    )
    assert all(v.startswith("sha256:") for v in pipeline["files"].values())
    assert document["environment"]["chip"] == "Apple M2"
    assert document["verdict"] == {
        "real_mps": True,
        "badge": True,
        "pipelines": [
            {
                "pipeline": "tiny-ddpm",
                "badge": True,
                "verdict": "earns the MPS badge (2.50x faster than the CPU)",
            }
        ],
    }
    assert document["report"]["checks"][0]["metrics"]["target vs cpu"]["max_abs"] == 2.1e-06


def test_committing_the_signed_tree_and_receipt_still_verifies(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    """The contributor's flow: edit, run the check, sign, then commit the code with the receipt."""
    (project.root / "src" / "model.py").write_text("SCALE = 2.0\n")
    (project.root / "src" / "new.py").write_text("NEW = True\n")
    sign(project, keys.alice)
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "change and receipt")
    assert verify(capsys, project, keys)[0] == 0


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda d: d["report"]["checks"][0]["metrics"]["target vs cpu"].update(max_abs=1e-9), id="figures"
        ),
        pytest.param(
            lambda d: d["verdict"]["pipelines"][0].update(verdict="works on MPS (faster)"), id="verdict"
        ),
        pytest.param(
            lambda d: d["fingerprint"]["source"]["files"].update({"src/model.py": "sha256:" + "0" * 64}),
            id="fingerprint",
        ),
        pytest.param(lambda d: d["environment"].update(chip="Apple M4 Max"), id="environment"),
    ],
)
def test_a_tampered_receipt_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys, change: Any
) -> None:
    receipt = sign(project, keys.alice)
    edit(receipt, change)
    refused(verify(capsys, project, keys), "the signature does not match the receipt's bytes")


def test_a_stand_in_failure_relabelled_as_a_badge_is_refused_even_when_re_signed(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    """A signer who edits the verdict and signs again: the verdict is recomputed from the checks."""
    receipt = sign(project, keys.alice, make_report(failing="float16"))
    document = json.loads(receipt.read_bytes())
    document["verdict"] = {
        "real_mps": True,
        "badge": True,
        "pipelines": [
            {
                "pipeline": "tiny-ddpm",
                "badge": True,
                "verdict": "earns the MPS badge (2.50x faster than the CPU)",
            }
        ],
    }
    data = canonical_bytes(document)
    receipt.write_bytes(data)
    signature_path(receipt).write_bytes(sign_bytes(data, keys.alice, NAMESPACE))
    refused(verify(capsys, project, keys), "the stated verdict does not match the report's checks")


def test_a_signed_but_non_canonical_receipt_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    receipt = sign(project, keys.alice)
    data = json.dumps(json.loads(receipt.read_bytes())).encode()  # same content, other whitespace
    receipt.write_bytes(data)
    signature_path(receipt).write_bytes(sign_bytes(data, keys.alice, NAMESPACE))
    refused(verify(capsys, project, keys), "not in canonical form")


def test_a_key_outside_allowed_signers_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    sign(project, keys.mallory)
    refused(verify(capsys, project, keys), f"signed by a key that is not in {keys.allowed}")


def test_a_signature_for_another_namespace_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    receipt = sign(project, keys.alice)
    signature_path(receipt).write_bytes(sign_bytes(receipt.read_bytes(), keys.alice, "git"))
    refused(verify(capsys, project, keys), "the signature is not for namespace 'pytest-mps-receipt'")


def test_a_changed_source_file_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    sign(project, keys.alice)
    (project.root / "src" / "model.py").write_text("SCALE = 3.0\n")
    git(project.root, "commit", "-q", "-am", "after the receipt")
    refused(verify(capsys, project, keys), "is not the one that was checked (src/model.py changed)")


def test_a_source_file_added_after_signing_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    sign(project, keys.alice)
    (project.root / "src" / "extra.py").write_text("X = 1\n")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "more code")
    refused(verify(capsys, project, keys), "src/extra.py not in the receipt")


def test_an_uncommitted_file_that_was_checked_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    (project.root / "src" / "helper.py").write_text("H = 1\n")  # imported by the run, never committed
    sign(project, keys.alice)
    refused(verify(capsys, project, keys), "src/helper.py missing")


def test_a_changed_pipeline_weight_file_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    sign(project, keys.alice)
    weights = project.pipeline / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    refused(
        verify(capsys, project, keys),
        f"pipeline folder {project.pipeline} is not the one that was checked as 'tiny-ddpm'",
        "unet/diffusion_pytorch_model.safetensors changed",
    )


def test_a_pipeline_inside_the_source_tree_is_found_without_pipeline_option(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    inside = shutil.copytree(project.pipeline, project.root / "fixtures" / "tiny-ddpm")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "pipeline in the repository")
    sign(project, keys.alice, pipelines=[inside])
    assert verify(capsys, project, keys, pipeline=False)[0] == 0
    (inside / "scheduler" / "scheduler_config.json").write_text("{}\n")
    git(project.root, "commit", "-q", "-am", "edit a config")
    refused(
        verify(capsys, project, keys, pipeline=False),
        "fixtures/tiny-ddpm/scheduler/scheduler_config.json changed",
    )


def test_a_stand_in_receipt_is_signed_but_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    written = write_receipt(
        make_report(real=False, environment=LINUX),
        project.receipt,
        pipelines=[project.pipeline],
        key=keys.alice,
        source=project.root,
        environment=LINUX,
    )
    assert "a stand-in run: it will never verify as MPS evidence" in describe_written(written)
    refused(
        verify(capsys, project, keys), f"a stand-in run ({EMULATED})", "a stand-in is never evidence of MPS"
    )


def test_a_failing_real_mps_run_is_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    sign(project, keys.alice, make_report(failing="float16"))
    refused(
        verify(capsys, project, keys), "not every pipeline earns the MPS badge (tiny-ddpm: fails: float16)"
    )


def test_real_mps_checks_from_a_linux_environment_are_refused(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    sign(project, keys.alice, make_report(environment=LINUX))
    refused(verify(capsys, project, keys), "not a usable MPS device on macOS (Linux, usable=False)")


def test_unreadable_input_is_status_2(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys
) -> None:
    receipt = sign(project, keys.alice)
    sig = signature_path(receipt)
    good_receipt, good_sig = receipt.read_bytes(), sig.read_bytes()

    bad_input(verify(capsys, project, keys, "--signature", str(project.root / "none.sig")), "does not exist")
    sig.write_text("not a signature\n")
    bad_input(verify(capsys, project, keys), f"{sig} is not an SSH signature")
    sig.write_bytes(good_sig)

    broken_allowed = keys.allowed.with_name("broken_allowed")
    broken_allowed.write_text("alice@example.com\n")
    args = [str(receipt), "--source", str(project.root), "--pipeline", str(project.pipeline)]
    assert verify_main([*args, "--allowed-signers", str(broken_allowed)]) == 2
    assert "allowed signers file" in capsys.readouterr().err
    assert verify_main([*args, "--allowed-signers", str(keys.allowed.with_name("absent"))]) == 2
    assert "allowed signers file" in capsys.readouterr().err

    receipt.write_bytes(good_receipt[: len(good_receipt) // 2])
    bad_input(verify(capsys, project, keys), "not a pytest-mps receipt (not JSON")
    edit_bytes = good_receipt.replace(b'"receipt_version": 1', b'"receipt_version": 99')
    receipt.write_bytes(edit_bytes)
    bad_input(verify(capsys, project, keys), "receipt_version 99 is not supported")
    receipt.write_bytes(b'{"format": "pytest-mps-receipt", "format": "x"}')
    bad_input(verify(capsys, project, keys), "key 'format' appears twice")
    receipt.write_bytes(good_receipt)

    bad_input(
        verify(capsys, project, keys, pipeline=False),
        "'tiny-ddpm' was outside the source tree",
        "--pipeline DIR",
    )
    bad_input(
        verify(capsys, project, keys, "--pipeline", str(project.root / "src")),
        "names no pipeline folder 'src'",
    )
    receipt.unlink()
    bad_input(verify(capsys, project, keys), f"receipt {receipt} does not exist")
    assert verify_main(["--allowed-signers", str(keys.allowed)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_sign_receipt_command(
    capsys: pytest.CaptureFixture[str], project: Project, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pytest-mps sign-receipt REPORT.json``: the plugin flow (pytest --mps-report-json, then sign)."""
    monkeypatch.chdir(project.root)
    report = project.root / "mps-report.json"
    report.write_text(json.dumps(make_report()))
    args = [
        str(report),
        "--receipt",
        str(project.receipt),
        "--key",
        str(keys.alice),
        "--pipeline",
        str(project.pipeline),
    ]
    assert sign_main(args) == 0
    out = capsys.readouterr().out
    sig = signature_path(project.receipt)
    assert out == f"receipt: {project.receipt} (signature {sig}); real MPS, every pipeline earns the badge\n"
    document = parse_receipt(project.receipt.read_bytes())
    assert "mps-report.json" in document["fingerprint"]["source"]["excluded"]
    assert document["environment"]["os_name"]  # the signing machine, detected
    # Signed on Linux from a report that says Darwin: the report's own environment decides, and the
    # verification goes through (the signing machine is recorded, not trusted).
    assert verify(capsys, project, keys)[0] == 0

    report.write_text("[]")
    assert sign_main(args) == 2
    assert capsys.readouterr().err.startswith("pytest-mps sign-receipt: error: ")
    report.write_text(json.dumps(make_report()))
    assert sign_main([*args[:-2], "--pipeline", str(project.root / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sign_main([*args[:3], "--key", str(project.root / "no-key")]) == 2
    assert "signing key" in capsys.readouterr().err


def test_write_receipt_refuses_an_invalid_report_and_a_missing_key(
    project: Project, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = copy.deepcopy(make_report())
    broken["checks"][0]["outcome"] = "maybe"
    with pytest.raises(
        ReceiptError, match=r"cannot sign: report: checks\[0\]\.outcome: 'maybe' is not one of"
    ):
        sign(project, keys.alice, broken)
    monkeypatch.setenv("HOME", str(project.root))  # no ~/.ssh keys, no git signing key
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(project.root / "none"))
    with pytest.raises(ReceiptError, match="no SSH key to sign with: pass --receipt-key"):
        write_receipt(make_report(), project.receipt, source=project.root, environment=MAC_SIGNER)


def test_the_generated_receipt_job_verifies_with_the_standard_library_alone(
    project: Project, keys: Keys, tmp_path: Path
) -> None:
    """The receipt job of ``pytest-mps init-ci --receipt``, run as written in a checkout that holds a
    committed receipt, with Python's site-packages off (``-S``): verifying needs no torch, no numpy."""
    inside = shutil.copytree(project.pipeline, project.root / "fixtures" / "tiny-ddpm")
    allowed = project.root / ".github" / "allowed_signers"
    allowed.parent.mkdir()
    shutil.copy(keys.allowed, allowed)
    sign(project, keys.alice, pipelines=[inside])
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "receipt")
    workflow = YAML(typ="safe").load(
        render_workflow(pipelines=["fixtures/tiny-ddpm"], receipt="mps-receipt.json")
    )
    (command,) = [
        s["run"] for s in workflow["jobs"]["receipt"]["steps"] if "verify-receipt" in s.get("run", "")
    ]
    # Until the command line dispatches verify-receipt, a stand-in `pytest-mps` on PATH calls its main.
    shim = tmp_path / "bin" / "pytest-mps"
    shim.parent.mkdir()
    package_root = Path(pytest_mps.__file__).resolve().parent.parent
    (tmp_path / "bin" / "verify.py").write_text(
        f"import sys\nsys.path.insert(0, {str(package_root)!r})\n"
        "from pytest_mps.receipts.verify import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    shim.write_text(
        f'#!/bin/sh\n[ "$1" = verify-receipt ] || exit 64\nshift\n'
        f'exec {sys.executable} -S {shim.parent}/verify.py "$@"\n'
    )
    shim.chmod(0o755)
    env = {"PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", "-e", "-c", command], cwd=project.root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{PROG}: verified: mps-receipt.json: signed by alice@example.com")
    (project.root / "src" / "model.py").write_text("SCALE = 5.0\n")
    git(project.root, "commit", "-q", "-am", "change after the receipt")
    done = subprocess.run(
        ["bash", "-e", "-c", command], cwd=project.root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "src/model.py changed" in done.stderr
