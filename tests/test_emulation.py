"""The emulated MPS target: device semantics, patched torch APIs (and their exact restoration), and MPS's
rules raised with MPS's own exception types and messages.

Plain pytest tests, no pytest-mps fixtures. Nothing here allocates more than a few MB: the 2**32-byte
rules are judged from requested sizes before anything is allocated.
"""

from __future__ import annotations

import copy
import pickle
import re
import resource
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from pytest_mps.emulation import (
    EmulatedMPS,
    MPSAbortError,
    emulated_mps,
    fallback_from_env,
    is_active,
    is_emulated,
    suspended,
    to_cpu,
)
from pytest_mps.emulation.errors import fallback_warning_message, missing_kernel_message
from pytest_mps.emulation.op_coverage import KernelStatus, kernel_status

FLOAT64 = (
    "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64. "
    "Please use float32 instead."
)
COMPLEX128 = "Trying to convert ComplexDouble to the MPS backend but it does not have support for that dtype."
# An op with no MPS kernel in this torch (3-D adaptive pooling: video models hit it); the test that uses
# it first checks that op_coverage agrees, so a torch that gains the kernel fails loudly here.
MISSING_OP = "aten::_adaptive_avg_pool3d"


def _no_mode_active() -> bool:
    return not torch._C._is_torch_function_mode_enabled()


def _torch_state() -> dict[str, Any]:
    """Everything the emulation patches, by identity."""
    modules = [torch.mps, torch.backends.mps, getattr(torch, "accelerator", None)]
    state: dict[str, Any] = {}
    for module in modules:
        if module is not None:
            state.update({f"{module.__name__}.{k}": id(v) for k, v in vars(module).items()})
    state["torch.Generator"] = id(torch.Generator)
    state["torch.load"] = id(torch.load)
    state["overwrite"] = torch.__future__.get_overwrite_module_params_on_conversion()
    state["mode"] = torch._C._is_torch_function_mode_enabled()
    return state


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
    threads make these tests several times slower; restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- device semantics ---------------------------------------------------------------------------------
def test_tensors_report_mps_and_compute_like_the_cpu() -> None:
    cpu = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    with EmulatedMPS():
        x = cpu.to("mps")
        assert x.device == torch.device("mps", 0)
        assert x.device.type == "mps" and x.is_mps and not x.is_cpu and x.get_device() == 0
        y = (x * 2 + 1).softmax(-1)
        assert y.device.type == "mps" and is_emulated(y)
        assert torch.equal(to_cpu(y), (cpu * 2 + 1).softmax(-1))
        z = torch.zeros(2, 3, device="mps") + torch.ones(2, 3, device=torch.device("mps"))
        assert z.is_mps and z.dtype == torch.float32
        assert torch.cat([x, z]).shape == (4, 3)
        assert "device='mps:0'" in repr(y)
        assert x.type() == "torch.mps.FloatTensor"
        assert x.new_zeros(3).is_mps and x.new_zeros(3, device="cpu").device.type == "cpu"
        values, index = x.max(dim=1)
        assert values.is_mps and index.is_mps and index.dtype == torch.int64
        assert [row.is_mps for row in x] == [True, True]


def test_host_conversions_work_as_on_a_mac() -> None:
    with EmulatedMPS():
        x = torch.from_numpy(np.arange(4, dtype=np.float32)).to("mps")
        assert x.is_mps
        assert x.cpu().device.type == "cpu" and not is_emulated(x.cpu())
        assert x.to("cpu").numpy().tolist() == [0.0, 1.0, 2.0, 3.0]
        assert x.float().is_mps and x.half().dtype == torch.float16
        assert x.sum().item() == 6.0 and x.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert x.numpy(force=True).tolist() == [0.0, 1.0, 2.0, 3.0]
        # numpy straight from an MPS tensor is a TypeError on a Mac too.
        with pytest.raises(TypeError, match=re.escape("can't convert mps:0 device type tensor to numpy")):
            x.numpy()
        with pytest.raises(TypeError, match=re.escape("Use Tensor.cpu()")):
            np.asarray(x)
        from PIL import Image

        image = (x.reshape(2, 2, 1).expand(2, 2, 3) * 60).to(torch.uint8).cpu().numpy()
        assert Image.fromarray(image).size == (2, 2)


def test_loading_onto_mps(tmp_path: Any) -> None:
    from safetensors.torch import load_file, save_file

    torch.save({"w": torch.ones(3), "n": [torch.zeros(2)]}, tmp_path / "x.pt")
    save_file({"w": torch.ones(3)}, tmp_path / "x.safetensors")
    with EmulatedMPS():
        loaded = torch.load(tmp_path / "x.pt", map_location="mps")
        assert loaded["w"].is_mps and loaded["n"][0].is_mps
        assert torch.load(tmp_path / "x.pt", map_location=torch.device("mps"))["w"].is_mps
        assert torch.load(tmp_path / "x.pt")["w"].device.type == "cpu"
        assert load_file(tmp_path / "x.safetensors", device="mps")["w"].is_mps


def test_module_to_mps_and_back() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GroupNorm(2, 8), torch.nn.SiLU()).eval()
    model.register_buffer("scale", torch.tensor(2.0))
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = model(x) * model.scale
    with EmulatedMPS(), torch.no_grad():
        model.to("mps")
        weight = model[0].weight
        assert weight.is_mps and isinstance(weight, torch.nn.Parameter) and weight.requires_grad
        assert next(model.parameters()).device.type == "mps" and model.scale.is_mps
        out = model(x.to("mps")) * model.scale
        assert out.is_mps and torch.equal(to_cpu(out), expected)
        model.to(torch.float16).to(torch.float32)
        assert model[0].weight.is_mps
        model.to("cpu")
    assert model[0].weight.device.type == "cpu" and not is_emulated(model[0].weight)
    assert type(model[0].weight) is torch.nn.Parameter


def test_outputs_equal_cpu_exactly_for_a_seeded_generator() -> None:
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    cpu_generator = torch.Generator("cpu").manual_seed(7)
    ref = conv(torch.randn(1, 3, 8, 8, generator=cpu_generator))
    with EmulatedMPS(), torch.no_grad():
        generator = torch.Generator("mps").manual_seed(7)
        assert generator.device.type == "mps" and isinstance(generator, torch.Generator)
        assert isinstance(cpu_generator, torch.Generator)  # generators made before still pass the check
        conv.to("mps")
        out = conv(torch.randn(1, 3, 8, 8, generator=generator, device="mps"))
    assert torch.equal(to_cpu(out), ref.detach())


def test_torch_mps_api_works_inside() -> None:
    with EmulatedMPS():
        assert torch.backends.mps.is_available() and torch.backends.mps.is_built()
        assert torch.backends.mps.is_macos_or_newer(14, 0)
        assert torch.mps.is_available() and torch.mps.device_count() == 1
        torch.mps.synchronize()
        torch.mps.empty_cache()
        torch.mps.manual_seed(3)
        a = torch.randn(4, device="mps")
        torch.manual_seed(3)
        b = torch.randn(4, device="mps")
        assert torch.equal(to_cpu(a), to_cpu(b))
        state = torch.mps.get_rng_state()
        torch.mps.set_rng_state(state)
        held = torch.ones(1024, device="mps")
        assert torch.mps.current_allocated_memory() >= held.numel() * 4
        assert torch.mps.driver_allocated_memory() >= torch.mps.current_allocated_memory()
        assert torch.mps.recommended_max_memory() > 0
        torch.mps.set_per_process_memory_fraction(0.5)
        start, end = torch.mps.Event(enable_timing=True), torch.mps.Event(enable_timing=True)
        start.record()
        end.record()
        assert start.elapsed_time(end) >= 0
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None:
            assert accelerator.is_available() and accelerator.current_accelerator().type == "mps"
        from diffusers.utils.torch_utils import get_device

        assert get_device() == "mps"


def test_leaving_restores_torch_exactly_even_after_an_error() -> None:
    before = _torch_state()
    assert not torch.backends.mps.is_available()
    with pytest.raises(TypeError), EmulatedMPS():
        assert _torch_state() != before
        torch.ones(2, device="mps").double()
    assert _torch_state() == before
    assert not torch.backends.mps.is_available() and _no_mode_active()
    with pytest.raises(RuntimeError):
        torch.empty(1, device="mps")  # torch itself again: no MPS in this build
    with pytest.raises(RuntimeError):
        torch.Generator("mps")


def test_nesting_and_reentry() -> None:
    before = _torch_state()
    outer = EmulatedMPS()
    with outer:
        with emulated_mps(collect=True) as inner:
            torch.ones(2, device="mps").double()
            assert len(inner.findings) == 1 and not outer.findings
        assert torch.backends.mps.is_available()  # the outer emulation is still on
        with outer:  # the same instance, re-entered
            assert torch.zeros(1, device="mps").is_mps
        assert is_active()
    assert _torch_state() == before and not is_active()


def test_tensors_outlive_the_emulation() -> None:
    with EmulatedMPS():
        x = torch.ones(3, device="mps")
    y = x * 3  # no emulation active: still works, on the CPU, without MPS's rules
    assert y.device.type == "mps" and to_cpu(y).tolist() == [3.0, 3.0, 3.0]
    assert x.double().dtype == torch.float64
    assert copy.deepcopy(x).is_mps
    assert torch.equal(pickle.loads(pickle.dumps(x)), torch.ones(3))  # pickles as a CPU tensor


def test_suspended_takes_cpu_branches() -> None:
    with EmulatedMPS():
        x = torch.ones(2, device="mps")
        with suspended():
            assert not torch.backends.mps.is_available() and not is_active()
            assert torch.ones(2).double().dtype == torch.float64  # no rules while suspended
            assert (x + 1).is_mps
        assert torch.backends.mps.is_available() and is_active()
        with pytest.raises(TypeError):
            x.double()


def test_to_cpu_walks_structures() -> None:
    with EmulatedMPS():
        x = torch.ones(2, device="mps")
        nested = {"a": [x, (x, 3)], "b": np.zeros(1), "c": None}
    out = to_cpu(nested)
    assert not is_emulated(out["a"][0]) and not is_emulated(out["a"][1][0])
    assert out["a"][1][1] == 3 and out["b"].shape == (1,) and out["c"] is None
    from diffusers.utils import BaseOutput

    class Output(BaseOutput):
        images: Any

    converted = to_cpu(Output(images=x))
    assert isinstance(converted, Output) and not is_emulated(converted.images)


def test_fallback_env_parsing() -> None:
    assert fallback_from_env({"PYTORCH_ENABLE_MPS_FALLBACK": "1"})
    assert not fallback_from_env({"PYTORCH_ENABLE_MPS_FALLBACK": "0"})
    assert not fallback_from_env({})
    assert not fallback_from_env({"PYTORCH_ENABLE_MPS_FALLBACK": "yes"})


# -- MPS's rules, raising mode ------------------------------------------------------------------------
def test_float64_raises_mps_type_error() -> None:
    with EmulatedMPS():
        x = torch.ones(2, device="mps")
        with pytest.raises(TypeError) as info:
            x.to(torch.float64)
        assert str(info.value) == FLOAT64
        with pytest.raises(TypeError, match=re.escape(FLOAT64)):
            torch.arange(4, dtype=torch.float64, device="mps")
        with pytest.raises(TypeError, match=re.escape(FLOAT64)):
            torch.from_numpy(np.zeros(3)).to("mps")  # numpy defaults to float64
        torch.zeros(2, dtype=torch.float64)  # float64 on the CPU is fine on a Mac too


def test_complex128_raises_and_complex64_is_a_portability_warning() -> None:
    with EmulatedMPS() as emu:
        x = torch.ones(4, 4, device="mps")
        spectrum = torch.fft.fftn(x)  # complex64: works on MPS with this torch (macOS 14+), no raise
        assert spectrum.dtype == torch.complex64 and spectrum.is_mps
        assert [(f.kind, f.severity, f.op) for f in emu.findings] == [
            ("complex", "warning", "torch.fft.fftn")
        ]
        with pytest.raises(TypeError) as info:
            spectrum.to(torch.complex128)
        assert str(info.value) == COMPLEX128


def test_more_than_16_dims_raises() -> None:
    with EmulatedMPS():
        x = torch.ones(1, 2, device="mps")
        assert x.reshape([1] * 14 + [1, 2]).dim() == 16
        with pytest.raises(RuntimeError) as info:
            x.reshape([1] * 15 + [1, 2])
        assert str(info.value) == "MPS supports tensors with dimensions <= 16, but got 17."


def test_missing_kernel_raises_not_implemented_error() -> None:
    assert kernel_status(MISSING_OP) is KernelStatus.MISSING
    expected = missing_kernel_message(MISSING_OP)
    assert "pytorch/pytorch/issues/141287" in expected and torch.version.git_version in expected
    with EmulatedMPS(fallback=False):
        x = torch.ones(1, 2, 4, 4, 4, device="mps")
        for _ in range(2):  # first call (discovery) and cached calls raise the same
            with pytest.raises(NotImplementedError) as info:
                torch.nn.functional.adaptive_avg_pool3d(x, (1, 2, 2))
            assert str(info.value) == expected


def test_fallback_env_turns_missing_kernels_into_the_cpu_fallback_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    emu = EmulatedMPS()
    assert emu.fallback
    with emu, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = torch.ones(1, 2, 4, 4, 4, device="mps")
        out = torch.nn.functional.adaptive_avg_pool3d(x, (1, 2, 2))
    assert out.is_mps and out.shape == (1, 2, 1, 2, 2)
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    assert fallback_warning_message(MISSING_OP) in messages
    assert messages[0] == (
        "The operator 'aten::_adaptive_avg_pool3d' is not currently supported on the MPS backend and will "
        "fall back to run on the CPU. This may have performance implications."
    )
    assert caught[0].filename == __file__  # attributed to the caller, as torch's own warning is
    assert [f.severity for f in emu.findings] == ["fallback"]


def test_cpu_tensor_meeting_an_mps_tensor_raises() -> None:
    message = "Expected all tensors to be on the same device, but found at least two devices, mps:0 and cpu!"
    with EmulatedMPS():
        x = torch.ones(3, device="mps")
        with pytest.raises(RuntimeError) as info:
            x + torch.ones(3)
        assert str(info.value) == message
        with pytest.raises(RuntimeError, match="same device"):
            torch.cat([x, torch.ones(3)])
        # What MPS accepts: 0-dim CPU tensors (scalars), CPU index tensors, and copies between devices.
        assert (x * torch.tensor(2.0)).is_mps
        assert x[torch.tensor([0, 2])].shape == (2,)
        x[0:2] = torch.zeros(2)
        x.copy_(torch.full((3,), 5.0))
        assert to_cpu(x).tolist() == [5.0, 5.0, 5.0]
    with EmulatedMPS(collect=True) as emu:
        torch.ones(2, device="mps") @ torch.ones(2)
    (finding,) = emu.findings
    assert (finding.kind, finding.severity, finding.op) == ("device", "error", "torch.Tensor.matmul")


def test_big_buffer_aborts_before_allocating() -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with EmulatedMPS():
        with pytest.raises(MPSAbortError) as info:
            torch.empty(2**31, 3, dtype=torch.float32, device="mps")  # 24 GiB: never allocated
        assert "total bytes of NDArray > 2**32" in info.value.assertion
        assert info.value.nbytes == 2**31 * 3 * 4
        assert isinstance(info.value, RuntimeError)
        with pytest.raises(MPSAbortError):
            torch.zeros((2**30, 4), dtype=torch.float32, device="mps")  # exactly 2**32 bytes
        with pytest.raises(MPSAbortError):
            torch.ones(1, device="mps").new_empty((2**29, 8), dtype=torch.float32)
        small = torch.empty(2**20, device="mps")  # 4 MiB is fine
        assert small.is_mps
        assert small[:1].expand(2**31, 4).shape == (2**31, 4)  # a 32 GiB view of 4 bytes allocates nothing
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 1024 * 1024  # far less than the 16-24 GiB those calls asked for


def test_big_buffer_stops_a_collecting_run_too() -> None:
    # Even when collecting, allocating 24 GiB would take the machine down: the run stops with the abort.
    with EmulatedMPS(collect=True) as emu, pytest.raises(MPSAbortError):
        torch.empty(2**31, 3, device="mps")
    assert [(f.kind, f.severity, f.nbytes) for f in emu.findings] == [("buffer", "abort", 2**31 * 3 * 4)]


def test_attention_scores_over_4gib_abort_without_being_allocated() -> None:
    # 32768 x 32768 float32 scores = 2**32 bytes on MPS's math path; q/k/v themselves are 128 KiB each.
    q = torch.randn(1, 1, 32768, 1)
    with EmulatedMPS():
        qm = q.to("mps")
        with pytest.raises(MPSAbortError) as info:
            torch.nn.functional.scaled_dot_product_attention(qm, qm, qm)
        assert info.value.nbytes == 2**32
        short = qm[:, :, :1024]
        assert torch.nn.functional.scaled_dot_product_attention(short, short, short).is_mps


def test_collecting_never_raises_and_records_where() -> None:
    class Rope(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            freqs = torch.arange(0, 4, 2, dtype=torch.float64, device=x.device)
            return x * freqs.float().sum()

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Identity(), Rope()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    net = Net()
    with EmulatedMPS(collect=True) as emu:
        emu.name_modules({"transformer": net})
        out = net(torch.ones(2, device="mps"))
    assert out.is_mps
    (finding,) = emu.findings
    assert finding.kind == "float64" and finding.severity == "error" and finding.op == "torch.arange"
    assert finding.module == "transformer.blocks.1"
    assert finding.source is not None and finding.source.startswith("tests/test_emulation.py:")
    assert finding.source.endswith("in forward") and finding.message == FLOAT64
    assert finding.dtypes == ("float64",) and finding.shapes == ((2,),)


def test_autograd_runs_on_the_payloads() -> None:
    layer = torch.nn.Linear(3, 1)
    with EmulatedMPS():
        layer.to("mps")
        loss = layer(torch.ones(2, 3, device="mps")).sum()
        loss.backward()
        assert layer.weight.grad is not None and layer.weight.grad.is_mps
        assert torch.equal(to_cpu(layer.weight.grad), torch.full((1, 3), 2.0))


@pytest.mark.skipif(sys.platform == "darwin", reason="on a Mac, real MPS tensors exist")
def test_nothing_emulated_reaches_a_kernel() -> None:
    # A C++ path that skips __torch_function__ lands in the wrapper's __torch_dispatch__ safety net.
    with EmulatedMPS():
        x = torch.ones(2, device="mps")
    with torch._C.DisableTorchFunctionSubclass():
        y = torch.add(x, 1)
    assert is_emulated(y) and to_cpu(y).tolist() == [2.0, 2.0]


# -- load failures that explain themselves ----------------------------------------------------------------
class _PatchEmbed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 32)
        table = torch.arange(19, dtype=torch.float64)[None, :, None] * torch.ones(32, dtype=torch.float64)
        table = table.sin()  # float64, as CogVideoX's sincos position table
        self.register_buffer("pos_embedding", table, persistent=False)


class _Transformer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed()


class _Pipeline:
    """What ``pipe.to("mps")`` does in Diffusers: move every module component."""

    def __init__(self) -> None:
        self.transformer = _Transformer()

    @property
    def components(self) -> dict[str, Any]:
        return {"transformer": self.transformer, "scheduler": None}

    def to(self, device: str) -> _Pipeline:
        for module in self.components.values():
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self


def _line_of(text: str) -> int:
    with open(__file__, encoding="utf-8") as source:
        return next(number for number, line in enumerate(source, 1) if text in line)


def test_a_float64_buffer_names_its_module_path_and_creation_line() -> None:
    """CogVideoX-style: a non-persistent float64 buffer built in ``__init__`` fails ``pipe.to("mps")``;
    the error names the component path, the buffer, its dtype and shape, and the line that created it."""
    created = _line_of("# float64, as CogVideoX")
    with EmulatedMPS():
        pipe = _Pipeline()  # built while the emulation runs, as under --mps-device emulated
        with pytest.raises(TypeError) as info:
            pipe.to("mps")
    message = str(info.value)
    assert message.startswith(FLOAT64)
    assert "transformer.patch_embed.pos_embedding float64 [1, 19, 32]" in message
    assert f"buffer, created at tests/test_emulation.py:{created} in __init__" in message


def test_a_float64_buffer_built_before_the_emulation_names_where_it_is_registered() -> None:
    registered = _line_of('self.register_buffer("pos_embedding"')
    model = _Transformer()
    with EmulatedMPS(collect=True) as emu:
        model.to("mps")
    (finding,) = emu.findings
    assert (finding.kind, finding.op, finding.module) == (
        "float64",
        "torch.Tensor.to",
        "_Transformer.patch_embed",
    )
    assert finding.source == f"tests/test_emulation.py:{registered} in _PatchEmbed"
    assert (
        "_Transformer.patch_embed.pos_embedding float64 [1, 19, 32] (buffer, registered at" in finding.message
    )
    assert finding.dtypes == ("float64",) and finding.shapes == ((1, 19, 32),)


# -- what torch introspects stays in place ------------------------------------------------------------------
def test_replaced_functions_keep_the_attributes_of_the_originals() -> None:
    """torch._dynamo reads ``torch.backends.mps.is_available.__wrapped__`` when it is imported (torch 2.14+),
    which Diffusers may do while an emulation is active: replacements wear the originals' attributes."""
    originals = {name: getattr(torch.backends.mps, name) for name in ("is_available", "is_built", "get_name")}
    with EmulatedMPS():
        for name, original in originals.items():
            replaced = getattr(torch.backends.mps, name)
            assert replaced is not original
            assert replaced.__name__ == original.__name__ and replaced.__doc__ == original.__doc__
            assert replaced.__wrapped__ is original
            for attr in ("cache_clear", "cache_info"):
                assert hasattr(replaced, attr) is hasattr(original, attr)
        assert torch.backends.mps.is_available() is True
        torch.backends.mps.is_available.__wrapped__  # noqa: B018 - what torch._dynamo does
    assert torch.backends.mps.is_available is originals["is_available"]
