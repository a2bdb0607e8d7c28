"""MPS's rules beyond "does the op have a kernel": ops reached only inside composite kernels, CPU fallbacks
above their decompositions, Python-registered kernels, shape rules, per-dtype gaps and the complex64
allow-list, backward passes, documented CPU arguments, and the odd corners of ``.to()`` and sparse tensors.

Where the answer depends on the installed torch, the test reads it from the installed torch (its yaml, its
dispatcher, its ``common_mps.py``) first, so it holds on every release instead of on one.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from pytest_mps.emulation import EmulatedMPS, is_emulated, to_cpu
from pytest_mps.emulation.function_rules import function_rules
from pytest_mps.emulation.mps_expectations import load_expectations
from pytest_mps.emulation.op_coverage import KernelStatus, kernel_status, load_coverage


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _missing(op: str) -> bool:
    return kernel_status(op) is KernelStatus.MISSING


def _errors(emu: EmulatedMPS) -> list[tuple[str, str]]:
    return [(f.kind, f.op) for f in emu.findings if f.severity in ("error", "abort")]


# -- ops reached inside CompositeExplicitAutograd kernels ------------------------------------------------
COMPOSITE_CALLS: list[tuple[str, Callable[[], object]]] = [
    # (the op the composite kernel calls, the public call on the emulated device)
    (
        "aten::put_",
        lambda: torch.put(
            torch.zeros(4, device="mps"), torch.tensor([1], device="mps"), torch.ones(1, device="mps")
        ),
    ),
    ("aten::logspace.out", lambda: torch.logspace(0, 1, 5, device="mps")),
    ("aten::frexp.Tensor_out", lambda: torch.frexp(torch.ones(3, device="mps"))),
    ("aten::_linalg_eigh", lambda: torch.linalg.pinv(torch.eye(3, device="mps"), hermitian=True)),
]


@pytest.mark.parametrize(("inner", "call"), COMPOSITE_CALLS, ids=[c[0] for c in COMPOSITE_CALLS])
def test_ops_inside_composite_kernels_are_judged(inner: str, call: Callable[[], object]) -> None:
    """A CPU trace only sees ``put``; MPS runs put's composite kernel, which calls ``put_``. The emulation
    raises exactly when the installed torch lacks the inner op's kernel."""
    expected = _missing(inner)
    with EmulatedMPS(collect=True, fallback=False) as emu:
        call()
    reported = {op for kind, op in _errors(emu) if kind == "missing_kernel"}
    assert (inner in reported) is expected, (inner, reported, load_coverage().explain(inner))
    if expected:
        with (
            EmulatedMPS(fallback=False),
            pytest.raises(NotImplementedError, match="not currently implemented"),
        ):
            call()


def test_always_fallback_ops_stay_fallbacks_above_their_decomposition() -> None:
    """MPS registers ``linalg_svd`` itself to run on the CPU: ``torch.linalg.svd`` and ``torch.svd`` work
    (slowly) although the CPU decomposes them into ``_linalg_svd``; ``svdvals`` calls ``_linalg_svd``
    directly and is refused where that op has no MPS kernel."""
    assert kernel_status("aten::linalg_svd") is KernelStatus.ALWAYS_FALLBACK
    a = torch.randn(4, 3)
    with EmulatedMPS(collect=True, fallback=False) as emu:
        am = a.to("mps")
        u, s, vh = torch.linalg.svd(am, full_matrices=False)
        torch.svd(am)
    assert not _errors(emu)
    assert {(f.kind, f.severity, f.op) for f in emu.findings} == {
        ("fallback", "fallback", "aten::linalg_svd")
    }
    assert torch.allclose(to_cpu(u) @ torch.diag(to_cpu(s)) @ to_cpu(vh), a, atol=1e-5)
    with EmulatedMPS(collect=True, fallback=False) as emu:
        torch.linalg.svdvals(a.to("mps"))
    assert bool(_errors(emu)) is _missing("aten::_linalg_svd")


def test_kernels_registered_from_python_count() -> None:
    """``torch/_refs/linalg`` registers ``linalg_lu_solve.out`` for MPS from Python: the dispatcher knows,
    the yaml does not."""
    registered = torch._C._dispatch_get_registrations_for_dispatch_key("MPS")
    if "aten::linalg_lu_solve.out" not in registered:
        pytest.skip("this torch registers no MPS kernel for linalg_lu_solve.out from Python")
    coverage = load_coverage()
    assert coverage.status("linalg_lu_solve.out") is KernelStatus.NATIVE
    assert "dispatcher" in coverage.explain("linalg_lu_solve.out")
    lu, pivots = torch.linalg.lu_factor(torch.eye(3) * 2)
    with EmulatedMPS(fallback=False):
        x = torch.linalg.lu_solve(lu.to("mps"), pivots.to("mps"), torch.ones(3, 1, device="mps"))
    assert torch.allclose(to_cpu(x), torch.full((3, 1), 0.5))


# -- shape rules ---------------------------------------------------------------------------------------------
def test_adaptive_average_pooling_needs_divisible_sizes() -> None:
    listed = "nn.functional.adaptive_avg_pool2d" in load_expectations().lists.get(
        "UNIMPLEMENTED_XFAILLIST", {}
    )
    if not listed:
        pytest.skip("this torch's MPS tests no longer expect non-divisible adaptive pooling to fail")
    with EmulatedMPS():
        x = torch.ones(1, 2, 6, 6, device="mps")
        assert F.adaptive_avg_pool2d(x, 3).shape == (1, 2, 3, 3)  # 6 / 3: fine
        assert F.adaptive_avg_pool2d(x, 1).shape == (1, 2, 1, 1)
        with pytest.raises(
            NotImplementedError, match=re.escape("input sizes must be divisible by output sizes")
        ):
            F.adaptive_avg_pool2d(x, 4)  # the same signature as the calls above: judged per call
        with pytest.raises(NotImplementedError, match="divisible"):
            F.interpolate(x, size=(4, 4), mode="area")
        with pytest.raises(NotImplementedError, match="divisible"):
            F.adaptive_avg_pool1d(torch.ones(1, 2, 7, device="mps"), 3)
        assert F.interpolate(x, size=(3, 3), mode="area").is_mps


# -- dtype rules from PyTorch's own MPS test expectations ----------------------------------------------------
def _gap(key: str, dtype: str) -> bool:
    listed = load_expectations().lists.get("UNIMPLEMENTED_XFAILLIST", {})
    return key in listed and (listed[key] is None or dtype in listed[key])


def test_per_dtype_gaps_follow_pytorchs_lists() -> None:
    if not _gap("nn.functional.conv2d", "int64"):
        pytest.skip("this torch's MPS tests expect int64 convolutions to work")
    weight = torch.ones(1, 1, 3, 3, dtype=torch.int64)
    with EmulatedMPS():
        x = torch.ones(1, 1, 5, 5, dtype=torch.int64, device="mps")
        with pytest.raises(RuntimeError, match=r"nn\.functional\.conv2d for int64"):
            torch.nn.functional.conv2d(x, weight.to("mps"))
        conv = torch.nn.Conv2d(1, 1, 3).to("mps")
        assert conv(x.float()).is_mps  # float32 convolutions are what MPS runs
    with EmulatedMPS(collect=True) as emu:
        torch.nn.functional.conv2d(torch.ones(1, 1, 5, 5, dtype=torch.int64, device="mps"), weight.to("mps"))
    assert [kind for kind, _ in _errors(emu)] == ["unsupported_dtype"]


def test_variant_entries_apply_only_to_their_variant() -> None:
    if not _gap("scatter_reduceprod", "int64"):
        pytest.skip("this torch's MPS tests expect scatter_reduce(prod) on int64 to work")
    src = torch.arange(4)
    index = torch.tensor([0, 0, 1, 1])
    with EmulatedMPS(collect=True) as emu:
        base = torch.ones(2, dtype=torch.int64, device="mps")
        base.scatter_reduce(0, index.to("mps"), src.to("mps"), reduce="sum")
        assert not _errors(emu)
        base.scatter_reduce(0, index.to("mps"), src.to("mps"), reduce="prod")
    assert [kind for kind, _ in _errors(emu)] == ["unsupported_dtype"]
    assert "scatter_reduceprod" in emu.findings[-1].message


def test_complex64_only_for_the_ops_pytorch_supports() -> None:
    rules = function_rules()
    refused = next(
        (f for f in (torch.linalg.det, torch.linalg.inv) if rules.complex_ok.get(f) is False), None
    )
    if rules.complex_ok.get(torch.fft.fftn) is not True or refused is None:
        pytest.skip("this torch's complex lists differ from the cases this test uses")
    with EmulatedMPS(collect=True) as emu:
        z = torch.fft.fftn(torch.ones(4, 4, device="mps"))
        (z * 2).real.sum()
        torch.fft.ifftn(z)
    assert not _errors(emu)  # FreeU's FFTs (diffusers #7569): supported
    with EmulatedMPS(), pytest.raises(RuntimeError, match="COMPLEX_OPS"):
        refused(torch.eye(2, dtype=torch.complex64, device="mps"))


# -- backward --------------------------------------------------------------------------------------------
def test_backward_ops_are_judged() -> None:
    backward_op = "aten::_upsample_bilinear2d_aa_backward.grad_input"
    if not _missing(backward_op) or _missing("aten::_upsample_bilinear2d_aa.out"):
        pytest.skip("this torch does not have a forward-only antialiased bilinear upsample on MPS")
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    with EmulatedMPS(fallback=False):
        xm = x.detach().to("mps").requires_grad_()
        y = F.interpolate(xm, size=(4, 4), mode="bilinear", antialias=True)  # the forward has a kernel
        with pytest.raises(NotImplementedError, match="upsample_bilinear2d_aa_backward"):
            y.sum().backward()
        z = F.interpolate(xm, size=(4, 4), mode="bilinear")
        (grad,) = torch.autograd.grad(z.sum(), xm)
        assert grad.is_mps


# -- devices ---------------------------------------------------------------------------------------------
def test_documented_cpu_arguments_may_stay_on_the_cpu() -> None:
    cpu_index = torch.tensor([0, 2])
    with EmulatedMPS():
        x = torch.zeros(4, device="mps")
        out = torch.index_put(x, (cpu_index,), torch.ones(2, device="mps"))
        assert to_cpu(out).tolist() == [1.0, 0.0, 1.0, 0.0]
        x.index_put_((cpu_index,), torch.tensor(3.0))  # a 0-dim CPU value acts as a scalar
        parts = torch.tensor_split(
            torch.arange(6, device="mps"), torch.tensor([2, 4])
        )  # must be a CPU tensor
        assert [p.tolist() for p in map(to_cpu, parts)] == [[0, 1], [2, 3], [4, 5]]
        with pytest.raises(RuntimeError, match="same device"):
            torch.index_put(x, (cpu_index,), torch.ones(2))  # values are not an index: same device
        with pytest.raises(RuntimeError, match="same device"):
            torch.add(x, torch.ones(4))


# -- .to() and sparse tensors ------------------------------------------------------------------------
def test_to_accepts_copy_by_position() -> None:
    with EmulatedMPS():
        x = torch.ones(3, device="mps")
        copied = x.to("mps", torch.float32, False, True)
        assert is_emulated(copied) and copied is not x
        copied.add_(1)
        assert to_cpu(x).tolist() == [1.0, 1.0, 1.0]
        assert x.to(torch.float32, False, True) is not x
        assert x.to(x, False, True) is not x
        assert x.to("mps", torch.float32, False, False) is x


def test_sparse_csr_tensors_move_and_are_judged_by_the_sparse_kernels() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        csr = torch.eye(3).to_sparse_csr()
        with EmulatedMPS(collect=True, fallback=False) as emu:
            m = csr.to("mps")
            assert m.is_mps and m.layout is torch.sparse_csr and "layout=torch.sparse_csr" in repr(m)
            dense = m.to_dense()
            torch.sparse.mm(m, torch.ones(3, 2, device="mps"))
    assert torch.equal(to_cpu(dense), torch.eye(3))
    keys = load_coverage().dispatch_keys.get("addmm") or frozenset()
    addmm_missing = "SparseCsrCPU" in keys and "SparseCsrMPS" not in keys
    assert (("missing_kernel", "aten::addmm") in _errors(emu)) is addmm_missing
    message = next((f.message for f in emu.findings if f.op == "aten::addmm"), "")
    assert not addmm_missing or "'SparseCsrMPS' backend" in message


def test_bfloat16_follows_the_macos_rule() -> None:
    """bfloat16 needs macOS 14: a portability warning only where the installed torch runs on macOS 13."""
    from pytest_mps.emulation.rules import min_macos

    assert (
        min_macos("2.8.0") == (13, 0) and min_macos("2.9.1+cpu") == (14, 0) and min_macos("2.5.1") == (12, 3)
    )
    with EmulatedMPS(collect=True) as emu:
        torch.ones(2, dtype=torch.bfloat16, device="mps") * 2
    warned = [f for f in emu.findings if f.dtypes == ("bfloat16",)]
    assert bool(warned) is (min_macos() < (14, 0))
    assert all(f.severity == "warning" for f in warned)
