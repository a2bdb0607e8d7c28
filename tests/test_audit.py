"""The MPS hazard audit, on the tiny fixture pipelines.

1. Every fixture pipeline with every scheduler in ``pipe.scheduler.compatibles`` runs end to end on the
   emulated target (``pipe.device.type == "mps"``), gives exactly the CPU output, and the audit finds
   nothing: stock Diffusers code is MPS-clean there, so any finding would be a false alarm. Schedulers
   that cannot be built from the pipeline's config, or that fail on the CPU too, are skipped with the
   reason (``pytest -rs`` lists them).
2. Planted hazards are caught with their module path and source line: an unconditional float64
   scheduler, float64 RoPE frequencies, FreeU's complex FFT (diffusers #7569), an op without an MPS kernel,
   a 17-dimensional tensor, and attention whose score matrix passes 2**32 bytes only at 1024x1024 (found by
   the meta trace without allocating it). The same hazards raise MPS's exceptions in raising mode.
3. Above 512x512 output pixels ``audit()`` traces the pipeline's models on meta tensors: the same findings
   as a real run, in seconds, at sizes a real CPU run cannot reach (4096x4096: benchmarks/bench_plan.py).
"""

from __future__ import annotations

import json
import re
import resource
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel

from pytest_mps.emulation import EmulatedMPS, Finding, MPSAbortError
from pytest_mps.emulation.errors import missing_kernel_message
from pytest_mps.emulation.shape_trace import spec
from pytest_mps.hazard_audit import (
    TRACE_ABOVE_PIXELS,
    AuditReport,
    assert_no_mps_hazards,
    audit,
    audit_module,
    output_pixels,
)
from pytest_mps.inputs import default_inputs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PIPELINES = ("tiny-sd", "tiny-ddpm", "tiny-dit")
FLOAT64 = (
    "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64. "
    "Please use float32 instead."
)
HERE = "tests/test_audit.py"

# Diffusers' schedulers call numpy functions on torch tensors (NumPy 2 deprecation noise, CPU runs too).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _scheduler_names(pipeline: str) -> list[str]:
    index = json.loads((FIXTURES / pipeline / "model_index.json").read_text())
    base = getattr(diffusers, index["scheduler"][1])
    config = json.loads((FIXTURES / pipeline / "scheduler" / "scheduler_config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = base.from_config(config)
    return [base.__name__, *sorted({c.__name__ for c in scheduler.compatibles} - {base.__name__})]


CASES = [(p, s) for p in PIPELINES for s in _scheduler_names(p)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
    threads make these tests several times slower; restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipelines() -> Iterator[dict[str, Any]]:
    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = DiffusionPipeline.from_pretrained(FIXTURES / name)
            pipe.set_progress_bar_config(disable=True)
            loaded[name] = pipe
        return loaded[name]

    yield get  # type: ignore[misc]


def _run(pipe: Any) -> np.ndarray:
    # Some pipelines (DiT) draw scheduler noise from the global RNG: seed it as well as the generator.
    torch.manual_seed(0)
    return pipe(**default_inputs(pipe)).images


@pytest.mark.parametrize(("pipeline", "scheduler"), CASES, ids=[f"{p}-{s}" for p, s in CASES])
def test_stock_pipelines_are_mps_clean_and_equal_to_cpu(
    pipelines: Any, pipeline: str, scheduler: str
) -> None:
    pipe = pipelines(pipeline)
    original = pipe.scheduler
    try:
        try:
            pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
        except Exception as exc:  # e.g. needs scipy or torchsde, not installed here
            pytest.skip(f"{scheduler} cannot be built from {pipeline}'s config: {type(exc).__name__}")
        try:
            expected = _run(pipe)
        except Exception as exc:
            pytest.skip(f"{scheduler} does not run with {pipeline} on the CPU either: {exc}"[:200])
        with EmulatedMPS(collect=True) as emu:
            emu.name_modules(pipe.components)
            pipe.to("mps")
            try:
                assert pipe.device.type == "mps"
                assert all(p.is_mps for p in pipe.components[_denoiser(pipe)].parameters())
                out = _run(pipe)
            finally:
                pipe.to("cpu")
        assert emu.findings == [], "\n".join(f"{f.kind} {f.op} {f.where}" for f in emu.findings)
        if not np.array_equal(out, expected):
            # Diffusers' MPS branch computes differently on purpose for some schedulers (EDMEuler keeps
            # its sigmas in float32 when torch.backends.mps.is_available()). Then the emulated output must
            # equal a CPU run that takes that same branch.
            with mock.patch.object(torch.backends.mps, "is_available", lambda: True):
                expected = _run(pipe)
        np.testing.assert_array_equal(out, expected)
    finally:
        pipe.scheduler = original


def _denoiser(pipe: Any) -> str:
    return next(n for n in ("unet", "transformer") if getattr(pipe, n, None) is not None)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_audit_of_a_stock_pipeline_is_clean(pipelines: Any, pipeline: str) -> None:
    pipe = pipelines(pipeline)
    expected = _run(pipe)
    torch.manual_seed(0)
    report = assert_no_mps_hazards(pipe)
    assert not report.traced  # the smallest size runs for real
    assert report.ok and report.completed and report.findings == ()
    assert report.errors == () and report.aborts == ()
    np.testing.assert_array_equal(report.output, expected)
    assert pipe.device.type == "cpu"  # moved back
    assert "no MPS hazards found" in report.format()
    json.dumps(report.to_dict())


def test_audit_inside_an_active_emulation_with_a_suspended_cpu_reference(pipelines: Any) -> None:
    # How the plugin uses it: a session-wide emulation, a CPU reference computed with the emulation
    # suspended (CPU branches, CPU tensors), and an audit of a pipeline already on the emulated device.
    from pytest_mps.emulation import suspended

    pipe = pipelines("tiny-ddpm")
    with EmulatedMPS():
        pipe.to("mps")
        with suspended():
            pipe.to("cpu")
            assert pipe.device.type == "cpu" and not torch.backends.mps.is_available()
            expected = _run(pipe)
        pipe.to("mps")
        torch.manual_seed(0)
        report = audit(pipe)
        assert pipe.device.type == "mps"  # left where it was
        pipe.to("cpu")
    assert report.ok and report.findings == ()
    np.testing.assert_array_equal(report.output, expected)


# -- planted hazards ----------------------------------------------------------------------------------
class Float64Scheduler(DDIMScheduler):
    """A scheduler that keeps a float64 table on the device unconditionally (diffusers #1169, #9047)."""

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        super().set_timesteps(num_inference_steps, device=device)
        self.sigmas = torch.linspace(1.0, 0.0, num_inference_steps, dtype=torch.float64, device=device)


class Float64Rope(torch.nn.Module):
    """RoPE frequencies in float64, without Diffusers' MPS downcast (diffusers #10986, #12432)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[1]
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim))
        return freqs.float()


class VideoPool(torch.nn.Module):
    """3-D adaptive pooling: no MPS kernel in this torch (aten::_adaptive_avg_pool3d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool3d(x.unsqueeze(0), (1, 2, 2))


class TooManyDims(torch.nn.Module):
    """A 17-dimensional reshape (MPS stops at 16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([1] * 13 + list(x.shape))


def _plant_hazards(pipe: Any) -> Any:
    pipe.scheduler = Float64Scheduler.from_config(pipe.scheduler.config)
    mid = pipe.unet.mid_block
    mid.rope, mid.pool, mid.deep = Float64Rope(), VideoPool(), TooManyDims()

    def after_mid_block(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        module.rope(output)
        module.pool(output)
        module.deep(output)

    mid.register_forward_hook(after_mid_block)
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)  # FreeU: fftn in the up blocks (diffusers #7569)
    return pipe


@pytest.fixture
def hazardous_pipe() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = DiffusionPipeline.from_pretrained(FIXTURES / "tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    return _plant_hazards(pipe)


def _one(report: AuditReport, kind: str, **match: Any) -> Finding:
    hits = [
        f for f in report.findings if f.kind == kind and all(getattr(f, k) == v for k, v in match.items())
    ]
    assert len(hits) == 1, (kind, match, report.format())
    return hits[0]


def test_planted_hazards_are_caught_with_module_and_source(hazardous_pipe: Any) -> None:
    report = audit(hazardous_pipe)
    assert report.completed and not report.ok

    scheduler = _one(report, "float64", module="scheduler")
    assert scheduler.op == "torch.linspace" and scheduler.severity == "error" and scheduler.message == FLOAT64
    assert scheduler.source is not None and scheduler.source.startswith(HERE)
    assert scheduler.source.endswith("in set_timesteps")

    rope = _one(report, "float64", module="unet.mid_block.rope")
    assert rope.op == "torch.arange" and rope.dtypes == ("float64",) and rope.shapes == ((4,),)
    assert rope.source is not None and rope.source.startswith(HERE) and rope.source.endswith("in forward")
    assert rope.count == 2  # once per denoising step; downstream float64 ops are not re-reported

    pool = _one(report, "missing_kernel")
    assert pool.op == "aten::_adaptive_avg_pool3d" and pool.module == "unet.mid_block.pool"
    assert pool.severity == "error" and pool.message == missing_kernel_message("aten::_adaptive_avg_pool3d")
    assert pool.source is not None and pool.source.startswith(HERE)

    deep = _one(report, "dims")
    assert deep.module == "unet.mid_block.deep" and len(deep.shapes[0]) == 17
    assert deep.message == "MPS supports tensors with dimensions <= 16, but got 17."

    ffts = [f for f in report.findings if f.kind == "complex"]
    assert {f.module for f in ffts} == {"unet.up_blocks.0", "unet.up_blocks.1"}
    assert {f.op for f in ffts} == {"torch.fft.fftn"} and {f.severity for f in ffts} == {"warning"}
    assert all(
        f.source and "diffusers/utils/torch_utils.py" in f.source and "fourier_filter" in f.source
        for f in ffts
    )
    assert all(f.dtypes == ("complex64",) for f in ffts)

    table = report.format()
    for needle in ("unet.mid_block.rope", "aten::_adaptive_avg_pool3d", "scheduler", "fourier_filter"):
        assert needle in table
    assert json.loads(json.dumps(report.to_dict()))["counts"]["error"] == len(report.errors)


def test_assert_no_mps_hazards_fails_with_the_table_and_honours_allow(hazardous_pipe: Any) -> None:
    with pytest.raises(AssertionError, match=r"MPS hazard\(s\) in StableDiffusionPipeline") as info:
        assert_no_mps_hazards(hazardous_pipe)
    assert "unet.mid_block.pool" in str(info.value)
    report = assert_no_mps_hazards(
        hazardous_pipe, allow=("float64", "missing_kernel", "dims", "torch.fft.fftn")
    )
    assert report.findings  # tolerated, still reported


def test_the_same_hazards_raise_mps_exceptions(hazardous_pipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = hazardous_pipe
    inputs = default_inputs(pipe)
    with EmulatedMPS(fallback=False):
        pipe.to("mps")
        with pytest.raises(TypeError) as info:  # the scheduler's float64 table, first thing in the run
            pipe(**inputs)
        assert str(info.value) == FLOAT64
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        with pytest.raises(TypeError, match=re.escape(FLOAT64)):  # then the RoPE table
            pipe(**default_inputs(pipe))
        x = torch.ones(2, 8, 4, 4, device="mps")
        mid = pipe.unet.mid_block
        with pytest.raises(NotImplementedError) as missing:
            mid.pool(x)
        assert str(missing.value) == missing_kernel_message("aten::_adaptive_avg_pool3d")
        with pytest.raises(RuntimeError, match=re.escape("dimensions <= 16, but got 17.")):
            mid.deep(x)
        with pytest.raises(TypeError, match="Trying to convert ComplexDouble to the MPS backend"):
            torch.fft.fftn(x.to(torch.complex128))
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    with EmulatedMPS(), pytest.warns(UserWarning, match="will fall back to run on the CPU"):
        assert mid.pool(torch.ones(2, 8, 4, 4, device="mps")).is_mps


# -- production sizes ----------------------------------------------------------------------------------
def _full_res_attention_unet() -> UNet2DConditionModel:
    """An SD-1.5-like layout in miniature: self-attention at full latent resolution, 4 heads. The score
    matrix is batch*heads*(h*w)**2*4 bytes: 8 GiB at 1024x1024 (latent 128), 0.5 GiB at 512x512."""
    with torch.device("meta"):  # no weights allocated at all
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,  # Diffusers reads this as the number of heads here
            norm_num_groups=8,
        )


def _trace(unet: UNet2DConditionModel, size: int) -> AuditReport:
    latent = size // 8
    return audit_module(
        unet,
        spec(2, 4, latent, latent),
        999,
        encoder_hidden_states=spec(2, 77, 32),
        module_name="unet",
    )


def test_attention_scores_abort_only_at_high_resolution_found_by_the_meta_trace() -> None:
    unet = _full_res_attention_unet()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    small = _trace(unet, 512)
    assert small.completed and small.findings == (), small.format()
    big = _trace(unet, 1024)
    assert big.completed and big.output.sample.shape == (2, 4, 128, 128)
    scores = [f for f in big.findings if f.kind == "attention_scores"]
    assert scores and {f.severity for f in scores} == {"abort"}
    self_attention = [f for f in scores if f.module and f.module.endswith("attn1")]
    assert {f.module for f in self_attention} == {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1",
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    }
    assert all(f.nbytes == 2 * 4 * (128 * 128) ** 2 * 4 for f in self_attention)
    assert all(f.source and "attention_processor.py" in f.source for f in scores)
    assert "8.0 GiB" in big.format()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 512 * 1024  # the 8 GiB score matrices (and the activations) were never allocated


def test_meta_trace_reports_float64_with_the_mps_branch_taken() -> None:
    # UNet2DConditionModel makes its timestep tensor float64 for a float timestep, except on MPS
    # (unet_2d_condition.py get_time_embed); the trace takes the MPS branch, so there is no false alarm.
    report = _trace(_full_res_attention_unet(), 256)
    assert report.findings == ()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Float64Rope())
    traced = audit_module(model, spec(2, 4), module_name="transformer")
    finding = _one(traced, "float64")
    assert finding.module == "transformer.1" and finding.source and finding.source.startswith(HERE)


def test_meta_trace_never_touches_the_module() -> None:
    model = torch.nn.Linear(4, 4)
    weight = model.weight
    report = audit_module(model, torch.ones(3, 4))
    assert report.completed and report.output.shape == (3, 4) and report.output.is_mps
    assert model.weight is weight and weight.device.type == "cpu"


def test_abort_during_an_audit_is_reported_not_raised() -> None:
    class Huge(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.empty(2**31, 3, device=x.device)

    class Pipe:
        def __init__(self) -> None:
            self.huge = Huge()
            self.components = {"huge": self.huge}

        @property
        def device(self) -> torch.device:
            return next(iter(self.huge.parameters()), torch.empty(0)).device

        def to(self, device: Any) -> Pipe:
            self.huge.to(device)
            return self

        def __call__(self, output_type: str = "np", **_: Any) -> Any:
            return self.huge(torch.ones(1, device="mps"))

    report = audit(Pipe(), inputs={})
    assert not report.completed and report.stopped_by is not None
    assert report.stopped_by.startswith("MPSAbortError")
    (finding,) = report.aborts
    assert finding.kind == "buffer" and finding.module == "huge" and finding.nbytes == 2**31 * 3 * 4
    with pytest.raises(AssertionError, match="the run stopped"):
        assert_no_mps_hazards(Pipe(), inputs={}, allow=("buffer",))
    assert isinstance(MPSAbortError("x"), RuntimeError)


# -- traced pipeline audits -----------------------------------------------------------------------------
def _keys(report: AuditReport) -> list[tuple[Any, ...]]:
    return sorted(
        (f.kind, f.severity, f.op, f.module, f.source, f.count, f.dtypes, f.shapes) for f in report.findings
    )


def test_a_traced_audit_reports_what_a_real_run_reports(hazardous_pipe: Any) -> None:
    real = audit(hazardous_pipe, trace=False)
    traced = audit(hazardous_pipe, trace=True)
    assert not real.traced and traced.traced
    assert _keys(traced) == _keys(real) and len(real.findings) == 6  # module paths and source lines too
    assert traced.output is None and real.output is not None  # a trace computes no values
    assert "models traced on meta tensors" in traced.target_label
    text = traced.format()
    assert "traced: the models ran on meta tensors" in text and "estimated peak memory" in text
    data = json.loads(json.dumps(traced.to_dict()))
    assert data["traced"] is True and data["memory"]["weights_bytes"] > 0
    assert hazardous_pipe.device.type == "cpu"


def test_a_large_audit_is_traced_and_names_the_oversized_attention_scores(pipelines: Any) -> None:
    pipe = pipelines("tiny-sd")
    weight = pipe.unet.conv_in.weight.data_ptr()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = audit(pipe, height=1024, width=1024)  # 1024x1024 > TRACE_ABOVE_PIXELS: traced automatically
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert report.traced and report.completed, report.format()
    scores = {f.module: f for f in report.findings if f.kind == "attention_scores"}
    # tiny-sd: VAE factor 2, so the latent is 512x512; the UNet attends at 256x256 (2 heads, CFG batch 2),
    # the VAE decoder's mid block at 512x512 (1 head).
    unet = 2 * 2 * (256 * 256) ** 2 * 4
    expected = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1": unet,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1": unet,
        "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1": unet,
        "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1": unet,
        "vae.decoder.mid_block.attentions.0": (512 * 512) ** 2 * 4,
    }
    assert {m: f.nbytes for m, f in scores.items()} == expected
    assert all(
        f.severity == "abort" and "attention_processor.py" in (f.source or "") for f in scores.values()
    )
    assert grown_kib < 1024 * 1024  # terabytes of scores, gigabytes of activations: none allocated
    assert pipe.device.type == "cpu" and pipe.unet.conv_in.weight.data_ptr() == weight  # weights untouched


def test_output_pixels_counts_every_image_of_a_call() -> None:
    assert output_pixels({"height": 512, "width": 512}) == TRACE_ABOVE_PIXELS
    assert output_pixels({"height": 64, "width": 32, "prompt": ["a", "b"], "num_images_per_prompt": 3}) == (
        64 * 32 * 6
    )
    assert output_pixels({"height": 64, "width": 64, "batch_size": 4}) == 64 * 64 * 4
    assert output_pixels({"prompt": "a"}) == 0  # no size asked: never traced automatically
