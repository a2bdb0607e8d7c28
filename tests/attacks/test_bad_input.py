"""Attacks with folders that pass for pipelines at a glance but are not loadable ones (issue 12, point
7): each is refused up front by ``pytest-mps check`` with exit status 2 and one line naming the file
at fault, and a load of the same folder (``load_pipeline``, what the suite's load check calls) raises
``PipelineLoadError`` with that line. Shape mismatches keep the tensor and both shapes.

Each attack is one case of ``ATTACKS``, run through both entry points."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_mps import cli
from pytest_mps.pipelines import PipelineLoadError, check_folder, load_pipeline

from conftest import FIXTURES


def _edit(path: Path, change: Callable[[Any], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set(path: str, key: str, value: Any) -> Callable[[Path], None]:
    return lambda folder: _edit(folder / path, lambda d: d.__setitem__(key, value))


def _write(path: str, text: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / path).write_bytes(text)


def _drop_component(name: str) -> Callable[[Path], None]:
    return lambda folder: _edit(folder / "model_index.json", lambda d: d.pop(name))


def _swap_weights(folder: Path) -> None:
    """The UNet's weights replaced by another UNet's (the tiny-sd one): every name differs or mismatches."""
    shutil.copy(
        FIXTURES / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors",
        folder / "unet" / "diffusion_pytorch_model.safetensors",
    )
    _edit(folder / "unet" / "config.json", lambda d: d.__setitem__("in_channels", 3))


def _weights_from_other_config(folder: Path) -> None:
    """The tiny-ddpm UNet's weights with a config that builds wider layers."""
    _edit(folder / "unet" / "config.json", lambda d: d.__setitem__("block_out_channels", [8, 16]))


# (fixture, damage, file the line must name, words it must contain)
ATTACKS = [
    pytest.param(
        "tiny-ddpm",
        _write("model_index.json", b'{"_class_name": "DDPMPipeline", '),
        "model_index.json",
        "not valid JSON",
        id="index-not-json",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("model_index.json", b""),
        "model_index.json",
        "not valid JSON",
        id="index-empty",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("model_index.json", b"\xff\xfe{}"),
        "model_index.json",
        "not UTF-8",
        id="index-not-utf8",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("model_index.json", b"[1, 2]"),
        "model_index.json",
        "a JSON list, not an object",
        id="index-a-list",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("model_index.json", "_class_name", "FooPipeline"),
        "model_index.json",
        "unknown pipeline class 'FooPipeline'",
        id="unknown-pipeline-class",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("model_index.json", "_class_name", 7),
        "model_index.json",
        "no pipeline class",
        id="pipeline-class-not-a-name",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("model_index.json", "unet", ["diffusers", "UNet9000Model"]),
        "model_index.json",
        "component 'unet': unknown class 'UNet9000Model'",
        id="unknown-diffusers-class",
    ),
    pytest.param(
        "tiny-sd",
        _set("model_index.json", "text_encoder", ["transformers", "CLIPTextModelX"]),
        "model_index.json",
        "unknown class 'CLIPTextModelX' (not in transformers",
        id="unknown-transformers-class",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("model_index.json", "scheduler", ["diffusers", "NoSuchScheduler"]),
        "model_index.json",
        "unknown class 'NoSuchScheduler'",
        id="unknown-scheduler-class",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("model_index.json", "unet", ["diffusers"]),
        "model_index.json",
        "component 'unet' is [\"diffusers\"], not [library, class]",
        id="component-not-a-pair",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("model_index.json", "unet", "UNet2DModel"),
        "model_index.json",
        "not [library, class]",
        id="component-a-string",
    ),
    pytest.param(
        "tiny-ddpm",
        _drop_component("unet"),
        "model_index.json",
        "DDPMPipeline needs component(s) unet",
        id="required-component-undeclared",
    ),
    pytest.param(
        "tiny-ddpm",
        lambda folder: shutil.rmtree(folder / "unet"),
        "unet",
        "missing; model_index.json declares",
        id="component-folder-missing",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("unet/config.json", b'{"_class_name": "UNet2DModel", "in_ch'),
        "unet/config.json",
        "not valid JSON",
        id="model-config-not-json",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("unet/config.json", b"[]"),
        "unet/config.json",
        "not a JSON object",
        id="model-config-a-list",
    ),
    pytest.param(
        "tiny-ddpm",
        lambda folder: (folder / "unet" / "config.json").unlink(),
        "unet/config.json",
        "missing",
        id="model-config-missing",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("scheduler/scheduler_config.json", b"{,}"),
        "scheduler/scheduler_config.json",
        "not valid JSON",
        id="scheduler-config-not-json",
    ),
    pytest.param(
        "tiny-sd",
        _write("tokenizer/tokenizer_config.json", b'{"model_max_length": 77'),
        "tokenizer/tokenizer_config.json",
        "not valid JSON",
        id="tokenizer-config-not-json",
    ),
    pytest.param(
        "tiny-sd",
        _write("text_encoder/config.json", b"\x00\x01\x02"),
        "text_encoder/config.json",
        "not valid JSON",
        id="transformers-config-binary",
    ),
    pytest.param(
        "tiny-ddpm",
        _weights_from_other_config,
        "unet/diffusion_pytorch_model.safetensors",
        "tensor conv_in.bias has shape [4], but unet/config.json builds [8] (and ",
        id="weights-of-another-config",
    ),
    pytest.param(
        "tiny-ddpm",
        _swap_weights,
        "unet/diffusion_pytorch_model.safetensors",
        "has shape [",
        id="weights-of-another-model",
    ),
    pytest.param(
        "tiny-sd",
        _set("text_encoder/config.json", "hidden_size", 64),
        "text_encoder/model.safetensors",
        "has shape [77, 32], but text_encoder/config.json builds [77, 64] (and ",
        id="transformers-weights-mismatch",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("unet/config.json", "down_block_types", ["DownBlock2D"]),
        "unet/config.json",
        "does not build a UNet2DModel",
        id="config-the-class-refuses",
    ),
    pytest.param(
        "tiny-ddpm",
        _set("unet/config.json", "block_out_channels", "wide"),
        "unet/config.json",
        "does not build a UNet2DModel",
        id="config-value-of-the-wrong-type",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("unet/diffusion_pytorch_model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{bad"),
        "unet/diffusion_pytorch_model.safetensors",
        "corrupt or truncated",
        id="weights-header-garbage",
    ),
    pytest.param(
        "tiny-ddpm",
        _write("unet/diffusion_pytorch_model.safetensors", b"\x00\x00\x00\x00\x00\x00\x10\x00{}"),
        "unet/diffusion_pytorch_model.safetensors",
        "corrupt or truncated",
        id="weights-header-length-absurd",
    ),
]


@pytest.fixture
def broken(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Path]:
    def make(fixture: str, damage: Callable[[Path], None]) -> Path:
        folder = tmp_path / fixture
        shutil.copytree(FIXTURES / fixture, folder)
        damage(folder)
        return folder

    return make


@pytest.mark.parametrize(("fixture", "damage", "names", "says"), ATTACKS)
def test_check_refuses_it_with_one_line(
    broken: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    fixture: str,
    damage,
    names: str,
    says: str,
) -> None:
    folder = broken(fixture, damage)
    status = cli.main(["check", str(folder), "--no-isolate", "--checks", "load"])
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert status == 2, lines[-3:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("pytest-mps check: error: ")
    assert str(folder / names) in lines[0] and says in lines[0], lines[0]


@pytest.mark.parametrize(("fixture", "damage", "names", "says"), ATTACKS)
def test_loading_it_names_the_file_in_one_line(
    broken: Callable[..., Path], fixture: str, damage, names: str, says: str
) -> None:
    folder = broken(fixture, damage)
    with pytest.raises(PipelineLoadError) as raised:
        load_pipeline(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert str(folder / names) in message and says in message, message


@pytest.mark.parametrize("name", ["model_index.json", "unet/config.json"])
def test_a_fifo_in_the_folder_never_blocks(broken: Callable[..., Path], fifos, name: str) -> None:
    folder = broken("tiny-ddpm", lambda f: None)
    fifos.plant(folder / name)
    with pytest.raises(PipelineLoadError) as raised:
        check_folder(folder, allow_pickle=False, verify_safetensors=True, deep=True)
    assert not fifos.unblocked, "the check opened a FIFO for reading and blocked"
    assert str(folder) in str(raised.value)


def test_a_fifo_for_weights_never_blocks(broken: Callable[..., Path], fifos) -> None:
    folder = broken("tiny-ddpm", lambda f: None)
    fifos.plant(folder / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(PipelineLoadError, match="not a regular file"):
        check_folder(folder, allow_pickle=False, verify_safetensors=True, deep=True)
    assert not fifos.unblocked


@pytest.mark.parametrize("fixture", ["tiny-sd", "tiny-ddpm", "tiny-dit"])
def test_real_pipelines_pass_the_deep_check(fixture: str) -> None:
    """No false alarm: the bundled pipelines (with transformers components, optional components and
    plain arguments in model_index.json) pass."""
    check_folder(FIXTURES / fixture, allow_pickle=False, verify_safetensors=True, deep=True)


_DEEP = {"unknown-pipeline-class", "unknown-diffusers-class", "weights-of-another-config"}


@pytest.mark.parametrize(("fixture", "damage", "names", "says"), [p for p in ATTACKS if p.id in _DEEP])
def test_check_with_isolation_refuses_it_the_same_way_from_its_worker(
    broken: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fixture: str,
    damage,
    names: str,
    says: str,
) -> None:
    """With crash isolation (check's default) the deep check runs in the early worker, whose torch and
    Diffusers imports the run needs anyway: the refusal reads the same, and the worker is stopped."""
    from pytest_mps import pipeline_folder
    from pytest_mps.isolation import worker_process

    deep_here: list[Path] = []
    real = pipeline_folder.check_structure
    monkeypatch.setattr(pipeline_folder, "check_structure", lambda path: (deep_here.append(path), real(path)))
    folder = broken(fixture, damage)
    status = cli.main(["check", str(folder), "--checks", "load"])
    lines = "\n".join(capsys.readouterr()).strip().splitlines()
    assert status == 2, lines[-3:]
    assert len(lines) == 1 and lines[0].startswith("pytest-mps check: error: "), lines
    assert str(folder / names) in lines[0] and says in lines[0], lines[0]
    assert deep_here == []  # checked in the worker, not in this process
    assert worker_process.early_worker() is None
