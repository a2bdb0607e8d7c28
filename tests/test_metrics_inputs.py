"""Pure helpers: comparison metrics, defects, judging, and default inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_mps.checks import judge
from pytest_mps.inputs import default_inputs, fresh_inputs, smallest_size, split_batch
from pytest_mps.metrics import compare, defects
from pytest_mps.pipelines import load_pipeline
from pytest_mps.tolerances import Tolerance

from conftest import FIXTURES

images = arrays(np.float32, (1, 4, 4, 3), elements=st.floats(0, 1, width=32))


@settings(max_examples=50, deadline=None)
@given(images, images)
def test_metrics_agree_with_their_definitions(a, b) -> None:
    c = compare(a, b)
    diff = np.abs(a.astype(np.float64) - b)
    assert c.max_abs == pytest.approx(diff.max())
    assert c.mean_abs == pytest.approx(diff.mean())
    assert c.rms_255 == pytest.approx(math.sqrt((diff**2).mean()) * 255)
    assert 0.0 <= c.cosine_distance <= 1.0 + 1e-9
    assert c.pixel_fraction == pytest.approx(np.mean(diff.max(axis=-1) * 255 > 1))
    assert abs(a[c.worst_index] - b[c.worst_index]) == pytest.approx(c.max_abs)
    if c.max_abs == 0:
        assert math.isinf(c.psnr)
    else:
        assert c.psnr == pytest.approx(10 * math.log10(1 / (diff**2).mean()))
    assert compare(b, a).max_abs == c.max_abs


def test_identical_outputs_are_perfect() -> None:
    a = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    c = compare(a, a.copy())
    assert (c.max_abs, c.cosine_distance, c.pixel_fraction) == (0.0, 0.0, 0.0)
    assert c.where() == "item 0, row 0, column 0, channel 0"


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 4, 4, 3), np.float32), "target output is empty (shape (0, 4, 4, 3))"),
        (
            np.full((1, 2, 2, 3), np.nan, np.float32),
            "target output contains NaN/Inf (12 NaN of 12 values): black image",
        ),
        (
            np.array([[0.5, np.inf]], np.float32),
            "target output contains NaN/Inf (1 Inf of 2 values): corrupted image",
        ),
    ],
)
def test_defects_are_named(array, message) -> None:
    assert defects(array, "target") == message


def test_judge_fails_mismatches_first() -> None:
    a = np.zeros((1, 4, 4, 3), np.float32)
    tol = Tolerance(atol=1e-3, max_cosine_distance=1e-3)
    assert judge(a, np.zeros((1, 4, 5, 3), np.float32), tol)[1] == [
        "shape mismatch: target (1, 4, 4, 3) vs CPU reference (1, 4, 5, 3)"
    ]
    assert judge(a, a, tol, target_dtype="float16", reference_dtype="float32")[1] == [
        "dtype mismatch: target float16 vs CPU reference float32"
    ]
    b = a.copy()
    b[0, 1, 2, 0] = 0.5
    comparison, failures = judge(b, a, tol)
    assert comparison is not None and comparison.worst_index == (0, 1, 2, 0)
    assert failures[0].startswith(
        "max |diff| 0.5 exceeds atol 1.00e-03: 1 of 48 values outside, worst at item 0, row 1"
    )


def test_judge_rtol_scales_with_reference() -> None:
    ref = np.full((1, 2, 2, 3), 0.5, np.float32)
    assert judge(ref * 1.01, ref, Tolerance(atol=0.0, rtol=0.02))[1] == []
    assert judge(ref * 1.03, ref, Tolerance(atol=0.0, rtol=0.02))[1]


@pytest.fixture(scope="module")
def pipes():
    return {name: load_pipeline(FIXTURES / name) for name in ("tiny-sd", "tiny-ddpm", "tiny-dit")}


def test_default_inputs_follow_the_signature(pipes) -> None:
    sd = default_inputs(pipes["tiny-sd"])
    assert isinstance(sd["prompt"], str) and sd["num_inference_steps"] == 2 and sd["output_type"] == "np"
    assert sd["height"] == sd["width"] == smallest_size(pipes["tiny-sd"]) == 64
    assert isinstance(sd["generator"], torch.Generator) and sd["generator"].device.type == "cpu"
    ddpm = default_inputs(pipes["tiny-ddpm"], batch_size=3)
    assert ddpm["batch_size"] == 3 and len(ddpm["generator"]) == 3 and "prompt" not in ddpm
    dit = default_inputs(pipes["tiny-dit"], batch_size=2, seed=5)
    assert len(dit["class_labels"]) == 2 and "height" not in dit
    assert [g.initial_seed() for g in dit["generator"]] == [5, 6]


def test_fresh_inputs_renew_generators() -> None:
    inputs = {"generator": torch.Generator("cpu").manual_seed(3), "prompt": "x"}
    first = torch.randn(4, generator=fresh_inputs(inputs)["generator"])
    second = torch.randn(4, generator=fresh_inputs(inputs)["generator"])
    assert torch.equal(first, second)


def test_split_batch_reproduces_each_item(pipes) -> None:
    batch = default_inputs(pipes["tiny-dit"], batch_size=2)
    singles = split_batch(batch, 2)
    assert [s["class_labels"] for s in singles] == [[batch["class_labels"][0]], [batch["class_labels"][1]]]
    assert [s["generator"].initial_seed() for s in singles] == [0, 1]


def test_image_to_image_and_inpainting_inputs(pipes) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    components = pipes["tiny-sd"].components
    img2img = default_inputs(StableDiffusionImg2ImgPipeline(**components), batch_size=2)
    assert [im.size for im in img2img["image"]] == [(64, 64), (64, 64)] and "mask_image" not in img2img
    inpaint = default_inputs(StableDiffusionInpaintPipeline(**components))
    assert inpaint["image"].size == inpaint["mask_image"].size == (64, 64)
    assert inpaint["mask_image"].getpixel((32, 32)) == 255 and inpaint["mask_image"].getpixel((0, 0)) == 0
