"""The bundled MPS compatibility suite: one test per check, parametrised by pipeline folder.

Run it with ``pytest-mps check PATH [PATH ...]``, or from a project's own pytest::

    pytest --pyargs pytest_mps.suite --mps-pipelines path/to/pipeline -k parity

The pipelines come from ``--mps-pipelines`` (or ini ``mps_pipelines``); the target from
``--mps-device`` (default here: mps where available, else emulated, else cpu). Each test runs one
check of ``pytest_mps.suite.CHECKS`` through the ``mps_suite`` fixture (``pytest_mps.check_plugin``),
in a worker process with ``--mps-isolate``. A test's name is ``test_<check>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_mps.check_plugin import SuiteCheck


def test_load(mps_suite: SuiteCheck) -> None:
    """The folder loads (safetensors only, unless --mps-allow-pickle) and moves to the target."""
    mps_suite.check("load")


def test_inference(mps_suite: SuiteCheck) -> None:
    """A call on the target gives finite output that is not constant."""
    mps_suite.check("inference")


def test_cpu_parity(mps_suite: SuiteCheck) -> None:
    """The target's output equals the CPU's for the same weights and inputs."""
    mps_suite.check("cpu_parity")


def test_batch(mps_suite: SuiteCheck) -> None:
    """Each item of a batched call equals the single call with its seed."""
    mps_suite.check("batch")


def test_attention_slicing(mps_suite: SuiteCheck) -> None:
    """Attention slicing on gives the output of slicing off."""
    mps_suite.check("attention_slicing")


def test_determinism(mps_suite: SuiteCheck) -> None:
    """Repeated calls with one seed agree on the target."""
    mps_suite.check("determinism")


def test_float16(mps_suite: SuiteCheck) -> None:
    """float16 on the target stays close to float32 on the CPU."""
    mps_suite.check("float16")


def test_schedulers(mps_suite: SuiteCheck) -> None:
    """Every scheduler of the sweep runs on the target and matches the CPU."""
    mps_suite.check("schedulers")


def test_audit(mps_suite: SuiteCheck) -> None:
    """The emulated-MPS hazard audit finds nothing that aborts or raises (emulated target only)."""
    mps_suite.check("audit")


def test_speed(mps_suite: SuiteCheck) -> None:
    """The target is faster than the CPU on the same inputs (judged on real MPS only)."""
    mps_suite.check("speed")
