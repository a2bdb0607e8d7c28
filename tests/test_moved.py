"""``pytest_mps.running.moved``: a dtype change for one block gives every weight back exactly, without
copying it where the converted copy fits next to the originals, and through a CPU copy where it does not
(a CUDA device short of memory)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pytest_mps import running
from pytest_mps.pipelines import load_pipeline, prepare_pipeline
from pytest_mps.running import moved

from conftest import FIXTURES


def load(name: str = "tiny-sd") -> Any:
    return prepare_pipeline(load_pipeline(FIXTURES / name))


def state(pipe: Any) -> dict[str, tuple[torch.Tensor, int]]:
    """Every tensor of every component by name: a copy of its values and its storage address."""
    out = {}
    for comp_name, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            for name, t in [*comp.named_parameters(), *comp.named_buffers()]:
                out[f"{comp_name}.{name}"] = (t.detach().clone(), t.data_ptr())
    return out


def buffer_ids(pipe: Any) -> set[int]:
    return {id(b) for c in pipe.components.values() if isinstance(c, torch.nn.Module) for b in c.buffers()}


def assert_values_back(before: dict[str, Any], pipe: Any) -> None:
    after = state(pipe)
    assert after.keys() == before.keys()
    for name, (value, _) in before.items():
        now = after[name][0]
        assert now.dtype == value.dtype and torch.equal(now, value), name


def test_float16_block_runs_in_float16_and_gives_back_the_same_storage() -> None:
    pipe = load()
    before = state(pipe)
    buffers = buffer_ids(pipe)
    with moved(pipe, dtype=torch.float16):
        assert pipe.unet.conv_in.weight.dtype == torch.float16
        assert pipe.unet.conv_in.weight.data_ptr() != before["unet.conv_in.weight"][1]
    assert_values_back(before, pipe)
    after = state(pipe)
    assert all(after[n][1] == ptr for n, (_, ptr) in before.items())  # nothing was copied
    assert buffer_ids(pipe) == buffers  # the buffers themselves are back


def test_an_error_in_the_block_still_gives_everything_back() -> None:
    pipe = load("tiny-ddpm")
    before = state(pipe)
    with pytest.raises(RuntimeError, match="inside"), moved(pipe, dtype=torch.float16):
        raise RuntimeError("inside")
    assert_values_back(before, pipe)


def test_tied_weights_stay_tied() -> None:
    pipe = load("tiny-ddpm")
    by_shape: dict[tuple[int, ...], Any] = {}
    for module in pipe.unet.modules():
        weight = module._parameters.get("weight")
        if weight is None:
            continue
        first = by_shape.setdefault(tuple(weight.shape), module)
        if first is not module:
            module.weight = first.weight  # one Parameter in two modules
            break
    else:
        raise AssertionError("the fixture has no two same-shaped weights to tie")
    with moved(pipe, dtype=torch.float16):
        assert module.weight is first.weight and module.weight.dtype == torch.float16
    assert module.weight is first.weight and module.weight.dtype == torch.float32


def test_no_room_on_the_device_copies_through_the_cpu_and_still_restores_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = load()
    before = state(pipe)
    calls: list[str] = []
    snapshot = running._snapshot_tensors

    def counting(p: Any) -> Any:
        calls.append("snapshot")
        return snapshot(p)

    monkeypatch.setattr(running, "_room_for_copy", lambda *a: False)
    monkeypatch.setattr(running, "_snapshot_tensors", counting)
    with moved(pipe, dtype=torch.float16):
        assert pipe.unet.dtype == torch.float16
    assert calls == ["snapshot"]
    assert_values_back(before, pipe)


def weights_bytes(pipe: Any, itemsize: int) -> int:
    return sum(
        t.numel() * (itemsize if t.is_floating_point() else t.element_size())
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module)
        for t in [*c.parameters(), *c.buffers()]
    )


@pytest.mark.parametrize(
    ("free", "room"),
    [("copy + margin", True), ("copy + margin - 1", False), ("raises", False)],
)
def test_room_on_a_cuda_device_is_its_free_memory_against_the_converted_copy(
    monkeypatch: pytest.MonkeyPatch, free: str, room: bool
) -> None:
    pipe = load()
    needed = weights_bytes(pipe, 2) + running._COPY_MARGIN

    def mem_get_info(device: Any) -> tuple[int, int]:
        assert torch.device(device).type == "cuda"
        if free == "raises":
            raise RuntimeError("no CUDA here")
        return (needed if free == "copy + margin" else needed - 1), 1 << 40

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert running._room_for_copy(pipe, "cuda", torch.float16) is room
    # the CPU and MPS share one memory with a CPU snapshot: the originals always stay
    assert running._room_for_copy(pipe, "cpu", torch.float16) is True
    assert running._room_for_copy(pipe, torch.device("mps"), torch.float16) is True
