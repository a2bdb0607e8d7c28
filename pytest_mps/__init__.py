"""pytest-mps: does this Diffusers pipeline work on Apple's MPS backend?

The public API is re-exported here and loaded lazily: importing ``pytest_mps`` (which pytest does at
every start-up) never imports torch, diffusers or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "MPSEnvironment": "pytest_mps.environment",
    "detect_environment": "pytest_mps.environment",
    "Target": "pytest_mps.target",
    "TargetError": "pytest_mps.target",
    "resolve_target": "pytest_mps.target",
    "PytestMPSWarning": "pytest_mps.warnings",
    "TrainingModeWarning": "pytest_mps.warnings",
    "default_inputs": "pytest_mps.inputs",
    "CheckResult": "pytest_mps.results",
    "Comparison": "pytest_mps.metrics",
    "Tolerance": "pytest_mps.tolerances",
    "PipelineLoadError": "pytest_mps.pipelines",
    "load_pipeline": "pytest_mps.pipelines",
    "assert_cpu_parity": "pytest_mps.checks",
    "assert_batch_consistency": "pytest_mps.checks",
    "assert_attention_slicing_parity": "pytest_mps.checks",
    "assert_deterministic": "pytest_mps.checks",
    "assert_float16_parity": "pytest_mps.checks",
    "assert_schedulers_compatible": "pytest_mps.checks",
    "check_cpu_parity": "pytest_mps.checks",
    "check_batch_consistency": "pytest_mps.checks",
    "check_attention_slicing_parity": "pytest_mps.checks",
    "check_deterministic": "pytest_mps.checks",
    "check_float16_parity": "pytest_mps.checks",
    "check_schedulers_compatible": "pytest_mps.checks",
    "InputSpec": "pytest_mps.input_spec",
    "Pipeline": "pytest_mps.protocols",
    "CHECKS": "pytest_mps.registry",
    "CheckSpec": "pytest_mps.registry",
    "Status": "pytest_mps.verdict",
    "Verdict": "pytest_mps.verdict",
    "pipeline_verdict": "pytest_mps.verdict",
    "audit": "pytest_mps.hazard_audit",
    "audit_module": "pytest_mps.hazard_audit",
    "assert_no_mps_hazards": "pytest_mps.hazard_audit",
    "AuditReport": "pytest_mps.hazard_audit",
    "Finding": "pytest_mps.emulation.findings",
    "MPSAbortError": "pytest_mps.emulation.errors",
    "EmulatedMPS": "pytest_mps.emulation.emulator",
    "localize": "pytest_mps.localization",
    "Localization": "pytest_mps.localization",
}

__all__ = [
    "CHECKS",
    "AuditReport",
    "CheckResult",
    "CheckSpec",
    "Comparison",
    "EmulatedMPS",
    "Finding",
    "InputSpec",
    "Localization",
    "MPSAbortError",
    "MPSEnvironment",
    "Pipeline",
    "PipelineLoadError",
    "PytestMPSWarning",
    "Status",
    "Target",
    "TargetError",
    "Tolerance",
    "TrainingModeWarning",
    "Verdict",
    "assert_attention_slicing_parity",
    "assert_batch_consistency",
    "assert_cpu_parity",
    "assert_deterministic",
    "assert_float16_parity",
    "assert_no_mps_hazards",
    "assert_schedulers_compatible",
    "audit",
    "audit_module",
    "check_attention_slicing_parity",
    "check_batch_consistency",
    "check_cpu_parity",
    "check_deterministic",
    "check_float16_parity",
    "check_schedulers_compatible",
    "default_inputs",
    "detect_environment",
    "load_pipeline",
    "localize",
    "pipeline_verdict",
    "resolve_target",
]

if TYPE_CHECKING:
    from pytest_mps.checks import (
        assert_attention_slicing_parity,
        assert_batch_consistency,
        assert_cpu_parity,
        assert_deterministic,
        assert_float16_parity,
        assert_schedulers_compatible,
        check_attention_slicing_parity,
        check_batch_consistency,
        check_cpu_parity,
        check_deterministic,
        check_float16_parity,
        check_schedulers_compatible,
    )
    from pytest_mps.emulation.emulator import EmulatedMPS
    from pytest_mps.emulation.errors import MPSAbortError
    from pytest_mps.emulation.findings import Finding
    from pytest_mps.environment import MPSEnvironment, detect_environment
    from pytest_mps.hazard_audit import AuditReport, assert_no_mps_hazards, audit, audit_module
    from pytest_mps.input_spec import InputSpec
    from pytest_mps.inputs import default_inputs
    from pytest_mps.localization import Localization, localize
    from pytest_mps.metrics import Comparison
    from pytest_mps.pipelines import PipelineLoadError, load_pipeline
    from pytest_mps.protocols import Pipeline
    from pytest_mps.registry import CHECKS, CheckSpec
    from pytest_mps.results import CheckResult
    from pytest_mps.target import Target, TargetError, resolve_target
    from pytest_mps.tolerances import Tolerance
    from pytest_mps.verdict import Status, Verdict, pipeline_verdict
    from pytest_mps.warnings import PytestMPSWarning, TrainingModeWarning


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_mps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
