"""The size plan: meta-weight pipelines, the peak-memory model, the 2**32 boundary search and
``pytest-mps plan``.

The production-shaped pipelines (SD 1.5, SDXL) are folders of configs only, written by
tests/pipeline_shapes.py: nothing of their 4-13 GB of weights exists or is allocated. Each boundary the
plan reports is checked against direct traces one step either side of it.
"""

from __future__ import annotations

import json
import os
import resource
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from pipeline_shapes import write_config_folder

from pytest_mps.hazard_audit import audit
from pytest_mps.plan.meta_pipeline import PlanInputError, load_meta_pipeline
from pytest_mps.plan.size_plan import SizePlan, plan_pipeline
from pytest_mps.plan.tiers import slicing_advised, tier_verdict, working_set_bytes
from pytest_mps.plan.trace import traced_call
from pytest_mps.plan_cli import main

from conftest import FIXTURES

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # Diffusers deprecates SDXL's upcast_vae
]
SIZE_KINDS = ("buffer", "attention_scores")
#: The full plans (every batch, both slicing modes; SDXL) take a minute on 2 busy cores: they run with
#: PYTEST_MPS_SLOW=1 (and benchmarks/bench_plan.py checks the same boundaries), not by default.
slow = pytest.mark.skipif(not os.environ.get("PYTEST_MPS_SLOW"), reason="slow: set PYTEST_MPS_SLOW=1")


def _over_limit(pipe: Any, side: int, batch: int, slicing: bool) -> bool:
    """A direct traced audit at ``side`` x ``side``: does any buffer reach 2**32 bytes?"""
    from pytest_mps.inputs import default_inputs

    processors = {
        n: dict(m.attn_processors) for n, m in pipe.components.items() if hasattr(m, "attn_processors")
    }
    if slicing:
        pipe.enable_attention_slicing()
    try:
        report = audit(pipe, default_inputs(pipe, batch_size=batch, steps=1, height=side, width=side))
    finally:
        for name, saved in processors.items():
            pipe.components[name].set_attn_processor(saved)
    assert report.traced and (report.completed or report.stopped_by.startswith("MPSAbortError")), (
        report.format()
    )
    return any(f.kind in SIZE_KINDS and f.severity == "abort" for f in report.findings)


def _check_boundaries(pipe: Any, plan: SizePlan) -> None:
    for boundary in plan.boundaries:
        side = boundary.largest_side
        assert side is not None and not boundary.capped, boundary
        assert not _over_limit(pipe, side, boundary.batch, boundary.slicing), boundary
        assert _over_limit(pipe, side + plan.step, boundary.batch, boundary.slicing), boundary


@pytest.fixture(scope="module")
def sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config_folder("sd15", tmp_path_factory.mktemp("sd15"))


def test_an_sd15_shaped_plan_matches_direct_traces_without_allocating(sd15: Path) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipe = load_meta_pipeline(sd15)
    assert pipe.device.type == "mps" and sum(p.numel() for p in pipe.unet.parameters()) > 850e6
    plan = plan_pipeline(pipe, batches=(1,), sides=(512,), slicing=(False,))
    _check_boundaries(pipe, plan)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 1024 * 1024  # 4 GB of float32 weights, gigabytes of activations: none allocated
    # SD 1.5 attends at 1/8 of the side with 8 heads (CFG: batch x 2): 2*8*(704/8)**4*4 bytes < 2**32.
    off = plan.boundary(1, False)
    assert off is not None and off.largest_side == 704 and plan.step == 64
    assert (
        off.limit is not None
        and off.limit.module == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    )
    assert plan.weights_bytes == pytest.approx(4.27e9, rel=0.01)  # 1066 M float32 parameters
    row = next(r for r in plan.memory if r.side == 512)
    assert row.memory is not None and row.tiers[8] != "fits" and row.tiers[16] == "fits"
    assert [r.side for r in plan.memory] == [512, 704]  # the limit itself is estimated too
    text = plan.format()
    assert "704" in text and "not an MPS measurement" in text and "enable_attention_slicing" in text


@slow
def test_the_full_sd15_plan_matches_direct_traces(sd15: Path) -> None:
    pipe = load_meta_pipeline(sd15)
    plan = plan_pipeline(pipe)
    _check_boundaries(pipe, plan)
    for batch in (1, 2, 4):
        off, on = plan.boundary(batch, False), plan.boundary(batch, True)
        assert off is not None and on is not None and (on.largest_side or 0) > (off.largest_side or 0)
    sliced = next(r for r in plan.memory if r.side == 512 and r.slicing)
    plain = next(r for r in plan.memory if r.side == 512 and not r.slicing)
    assert sliced.memory is not None and plain.memory is not None
    assert sliced.memory.peak_bytes < plain.memory.peak_bytes


@slow
def test_an_sdxl_shaped_plan_matches_direct_traces(tmp_path: Path) -> None:
    pipe = load_meta_pipeline(write_config_folder("sdxl", tmp_path / "sdxl"))
    plan = plan_pipeline(pipe, batches=(1,), sides=(1024,), slicing=(False,))
    _check_boundaries(pipe, plan)
    boundary = plan.boundary(1, False)
    assert boundary is not None and plan.step == 32
    assert boundary.largest_side is not None and 1024 < boundary.largest_side < 2048
    assert boundary.limit is not None and (boundary.limit.module or "").startswith("unet.down_blocks.1")
    # In float16 SDXL upcasts its VAE to float32 for the decode: the UNet's scores halve, the VAE's do
    # not, and the VAE's attention sets the limit.
    half = plan_pipeline(
        load_meta_pipeline(tmp_path / "sdxl", dtype=torch.float16), batches=(1,), sides=(), slicing=(False,)
    )
    limit = half.boundary(1, False)
    assert (
        limit is not None
        and limit.limit is not None
        and limit.limit.module == "vae.decoder.mid_block.attentions.0"
    )
    assert (limit.largest_side or 0) > (boundary.largest_side or 0) and half.dtype == "float16"


def test_the_memory_model_follows_tensor_lifetimes() -> None:
    """Peaks computed by hand: live activations (weights apart), and the attention score matrix that
    MPS's math path materialises inside scaled_dot_product_attention (twice: scores and softmax)."""
    mib = 2**20

    class Attend(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.view(1, 1, 1024, 256)  # a view: no new memory
            return torch.nn.functional.scaled_dot_product_attention(q, q, q).view(1024, 256)

    class Pipe:
        def __init__(self) -> None:
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256)
            )
            self.attend = Attend()
            self.components = {"mlp": self.mlp, "attend": self.attend}

        @property
        def device(self) -> torch.device:
            return next(self.mlp.parameters()).device

        def to(self, device: Any) -> Pipe:
            self.mlp.to(device)
            return self

        def __call__(self) -> torch.Tensor:
            x = torch.zeros(1024, 256, device="mps")  # 1 MiB, alive throughout
            return self.attend(self.mlp(x))

    run = traced_call(Pipe(), {}, memory=True)
    assert run.error is None and run.traced == ["mlp", "attend"]
    memory = run.memory
    assert memory is not None
    weights = (256 * 1024 + 1024 + 1024 * 256 + 256) * 4
    assert memory.weights_bytes == weights
    # In the MLP: x (1 MiB) + the first Linear's output (4 MiB) + ReLU's (4 MiB) = 9 MiB.
    # In attention: x + the MLP's output (1 MiB each) + scores and softmax (2 x 1024*1024*4 = 8 MiB).
    assert memory.peak_activation_bytes == 10 * mib
    assert memory.largest_buffer_bytes == 4 * mib and memory.largest_buffer_component in ("mlp", "attend")
    assert memory.peak_bytes == weights + 10 * mib


def test_tiers_and_the_guides_slicing_rule() -> None:
    assert working_set_bytes(16) == int(16 * 2**30 * 2 / 3)  # Metal: 10.67 GiB on a 16 GB Mac
    assert working_set_bytes(64) == 48 * 2**30
    gib = 2**30
    assert tier_verdict(10 * gib, 16) == "fits"
    assert tier_verdict(12 * gib, 16) == "swaps"  # over the working set, under PyTorch's 1.7x limit
    assert tier_verdict(19 * gib, 16) == "oom"
    assert slicing_advised(32, 512) and slicing_advised(64, 768)
    assert not slicing_advised(64, 512) and not slicing_advised(128, 256)


def test_plan_cli_prints_json_and_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main([str(FIXTURES / "tiny-sd"), "--json", "--batches", "1", "--sides", "64", "--max-side", "512"])
    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert data["subject"] == "StableDiffusionPipeline" and data["buffer_limit_bytes"] == 2**32
    assert [b["largest_side"] for b in data["boundaries"]] == [360, 360]  # the VAE: slicing cannot help
    assert data["boundaries"][0]["limit"]["module"] == "vae.decoder.mid_block.attentions.0"
    assert "meta-tensor trace" in data["stand_in"] and set(data["memory"][0]["tiers"]) == {
        "8",
        "16",
        "24",
        "32",
        "64",
        "128",
    }
    for argv, needle in (
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(FIXTURES)], "not a Diffusers pipeline folder"),
        ([str(FIXTURES / "tiny-sd"), "--batches", "0"], "positive integers"),
        ([str(FIXTURES / "tiny-sd"), "--slice-size", "half"], "auto, max or a positive integer"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's errors
                code = int(exc.code or 0)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_a_folder_whose_model_cannot_be_built_is_one_line(tmp_path: Path) -> None:
    folder = write_config_folder("sd15", tmp_path / "broken")
    (folder / "unet" / "config.json").write_text(json.dumps({"block_out_channels": "not a list"}))
    with pytest.raises(PlanInputError, match=r"cannot build component 'unet' \(UNet2DConditionModel\)"):
        load_meta_pipeline(folder)
