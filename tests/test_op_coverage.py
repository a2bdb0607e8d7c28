"""Tests for pytest_mps.emulation.op_coverage: the MPS op-coverage table read from torch's own yaml."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.version import Version
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_mps.emulation.kernel_trace import walk_call
from pytest_mps.emulation.mps_expectations import load_expectations
from pytest_mps.emulation.op_coverage import (
    CPU_ONLY_HELPER_OPS,
    MPS_CPU_FALLBACK_OPS,
    KernelStatus,
    OpCoverage,
    OpCoverageError,
    default_yaml_path,
    has_mps_kernel,
    kernel_status,
    load_coverage,
    missing_ops,
    normalize_op_name,
    parse_native_functions,
)

NATIVE, COMPOSITE, FALLBACK, MISSING = (
    KernelStatus.NATIVE,
    KernelStatus.COMPOSITE,
    KernelStatus.ALWAYS_FALLBACK,
    KernelStatus.MISSING,
)


class _RecordOps(TorchDispatchMode):
    """Records every op that reaches the Python dispatch key (what the MPS emulation sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.add(func)
        return func(*args, **(kwargs or {}))


def _record(fn: Callable[[], object]) -> set[Any]:
    recorder = _RecordOps()
    with recorder:
        fn()
    return recorder.ops


# --- the installed torch's yaml ------------------------------------------------------------------------


def test_default_yaml_is_the_installed_torchs() -> None:
    path = default_yaml_path()
    assert path.name == "native_functions.yaml"
    assert path.is_file()
    coverage = load_coverage()
    assert coverage.yaml_path == path.resolve()
    # The wheel's metadata says "2.15.0" where torch.__version__ says "2.15.0+cu132": same release.
    assert coverage.torch_version is not None
    assert Version(coverage.torch_version).public == Version(torch.__version__).public
    counts = coverage.counts
    assert sum(counts.values()) == len(coverage) > 2500
    assert counts[NATIVE] > 500 and counts[COMPOSITE] > 500 and counts[MISSING] > 0


def test_default_coverage_is_cached() -> None:
    assert load_coverage() is load_coverage()
    assert load_coverage(default_yaml_path()) is load_coverage()


@pytest.mark.parametrize(
    "op",
    [
        "aten::add.Tensor",
        "aten::mm",
        "aten::_mps_convolution",
        "aten::_mps_convolution_transpose",
        "aten::_scaled_dot_product_attention_math_for_mps",
        "aten::native_group_norm",
        "aten::_fft_c2c",
        "aten::upsample_nearest2d",
        "aten::silu_backward",  # CompositeImplicit in its own entry, but a backend kernel via its delegate
    ],
)
def test_mps_native_ops(op: str) -> None:
    assert kernel_status(op) is NATIVE
    assert has_mps_kernel(op)


def test_op_objects_and_spellings_agree() -> None:
    assert kernel_status(torch.ops.aten.add.Tensor) is NATIVE
    assert kernel_status(torch.ops.aten.mm.default) is NATIVE
    assert kernel_status(torch.ops.aten._fft_c2c.default) is NATIVE
    for spelling in (
        "aten::_fft_c2c",
        "aten._fft_c2c.default",
        "_fft_c2c",
        "torch.ops.aten._fft_c2c.default",
    ):
        assert kernel_status(spelling) is NATIVE, spelling
    assert normalize_op_name(torch.ops.aten.add.Tensor) == ("aten", "add.Tensor")
    assert normalize_op_name(torch.ops.aten._fft_c2c.default) == ("aten", "_fft_c2c")
    assert normalize_op_name(torch.ops.aten.add) == ("aten", "add")
    assert normalize_op_name("aten.add.Tensor") == ("aten", "add.Tensor")
    # A packet with no default overload answers for its best-covered overload.
    assert kernel_status(torch.ops.aten.add) is NATIVE


def test_structured_op_resolves_through_its_delegate() -> None:
    coverage = load_coverage()
    assert coverage.status("add.out") is NATIVE
    assert coverage.status("add.Tensor") is NATIVE
    assert "structured_delegate add.out" in coverage.explain("aten::add.Tensor")


@pytest.mark.parametrize("op", ["aten::scaled_dot_product_attention", "aten::conv2d", "aten::convolution"])
def test_composite_ops(op: str) -> None:
    assert kernel_status(op) is COMPOSITE
    assert has_mps_kernel(op)


def test_cpu_sdpa_helpers_map_to_their_mps_counterparts() -> None:
    forward = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert kernel_status(forward) is kernel_status("aten::_scaled_dot_product_attention_math_for_mps")
    assert kernel_status(forward) is not MISSING
    assert kernel_status("aten::_scaled_dot_product_flash_attention_for_cpu_backward") is not MISSING
    assert "_scaled_dot_product_attention_math_for_mps" in load_coverage().explain(forward)


def test_mps_fallback_table() -> None:
    assert kernel_status("aten::embedding_renorm_") is FALLBACK
    assert kernel_status("aten::linalg_svd") is FALLBACK
    assert kernel_status("aten::upsample_nearest3d.vec") is FALLBACK
    assert kernel_status("embedding_renorm") is FALLBACK  # its autogen functional variant
    assert not has_mps_kernel("aten::embedding_renorm_")


def test_tables_name_real_ops() -> None:
    """Canary for torch upgrades: every hand-kept table entry must still exist in the yaml."""
    coverage = load_coverage()
    for name in MPS_CPU_FALLBACK_OPS | set(CPU_ONLY_HELPER_OPS) | set(CPU_ONLY_HELPER_OPS.values()):
        assert name in coverage, f"{name} is no longer in {coverage.yaml_path}: update op_coverage's tables"


# Public calls that PyTorch's own MPS tests have listed as failing for every dtype (an OpInfo key of
# UNIMPLEMENTED_XFAILLIST, or an MPS expected failure of the OpInfo itself), with the aten op they reach
# that lacks an MPS kernel: two of them only inside a CompositeExplicitAutograd kernel (put -> put_,
# logspace -> logspace.out).
PYTORCH_LISTED = [
    ("linalg.eigh", "aten::_linalg_eigh", lambda: torch.linalg.eigh(torch.eye(3))),
    (
        "nn.functional.adaptive_avg_pool3d",
        "aten::_adaptive_avg_pool3d",
        lambda: torch.nn.functional.adaptive_avg_pool3d(torch.ones(1, 2, 4, 4, 4), 2),
    ),
    (
        "nn.functional.channel_shuffle",
        "aten::channel_shuffle",
        lambda: torch.nn.functional.channel_shuffle(torch.ones(1, 4, 2, 2), 2),
    ),
    ("put", "aten::put_", lambda: torch.put(torch.zeros(4), torch.tensor([1]), torch.tensor([2.0]))),
    ("logspace", "aten::logspace.out", lambda: torch.logspace(0, 1, 5)),
]


@pytest.mark.parametrize(("key", "expected_op", "run"), PYTORCH_LISTED, ids=[c[0] for c in PYTORCH_LISTED])
def test_missing_kernels_agree_with_pytorchs_own_mps_tests(
    key: str, expected_op: str, run: Callable[[], object]
) -> None:
    """The coverage table (yaml + dispatcher) and PyTorch's MPS test lists, two independent records of the
    installed torch, agree: an op the lists expect to fail reaches an op without an MPS kernel, and one
    they no longer list (a later torch implemented it) does not."""
    expectations = load_expectations()
    if expectations.source is None:
        pytest.skip("this torch ships no common_mps.py to compare with")
    listed = (
        key in expectations.lists.get("UNIMPLEMENTED_XFAILLIST", {})
        or expectations.forward_outcome(key, "float32") == "fails"
    )
    report = walk_call(lambda: run(), (), {})
    assert report is not None
    missing = {h.op_name for h in report.kernels if not h.always_fallback}
    assert (expected_op in missing) is listed, (key, missing)
    if listed:
        assert kernel_status(expected_op) is MISSING
        assert expected_op.removeprefix("aten::") in missing_ops()
        assert not has_mps_kernel(expected_op)


def test_non_aten_and_unknown_ops() -> None:
    assert kernel_status(torch.ops.prims.convert_element_type.default) is COMPOSITE
    assert kernel_status("mylib::my_op") is COMPOSITE
    # aten ops registered outside the yaml are looked up in the dispatcher for a composite kernel.
    assert kernel_status("aten::get_gradients") is COMPOSITE
    assert kernel_status("aten::quantized_lstm.input") is MISSING
    assert kernel_status("aten::definitely_not_an_op") is MISSING


def test_parser_agrees_with_pyyaml() -> None:
    """The dedicated line parser extracts the same fields as a real YAML parser."""
    yaml = pytest.importorskip("yaml")
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        pytest.skip("libyaml's C loader is not available (the pure-Python loader is too slow)")
    path = default_yaml_path()
    parsed = parse_native_functions(path)
    reference = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    for entry in reference:
        name = entry["func"].split("(", 1)[0].strip()
        mine = parsed[name]
        dispatch = entry.get("dispatch")
        keys = None if dispatch is None else {k.strip() for key in dispatch for k in key.split(",")}
        autogen = tuple(a.strip() for a in (entry.get("autogen") or "").split(",") if a.strip())
        assert (mine.dispatch, mine.structured_delegate, mine.autogen) == (
            keys,
            entry.get("structured_delegate"),
            autogen,
        ), name
    assert sum(1 for e in parsed.values() if e.autogen_of is None) == len(reference)


# --- the rules, on a synthetic yaml (independent of the torch version) -------------------------------

SYNTHETIC = """\
# A comment line, as in the real file.
- func: native_op(Tensor self) -> Tensor
  variants: function, method
  dispatch:
    CPU, CUDA, MPS: native_op   # trailing comment
  autogen: native_op.out

- func: mps_mtia(Tensor self) -> Tensor
  dispatch:
    MPS, MTIA: mps_mtia

- func: cpu_only(Tensor self) -> Tensor
  dispatch:
    CPU: cpu_only
    CUDA: cpu_only_cuda
  autogen: cpu_only.out

- func: sparse_mps_only(Tensor self) -> Tensor
  dispatch:
    CPU: a
    SparseMPS, SparseCsrMPS: b

- func: structured.out(Tensor self, *, Tensor(a!) out) -> Tensor(a!)
  structured: True
  precomputed:
  - dim -> int dim
  dispatch:
    CPU, MPS: structured_out

- func: structured(Tensor self) -> Tensor
  structured_delegate: structured.out
  dispatch:
    SparseCPU: structured_sparse

- func: structured_cpu.out(Tensor self, *, Tensor(a!) out) -> Tensor(a!)
  structured: True
  ufunc_inner_loop:
    Generic: add (AllAndComplex, BFloat16, Half, ComplexHalf)
  dispatch:
    CPU: structured_cpu_out

- func: structured_cpu(Tensor self) -> Tensor
  structured_delegate: structured_cpu.out

- func: structured_cpu_composite(Tensor self) -> Tensor
  structured_delegate: structured_cpu.out
  dispatch:
    CompositeImplicitAutograd: math_version

- func: structured_mps_composite(Tensor self) -> Tensor
  structured_delegate: structured.out
  dispatch:
    CompositeImplicitAutograd: math_version

- func: implicit(Tensor self, str mode="a(b)") -> Tensor
  tags: [core, pointwise]

- func: explicit(Tensor self) -> Tensor
  dispatch:
    CompositeExplicitAutograd: explicit

- func: explicit_nonfunctional(Tensor self) -> Tensor
  dispatch:
    CompositeExplicitAutogradNonFunctional: e

- func: implicit_key(Tensor self) -> Tensor
  dispatch:
    CompositeImplicitAutograd: i
    NestedTensorCPU: n

- func: nested_composite_only(Tensor self) -> Tensor
  dispatch:
    CPU: c
    CompositeImplicitAutogradNestedTensor: n

- func: empty_dispatch(Tensor self) -> Tensor
  dispatch: {}

- func: overloaded.Tensor(Tensor self, Tensor other) -> Tensor
  dispatch:
    CPU: o

- func: overloaded.Scalar(Tensor self, Scalar other) -> Tensor
  dispatch:
    MPS: o

- func: embedding_renorm_(Tensor(a!) self, Tensor indices, float max_norm, float norm_type) -> Tensor(a!)
  dispatch:
    CPU: embedding_renorm_cpu_
  autogen: embedding_renorm, embedding_renorm.out

- func: linalg_svd(Tensor A, bool full_matrices=True) -> (Tensor U, Tensor S, Tensor Vh)

- func: col2im(Tensor self) -> Tensor
  dispatch:
    CPU: col2im_cpu
    MPS: col2im_mps

- func: _scaled_dot_product_flash_attention_for_cpu(Tensor query) -> (Tensor output, Tensor logsumexp)
  dispatch:
    CPU: f

- func: _scaled_dot_product_attention_math_for_mps(Tensor query) -> (Tensor, Tensor)
  dispatch:
    MPS: m

- func: _native_multi_head_attention(Tensor query) -> (Tensor, Tensor)
  dispatch:
    CPU: mha

- func: mkldnn_thing(Tensor self) -> Tensor
  dispatch:
    MkldnnCPU: t

- func: to_mkldnn(Tensor self) -> Tensor
  dispatch:
    CPU: dense_to_mkldnn
"""


@pytest.fixture
def synthetic(tmp_path: Path) -> OpCoverage:
    path = tmp_path / "native_functions.yaml"
    path.write_text(SYNTHETIC, encoding="utf-8")
    return load_coverage(path)


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("native_op", NATIVE),  # MPS in a combined key
        ("mps_mtia", NATIVE),  # `MPS, MTIA: ...`
        ("cpu_only", MISSING),  # backends listed, MPS not among them
        ("sparse_mps_only", MISSING),  # SparseMPS is not a dense MPS kernel
        ("structured.out", NATIVE),
        ("structured", NATIVE),  # via structured_delegate; its own keys are for sparse
        ("structured_cpu", MISSING),  # delegate without MPS
        ("structured_cpu_composite", COMPOSITE),  # delegate without MPS, but a composite default
        ("structured_mps_composite", NATIVE),  # a backend kernel beats the composite one
        ("implicit", COMPOSITE),  # no dispatch: CompositeImplicitAutograd
        ("explicit", COMPOSITE),
        ("explicit_nonfunctional", COMPOSITE),
        ("implicit_key", COMPOSITE),
        ("nested_composite_only", MISSING),  # the NestedTensor composite does not serve dense tensors
        ("empty_dispatch", MISSING),  # `dispatch: {}`: no kernel at all
        ("native_op.out", COMPOSITE),  # autogen of a native op: a generated composite wrapper
        ("cpu_only.out", MISSING),  # autogen of an op without MPS kernel
        ("embedding_renorm_", FALLBACK),  # MPSFallback.mm
        ("embedding_renorm", FALLBACK),  # its autogen functional variant
        ("linalg_svd", FALLBACK),  # MPSFallback.mm beats a CompositeImplicit entry
        ("col2im", NATIVE),  # a fallback-table entry that has a native kernel in this yaml
        ("_scaled_dot_product_flash_attention_for_cpu", NATIVE),  # CPU helper -> its MPS counterpart
        ("_native_multi_head_attention", MISSING),  # counterpart absent from this yaml: own status
        ("mkldnn_thing", COMPOSITE),  # mkldnn-only helper: never selected for MPS tensors
        ("to_mkldnn", MISSING),  # but user code converting to mkldnn does fail on MPS
    ],
)
def test_synthetic_rules(synthetic: OpCoverage, op: str, expected: KernelStatus) -> None:
    assert synthetic.status(op) is expected, synthetic.explain(op)
    assert synthetic.has_mps_kernel(op) is (expected in (NATIVE, COMPOSITE))


def test_synthetic_lookups_and_counts(synthetic: OpCoverage) -> None:
    assert synthetic.status("aten::native_op") is NATIVE
    assert synthetic.status("aten.native_op.default") is NATIVE
    assert synthetic.status("aten::overloaded") is NATIVE  # best overload of a packet
    assert synthetic.status("aten::overloaded.Tensor") is MISSING
    assert synthetic.status("prims::whatever") is COMPOSITE
    assert "native_op.out" in synthetic and "aten::native_op" in synthetic and "nope" not in synthetic
    assert sum(synthetic.counts.values()) == len(synthetic)
    assert synthetic.names_with(MISSING) >= {"cpu_only", "empty_dispatch", "to_mkldnn"}
    assert synthetic.explain("structured").startswith("native: structured_delegate structured.out")


def test_rewritten_file_is_reparsed(tmp_path: Path) -> None:
    path = tmp_path / "native_functions.yaml"
    path.write_text("- func: op(Tensor self) -> Tensor\n  dispatch:\n    CPU: op\n", encoding="utf-8")
    assert load_coverage(path).status("op") is MISSING
    assert load_coverage(path) is load_coverage(path)
    path.write_text("- func: op(Tensor self) -> Tensor\n  dispatch:\n    CPU, MPS: op\n", encoding="utf-8")
    assert load_coverage(path).status("op") is NATIVE


# --- errors --------------------------------------------------------------------------------------------


def _assert_helpful(error: pytest.ExceptionInfo[OpCoverageError], path: Path) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "reinstall torch" in message and "yaml_path" in message


def test_missing_yaml_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "native_functions.yaml"
    with pytest.raises(OpCoverageError, match="not found") as error:
        load_coverage(path)
    _assert_helpful(error, path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "no `- func:` entries"),
        ("just: a mapping\n", "content before the first"),
        ("- func: op(Tensor self) -> Tensor\nstray: top-level\n", "unexpected top-level"),
        ("- func: not a schema\n", "malformed operator schema"),
        ("- func: op(Tensor self) -> Tensor\n  dispatch:\n    no colon here\n", "without `Key: kernel`"),
        ("- func: op(Tensor self) -> Tensor\n  dispatch: {CPU: op}\n", "unsupported inline dispatch"),
        ("- func: op(Tensor a) -> Tensor\n\n- func: op(Tensor b) -> Tensor\n", "duplicate entry"),
    ],
)
def test_corrupt_yaml_raises_a_clear_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "native_functions.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OpCoverageError, match=match) as error:
        load_coverage(path)
    _assert_helpful(error, path)


def test_binary_yaml_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "native_functions.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OpCoverageError, match="cannot read") as error:
        load_coverage(path)
    _assert_helpful(error, path)


# --- stock Diffusers code must raise no false alarm ----------------------------------------------------


@pytest.fixture
def diffusers_models() -> Iterator[Any]:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    yield diffusers


def test_tiny_diffusers_unet_and_vae_use_no_missing_op(diffusers_models: Any) -> None:
    """Every op a CPU run of a tiny UNet2DConditionModel (and VAE decode) dispatches runs on MPS.

    Stock Diffusers code runs on MPS, so a MISSING here is a false alarm to fix in the tables (typically a
    CPU-only helper op such as ``_scaled_dot_product_flash_attention_for_cpu``).
    """
    unet = diffusers_models.UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = diffusers_models.AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
    )
    latents = torch.randn(1, 4, 8, 8)
    text = torch.randn(1, 3, 8)

    def two_steps_then_train() -> None:
        sample = latents
        with torch.no_grad():
            for timestep in (999, 499):  # a 2-step denoising loop, then decode
                noise_pred = unet(sample, timestep, encoder_hidden_states=text).sample
                sample = sample - 0.1 * noise_pred
            image = vae.decode(sample).sample
            assert image.shape == (1, 3, 16, 16)
        # One training step too: the backward pass has CPU-only helpers of its own.
        loss = unet(latents, torch.tensor([10]), encoder_hidden_states=text).sample.pow(2).mean()
        loss.backward()

    ops = _record(two_steps_then_train)
    names = {op.name() for op in ops}
    assert "aten::convolution" in names and len(names) > 20
    false_alarms = {op.name(): load_coverage().explain(op) for op in ops if kernel_status(op) is MISSING}
    assert not false_alarms
