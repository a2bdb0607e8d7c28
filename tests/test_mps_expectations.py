"""PyTorch's MPS test expectations read from source: a synthetic ``common_mps.py`` (the real one's layout),
the installed torch's, and a torch that ships none."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_mps.emulation.mps_expectations import load_expectations, parse_common_mps

SYNTHETIC = """
import torch

if torch.backends.mps.is_available():

    def mps_ops_modifier(ops, device_type="mps", xfail_exclusion=None, sparse=False):
        SUPPORTED_COMPLEX_OPS = {"add", "fft.fftn"}

        UNIMPLEMENTED_XFAILLIST: dict[str, list | None] = {
            # Failures due to lack of op implementation on MPS backend
            "put": None,
            "nn.functional.conv2d": [torch.int64],
            # returned output on CPU is float64
            "bincount": [torch.int16, torch.int64],
        }
        UNDEFINED_XFAILLIST = {"pca_lowrank": [torch.float32]}
        ON_MPS_XFAILLIST = {
            # Exception: Caused by `torch.arange(-8.001, -4.0, dtype=torch.uint8, device="mps")`
            "arange": [torch.uint8],
            # Argsort case using duplicate indices (undefined behaviour):
            "argsort": [torch.float16, torch.bool],
            "sort": [torch.half],
        }
        SKIPLIST = {"nn.functional.conv3d": None}
        return ops

    def mps_ops_grad_modifier(ops):
        XFAILLIST_GRAD = {
            "linalg.householder_product": None,
            # CPU errors
            # derivative for zeta is not implemented
            "special.zeta": None,
            # 'bool' object is not iterable
            "allclose": [torch.float16, torch.float32],
            "equal": [torch.float16, torch.float32],
        }
        return ops
else:

    def mps_ops_modifier(ops, device_type="mps", xfail_exclusion=None, sparse=False):
        return ops
"""


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    root = tmp_path / "_internal"
    root.mkdir()
    (root / "common_mps.py").write_text(SYNTHETIC, encoding="utf-8")
    return root


def test_lists_are_read_without_importing_the_guarded_module(synthetic: Path) -> None:
    supported, forward, grad, lists = parse_common_mps(synthetic / "common_mps.py")
    assert supported == {"add", "fft.fftn"}
    assert forward["fails"] == {"put": None, "nn.functional.conv2d": {"int64"}, "arange": {"uint8"}}
    assert forward["skip"] == {"nn.functional.conv3d": None}
    # What the comment above an entry says decides what it is about: values (not scored, not a rule) or
    # the CPU side of the comparison; an entry without its own comment shares its predecessor's.
    assert forward["accuracy"] == {
        "pca_lowrank": {"float32"},
        "bincount": {"int16", "int64"},
        "argsort": {"float16", "bool"},
        "sort": {"float16"},
    }
    assert grad["fails"] == {"linalg.householder_product": None}
    assert grad["cpu"] == {
        "special.zeta": None,
        "allclose": {"float16", "float32"},
        "equal": {"float16", "float32"},
    }
    assert set(lists["UNIMPLEMENTED_XFAILLIST"]) == {"put", "nn.functional.conv2d"}


def test_outcomes_per_key_and_dtype(synthetic: Path) -> None:
    expectations = load_expectations(synthetic)
    assert expectations.source == synthetic / "common_mps.py"
    assert expectations.forward_outcome("put", "float32") == "fails"
    assert expectations.forward_outcome("nn.functional.conv2d", "int64") == "fails"
    assert expectations.forward_outcome("nn.functional.conv2d", "float32") == "passes"
    assert expectations.forward_outcome("nn.functional.conv3d", "float32") == "skip"
    assert expectations.forward_outcome("argsort", "bool") == "accuracy"
    assert expectations.forward_outcome("mul", "complex64") == "fails"  # not in SUPPORTED_COMPLEX_OPS
    assert expectations.forward_outcome("add", "complex64") == "passes"
    assert expectations.grad_outcome("put", "float32") == "fails"  # the forward leg fails first
    assert expectations.grad_outcome("special.zeta", "float32") == "cpu"
    # No OpInfo definitions next to it: a note, not an error.
    assert any("common_methods_invocations" in note for note in expectations.notes)


def test_a_complex_deny_list_is_read_too(tmp_path: Path) -> None:
    """torch 2.15 lists the complex ops that fail (UNSUPPORTED_COMPLEX_OPS) instead of those that work."""
    root = tmp_path / "_internal"
    root.mkdir()
    text = SYNTHETIC.replace(
        'SUPPORTED_COMPLEX_OPS = {"add", "fft.fftn"}', 'UNSUPPORTED_COMPLEX_OPS = {"linalg.eig"}'
    )
    (root / "common_mps.py").write_text(text, encoding="utf-8")
    expectations = load_expectations(root)
    assert expectations.supported_complex is None and expectations.unsupported_complex == {"linalg.eig"}
    assert expectations.forward_outcome("linalg.eig", "complex64") == "fails"
    assert expectations.forward_outcome("mul", "complex64") == "passes"


def test_a_torch_without_common_mps_degrades_with_a_note(tmp_path: Path) -> None:
    expectations = load_expectations(tmp_path)
    assert expectations.source is None and expectations.supported_complex is None
    assert expectations.forward_outcome("put", "float32") == "passes"
    assert any("ships no torch/testing/_internal/common_mps.py" in note for note in expectations.notes)


def test_the_installed_torchs_lists() -> None:
    expectations = load_expectations()
    if expectations.source is None:
        pytest.skip("this torch ships no common_mps.py")
    assert expectations.complex_supported("fft.fftn")  # FreeU's FFT, on either kind of list
    assert not expectations.complex_supported("linalg.eig")
    unimplemented = expectations.lists["UNIMPLEMENTED_XFAILLIST"]
    assert unimplemented, expectations.notes
    key, dtypes = next(iter(unimplemented.items()))
    assert expectations.forward_outcome(key, sorted(dtypes)[0] if dtypes else "float32") == "fails"
    assert "nn.functional.conv2d" in expectations.opinfo_keys  # the OpInfo scan finds the definitions
