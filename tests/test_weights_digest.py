"""The weights digest that keys stored references: begun early from the CPU copy
(:func:`pytest_mps.keys.start_weights_digest`, while a pipeline moves to its device), it is the digest
computed later, it is used without hashing again when the weights did not change, and it is not used
when they did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_mps import keys
from pytest_mps.pipelines import load_pipeline, prepare_pipeline

from conftest import FIXTURES


def load() -> Any:
    return prepare_pipeline(load_pipeline(FIXTURES / "tiny-sd"))


def hashed_modules(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many tensors each later hash reads (one entry per module hashed)."""
    sizes: list[int] = []
    digest_of = keys._digest_of

    def counting(tensors: list[tuple[str, Any]]) -> str:
        sizes.append(len(tensors))
        return digest_of(tensors)

    monkeypatch.setattr(keys, "_digest_of", counting)
    return sizes


def wait_for_early_digest(pipe: Any) -> list[Any]:
    return [keys._PENDING[c].result(timeout=60) for c in pipe.components.values() if c in keys._PENDING]


def moved_like_a_device_move(pipe: Any) -> None:
    """What ``.to(device)`` does to every parameter (new storage, the same version counter) and buffer
    (a new tensor), here with copies on the CPU."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component._apply(lambda t: t.clone())


def test_the_early_digest_is_the_late_one_and_is_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = keys.weights_digest(load())
    pipe = load()
    keys.start_weights_digest(pipe)
    assert len(wait_for_early_digest(pipe)) == 3  # unet, vae, text encoder
    moved_like_a_device_move(pipe)
    later = hashed_modules(monkeypatch)
    assert keys.weights_digest(pipe) == expected
    assert later == []  # every module's early hash was used


def test_weights_changed_after_the_early_digest_are_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = load()
    keys.start_weights_digest(pipe)
    wait_for_early_digest(pipe)
    with torch.no_grad():
        pipe.unet.conv_in.weight.add_(1.0)  # an edit between the start and the use
    later = hashed_modules(monkeypatch)
    edited = keys.weights_digest(pipe)
    assert len(later) == 1  # the unet only
    fresh = load()
    with torch.no_grad():
        fresh.unet.conv_in.weight.add_(1.0)
    assert edited == keys.weights_digest(fresh) != keys.weights_digest(load())


def test_a_failed_early_digest_is_computed_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = keys.weights_digest(load())
    pipe = load()

    def broken(tensors: list[tuple[str, Any]]) -> str:
        raise MemoryError("no room to hash")

    monkeypatch.setattr(keys, "_digest_of", broken)
    keys.start_weights_digest(pipe)
    assert wait_for_early_digest(pipe) == [None, None, None]
    monkeypatch.undo()
    assert keys.weights_digest(pipe) == expected


@pytest.mark.parametrize(("on_cpu", "begun"), [(False, True), (True, False)])
def test_the_suite_begins_the_digest_before_the_move_only_for_a_device_beside_the_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, on_cpu: bool, begun: bool
) -> None:
    """With stored references, a device that leaves the CPU idle (mps, cuda) gets the hash begun
    before the move; a target that computes on the CPU (cpu, emulated) would only be slowed by it."""
    from pytest_mps.suite.runner import load_for_suite, release
    from pytest_mps.suite.settings import PipelineSpec, SuiteSettings
    from pytest_mps.target import Target

    monkeypatch.setattr(Target, "computes_on_cpu", property(lambda self: on_cpu))
    started: list[Any] = []
    monkeypatch.setattr(keys, "start_weights_digest", started.append)
    spec = PipelineSpec(str(FIXTURES / "tiny-sd"), "tiny-sd")
    loaded = load_for_suite(spec, SuiteSettings(device="cpu", references=str(tmp_path)))
    try:
        assert loaded.load.passed
        assert (started == [loaded.pipe]) is begun and (started == []) is not begun
        without_store = load_for_suite(spec, SuiteSettings(device="cpu"))
        assert started == ([loaded.pipe] if begun else [])  # no store, no digest
        release(without_store)
    finally:
        release(loaded)
