"""The keys' own module walk (:func:`pytest_mps.keys.named_modules`) gives exactly what torch's
``named_modules``, ``named_parameters`` and ``named_buffers`` give (names, order, each object once): the
stored references' keys name modules by these paths."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pytest_mps.keys import _named_members, named_modules
from pytest_mps.pipelines import load_pipeline

from conftest import FIXTURES


def same_walk(root: Any) -> None:
    walked = named_modules(root)
    assert [(n, id(m)) for n, m in walked] == [(n, id(m)) for n, m in root.named_modules()]
    for store, theirs in (("_parameters", root.named_parameters()), ("_buffers", root.named_buffers())):
        assert [(n, id(t)) for n, t in _named_members(walked, store)] == [(n, id(t)) for n, t in theirs]


@pytest.mark.parametrize("fixture", ["tiny-sd", "tiny-ddpm", "tiny-dit"])
def test_the_walk_of_every_fixture_component_is_torchs(fixture: str) -> None:
    pipe = load_pipeline(FIXTURES / fixture)
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    assert modules
    for module in modules:
        same_walk(module)


def test_shared_modules_and_tied_tensors_come_once_under_their_first_name() -> None:
    shared = torch.nn.Linear(2, 2)
    root = torch.nn.Sequential(
        shared,
        torch.nn.Sequential(shared, torch.nn.BatchNorm1d(2), None),  # a None child is skipped
        torch.nn.Linear(2, 2),
    )
    root[2].weight = shared.weight  # one Parameter in two modules
    root[2].register_buffer("running", root[1][1].running_mean)  # one buffer in two modules
    same_walk(root)
    assert [n for n, _ in named_modules(root)] == ["", "0", "1", "1.1", "2"]
