"""The checks behind an MPS badge verdict, each declared in :mod:`pytest_mps.registry`.

Every check comes in two forms: ``check_*`` computes and returns a
:class:`~pytest_mps.results.CheckResult` (a failed comparison is a failed result, an exception raised by
the pipeline a failed result carrying it), and ``assert_*`` returns that result when it passed and raises
when it did not. Both take a pipeline already on the target, optional ``inputs`` (a dict, an
:class:`~pytest_mps.input_spec.InputSpec`, or ``None`` for :func:`pytest_mps.default_inputs`) and
tolerances; both record the result with the running test.

- ``cpu_parity``: silent kernel bugs (diffusers #1398, pytorch #133520);
- ``batch_consistency``: batched prompts give noise where iterating works (#363, #1519);
- ``attention_slicing_parity``: slicing gave NaN/black images (#11229, #14438);
- ``deterministic``: first-pass drift without warm-up on torch 1.13 (#372, #3037);
- ``float16_parity``: float16 NaN, noise and black images (#2521, #4480, #7426);
- ``schedulers_compatible``: float64 timesteps in schedulers (#1169, #2241, #6365, #10549).
"""

from __future__ import annotations

from pytest_mps.checks.batch import check_batch_consistency
from pytest_mps.checks.common import asserting, cpu_reference, judge
from pytest_mps.checks.determinism import check_deterministic
from pytest_mps.checks.parity import check_cpu_parity, check_float16_parity
from pytest_mps.checks.schedulers import check_schedulers_compatible
from pytest_mps.checks.slicing import check_attention_slicing_parity

__all__ = [
    "assert_attention_slicing_parity",
    "assert_batch_consistency",
    "assert_cpu_parity",
    "assert_deterministic",
    "assert_float16_parity",
    "assert_schedulers_compatible",
    "check_attention_slicing_parity",
    "check_batch_consistency",
    "check_cpu_parity",
    "check_deterministic",
    "check_float16_parity",
    "check_schedulers_compatible",
    "cpu_reference",
    "judge",
]

assert_cpu_parity = asserting(check_cpu_parity)
assert_batch_consistency = asserting(check_batch_consistency)
assert_attention_slicing_parity = asserting(check_attention_slicing_parity)
assert_deterministic = asserting(check_deterministic)
assert_float16_parity = asserting(check_float16_parity)
assert_schedulers_compatible = asserting(check_schedulers_compatible)
