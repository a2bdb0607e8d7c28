"""Tests for the tiny fixture pipelines under ``fixtures/`` and their builder script.

Plain pytest (no pytest-mps fixtures): the committed folders must be reproducible byte for byte by
``fixtures/build_fixtures.py``, load with ``DiffusionPipeline.from_pretrained``, run a 2-step CPU inference
that is finite, non-degenerate, deterministic and close in float16, and stay small and safetensors-only.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
import transformers
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "fixtures"
BUILDER_PATH = FIXTURES_DIR / "build_fixtures.py"

EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "tiny-sd": (1, 64, 64, 3),
    "tiny-ddpm": (1, 32, 32, 3),
    "tiny-dit": (1, 32, 32, 3),
}
FORBIDDEN_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".msgpack", ".h5", ".onnx")
MAX_FIXTURES_BYTES = 5 * 1024 * 1024
FP16_MAX_COSINE_DISTANCE = 1e-2


def _load_builder() -> ModuleType:
    """Import ``fixtures/build_fixtures.py`` by path (``fixtures/`` is not a package)."""
    name = "pytest_mps_fixture_builder"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILDER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
PIPELINE_NAMES: tuple[str, ...] = builder.PIPELINE_NAMES


def _files(root: Path) -> dict[str, Path]:
    """Map each file's POSIX path relative to ``root`` to its path (``__pycache__`` ignored)."""
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Diffusers-style ``1 - a.b / (|a| |b|)`` on the flattened arrays, in float64."""
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    return float(1.0 - a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def _recorded_versions(folder: Path) -> dict[str, str]:
    """Return the diffusers/transformers versions recorded in the committed ``folder``'s configs."""
    versions = {"diffusers": json.loads((folder / "model_index.json").read_text())["_diffusers_version"]}
    text_encoder_config = folder / "text_encoder" / "config.json"
    if text_encoder_config.is_file():
        versions["transformers"] = json.loads(text_encoder_config.read_text())["transformers_version"]
    return versions


def _smoke(name: str, pipe: Any, seed: int = 0) -> np.ndarray:
    """Run the builder's 2-step smoke call on CPU with ``torch.Generator("cpu").manual_seed(seed)``."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(**builder.smoke_call_kwargs(name, generator)).images


@pytest.fixture(scope="module")
def rebuilt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the builder into a fresh temporary folder."""
    out = tmp_path_factory.mktemp("rebuilt-fixtures")
    built = builder.build_all(out)
    assert set(built) == set(PIPELINE_NAMES)
    return out


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Any]:
    """Load every committed fixture pipeline once (float32, CPU)."""
    loaded: dict[str, Any] = {}
    for name in PIPELINE_NAMES:
        pipe = DiffusionPipeline.from_pretrained(FIXTURES_DIR / name)
        pipe.set_progress_bar_config(disable=True)
        loaded[name] = pipe
    return loaded


@pytest.fixture(scope="module")
def outputs(pipelines: dict[str, Any]) -> dict[str, np.ndarray]:
    """The 2-step float32 CPU output of each pipeline (seed 0)."""
    return {name: _smoke(name, pipe) for name, pipe in pipelines.items()}


# ------------------------------------------------------------------ reproducibility


def test_committed_fixtures_exist() -> None:
    for name in PIPELINE_NAMES:
        assert (FIXTURES_DIR / name / "model_index.json").is_file(), f"run {BUILDER_PATH} to build {name}"


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_rebuild_is_byte_identical(rebuilt_dir: Path, name: str) -> None:
    committed, rebuilt = _files(FIXTURES_DIR / name), _files(rebuilt_dir / name)
    assert sorted(committed) == sorted(rebuilt)
    installed = {"diffusers": diffusers.__version__, "transformers": transformers.__version__}
    recorded = _recorded_versions(FIXTURES_DIR / name)
    if any(installed[lib] != version for lib, version in recorded.items()):
        pytest.skip(
            f"fixtures were built with {recorded}, installed {installed}: configs record library versions, "
            "so rebuild with fixtures/build_fixtures.py (test_rebuild_same_weights still compares weights)"
        )
    mismatched = [rel for rel in committed if _sha256(committed[rel]) != _sha256(rebuilt[rel])]
    assert not mismatched, f"rebuilt files differ from the committed ones: {mismatched}"


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_rebuild_same_weights(rebuilt_dir: Path, name: str) -> None:
    """Weights must match bit for bit even where library versions (recorded in configs) differ."""
    committed = {rel: p for rel, p in _files(FIXTURES_DIR / name).items() if rel.endswith(".safetensors")}
    rebuilt = {rel: p for rel, p in _files(rebuilt_dir / name).items() if rel.endswith(".safetensors")}
    assert committed and sorted(committed) == sorted(rebuilt)
    for rel in committed:
        old, new = load_file(committed[rel]), load_file(rebuilt[rel])
        assert sorted(old) == sorted(new), rel
        different = [key for key in old if not torch.equal(old[key], new[key])]
        assert not different, f"{rel}: {different}"


# ------------------------------------------------------------------ loading and inference


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_smoke_output(outputs: dict[str, np.ndarray], name: str) -> None:
    image = outputs[name]
    assert image.shape == EXPECTED_SHAPES[name]
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 0.01
    assert np.unique(image).size > 100
    saturated = np.mean((image <= 0.0) | (image >= 1.0))
    assert saturated < 0.1, f"{saturated:.1%} of the pixels are clipped to 0 or 1"


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_same_seed_same_output_and_no_global_rng(
    pipelines: dict[str, Any], outputs: dict[str, np.ndarray], name: str
) -> None:
    """Same generator seed -> identical output; no draw from torch's global RNG (e.g. label dropout)."""
    state = torch.get_rng_state()
    again = _smoke(name, pipelines[name])
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(again, outputs[name])
    assert not np.array_equal(_smoke(name, pipelines[name], seed=1), outputs[name])


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_loaded_modules_are_in_eval_mode(pipelines: dict[str, Any], name: str) -> None:
    pipe = pipelines[name]
    modules = {key: value for key, value in pipe.components.items() if isinstance(value, torch.nn.Module)}
    assert modules
    for key, module in modules.items():
        assert not any(sub.training for sub in module.modules()), f"{name}/{key} has modules in training mode"
        assert all(p.dtype == torch.float32 for p in module.parameters()), f"{name}/{key} is not float32"


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_builder_pipeline_is_in_eval_mode(name: str) -> None:
    pipe = builder.BUILDERS[name]()
    for key, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not any(sub.training for sub in module.modules()), f"{name}/{key}"


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_float16_close_to_float32(
    pipelines: dict[str, Any], outputs: dict[str, np.ndarray], name: str
) -> None:
    half = copy.deepcopy(pipelines[name]).to(torch.float16)
    image = _smoke(name, half)
    assert np.isfinite(image).all()
    assert image.std() > 0.01
    assert _cosine_distance(image, outputs[name]) < FP16_MAX_COSINE_DISTANCE


def test_sd_default_size_and_any_prompt(pipelines: dict[str, Any]) -> None:
    pipe = pipelines["tiny-sd"]
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    tokenizer = pipe.tokenizer
    assert tokenizer.model_max_length == 77
    assert tokenizer.bos_token_id == pipe.text_encoder.config.bos_token_id
    assert tokenizer.eos_token_id == pipe.text_encoder.config.eos_token_id
    assert max(tokenizer.get_vocab().values()) < pipe.text_encoder.config.vocab_size
    ids = tokenizer("A photo of an Astronaut riding a horse on Mars, 4k! (#42) ~{}|").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1], "some ASCII text mapped to the unknown token"
    padded = tokenizer("x " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77


def test_dit_labels(pipelines: dict[str, Any]) -> None:
    pipe = pipelines["tiny-dit"]
    assert pipe.get_label_ids(["umbrella", "white shark", "great white shark"]) == [1, 0, 0]
    # DiTPipeline uses class id 1000 as the null label for classifier-free guidance.
    assert pipe.transformer.config.num_embeds_ada_norm == 1000


# ------------------------------------------------------------------ files and sizes


def test_only_safetensors_weights() -> None:
    for name in PIPELINE_NAMES:
        files = _files(FIXTURES_DIR / name)
        bad = [rel for rel in files if rel.lower().endswith(FORBIDDEN_WEIGHT_SUFFIXES)]
        assert not bad, f"{name}: non-safetensors weights {bad}"
        for config in (FIXTURES_DIR / name).glob("*/config.json"):
            assert list(config.parent.glob("*.safetensors")), f"{config.parent} has no safetensors weights"


def test_total_fixture_size() -> None:
    total = sum(path.stat().st_size for path in _files(FIXTURES_DIR).values())
    assert total < MAX_FIXTURES_BYTES, f"fixtures/ holds {total / 1e6:.2f} MB"
