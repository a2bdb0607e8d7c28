"""How well the emulated MPS device predicts what fails on a Mac, scored against PyTorch's own MPS tests.

Usage::

    pip install expecttest        # torch's OpInfo database imports it
    python benchmarks/bench_fidelity.py [--dtypes float32,float16,bfloat16,int64,bool,complex64]
        [--ops NAME,...] [--max-samples N] [--no-grad] [--registry-only] [--json out.json]

For every OpInfo of the installed torch's ``op_db`` and every dtype asked for that the OpInfo runs on MPS
(``supported_dtypes("mps")``, i.e. ``dtypesIfMPS`` or its dtypes), it does what PyTorch's
``TestConsistency.test_output_match`` does on a Mac: the sample inputs are made on the (emulated) ``mps``
device and the op runs on each of them, here in the emulation's collecting mode. The emulation predicts a
failure when any sample breaks one of its rules (an error or abort finding: float64, a missing kernel, a
refused dtype or shape ...). The truth is what PyTorch's test expects for that torch: an expected failure
from ``common_mps.py``'s lists (or the OpInfo's own MPS decorations), complex64 outside
``SUPPORTED_COMPLEX_OPS``. Scored per dtype: recall (real failures caught) and precision (predicted
failures that are real). With ``--grad`` (default) the float32/float16 gradient comparison
(``test_output_grad_match``) is scored too, running each sample's backward on the emulated device.

What the truth source cannot tell, and how it is handled:

* accuracy-only expected failures (``UNDEFINED_XFAILLIST``: RNG, undefined order, tolerances) are not
  scored (the op runs on a Mac; the values differ); they are counted in the ``accuracy`` column;
* the other lists do not say whether an op raises or returns wrong values; a real failure that is a wrong
  value (``argsort`` of equal elements) cannot be caught by rules and shows up as a miss;
* samples that fail on the CPU too (the plain CPU run of the same inputs raises) say nothing about MPS:
  a case whose every sample does so is counted as ``cpu-only`` and not scored.

Not a test: it takes minutes (``--ops`` and ``--dtypes`` narrow it down). ``--registry-only`` turns off the
rules taken from PyTorch's test expectations (per-dtype gaps, the complex allow-list), to show what the
kernel registry and the shape rules predict on their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pytest_mps.emulation import EmulatedMPS, MPSAbortError, to_cpu  # noqa: E402
from pytest_mps.emulation.mps_expectations import load_expectations  # noqa: E402

DTYPES = ("float32", "float16", "bfloat16", "int64", "bool", "complex64")
GRAD_DTYPES = ("float32", "float16")


def _op_db() -> list[Any]:
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except ModuleNotFoundError as exc:  # expecttest, mostly
        sys.exit(
            f"cannot import torch's OpInfo database ({exc}); fix: pip install {exc.name or 'expecttest'}"
        )
    return list(op_db)


def _to_cpu_value(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        out = to_cpu(obj).detach()
        return out.requires_grad_(obj.requires_grad) if obj.requires_grad else out
    if isinstance(obj, torch.device) and obj.type == "mps":
        return torch.device("cpu")
    if isinstance(obj, str) and obj.partition(":")[0] == "mps":
        return "cpu"
    if isinstance(obj, list):
        return [_to_cpu_value(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu_value(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _to_cpu_value(v) for k, v in obj.items()}
    return obj


def _samples(op: Any, dtype: torch.dtype, limit: int) -> Iterator[Any]:
    requires_grad = dtype.is_floating_point or dtype.is_complex
    conjugated = dtype.is_complex and getattr(op, "test_conjugated_samples", False)
    kwargs = {"include_conjugated_inputs": conjugated} if conjugated else {}
    # "mps:0", as PyTorch's test passes it: some sample functions compare the device string with it.
    samples = op.sample_inputs("mps:0", dtype, requires_grad=requires_grad, set_seed=True, **kwargs)
    for i, sample in enumerate(samples):
        if limit and i >= limit:
            return
        yield sample


def _leaves(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            out += _leaves(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            out += _leaves(x)
    return out


def _backward(out: Any, sample: Any) -> None:
    outputs = [t for t in _leaves(out) if t.requires_grad]
    inputs = [t for t in _leaves((sample.input, sample.args, sample.kwargs)) if t.requires_grad]
    if not outputs or not inputs:
        return
    grads = [torch.ones_like(t) for t in outputs]
    torch.autograd.grad(outputs, inputs, grad_outputs=grads, allow_unused=True)


class Case:
    """One (OpInfo, dtype, test) and what happened to it."""

    def __init__(self, key: str, dtype: str, test: str, truth: str) -> None:
        self.key, self.dtype, self.test, self.truth = key, dtype, test, truth
        self.predicted = False
        self.why = ""
        self.samples = 0
        self.cpu_errors = 0
        self.emulator_errors: list[str] = []

    @property
    def scored(self) -> bool:
        return self.truth in ("fails", "passes") and not (self.samples and self.cpu_errors == self.samples)


def run_case(op: Any, dtype: torch.dtype, case: Case, limit: int, grad: bool) -> None:
    """Make ``op``'s samples on the emulated device and run each there (collecting) and on the CPU."""
    emu = EmulatedMPS(collect=True, fallback=False)
    samples: list[Any] = []
    try:
        with emu:
            samples = list(_samples(op, dtype, limit))
    except MPSAbortError:
        pass  # already a finding
    except Exception as exc:  # the sample inputs cannot even be made on the emulated device
        if not _errors(emu.findings):
            case.samples, case.cpu_errors = 1, 1  # ...nor, as far as we know, on the CPU: not scored
            case.why = f"sample inputs: {type(exc).__name__}"
            return
    if _errors(emu.findings):
        case.predicted, case.why = True, _why(_errors(emu.findings)[0])
    for sample in samples:
        seen = len(emu.findings)
        cpu_sample = (_to_cpu_value(sample.input), _to_cpu_value(sample.args), _to_cpu_value(sample.kwargs))
        emulated_exc: BaseException | None = None
        try:
            with emu:
                out = op(sample.input, *sample.args, **sample.kwargs)
                if grad:
                    _backward(out, sample)
        except MPSAbortError:
            pass
        except Exception as exc:
            emulated_exc = exc
        case.samples += 1
        if _cpu_fails(op, cpu_sample, grad):
            case.cpu_errors += 1
            continue
        errors = _errors(emu.findings[seen:])
        if errors and not case.predicted:
            case.predicted, case.why = True, _why(errors[0])
        elif emulated_exc is not None and not errors:
            text = f"{type(emulated_exc).__name__}: {str(emulated_exc)[:120]}"
            case.emulator_errors.append(text)
            if not case.predicted:
                case.predicted, case.why = True, f"emulator error {text}"


def _errors(findings: list[Any]) -> list[Any]:
    return [f for f in findings if f.severity in ("error", "abort")]


def _why(finding: Any) -> str:
    return f"{finding.kind} {finding.op}"


def _upcast(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.dtype in (torch.float16, torch.bfloat16, torch.bool):
        out = obj.detach().to(torch.float32)
        return out.requires_grad_(obj.requires_grad) if obj.requires_grad else out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_upcast(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _upcast(v) for k, v in obj.items()}
    return obj


def _cpu_fails(op: Any, sample: tuple[Any, Any, Any], grad: bool) -> bool:
    """Whether the CPU side of PyTorch's comparison fails for this sample: like its ``_run_op``, a CPU
    ``NotImplementedError`` for a low-precision or bool input is retried in float32."""
    try:
        return _cpu_run_fails(op, sample, grad)
    except NotImplementedError:
        try:
            return _cpu_run_fails(op, _upcast(sample), grad)
        except Exception:
            return True


def _cpu_run_fails(op: Any, sample: tuple[Any, Any, Any], grad: bool) -> bool:
    inp, args, kwargs = sample
    try:
        out = op(inp, *args, **kwargs)
        if grad:
            outputs = [t for t in _leaves(out) if t.requires_grad]
            inputs = [t for t in _leaves((inp, args, kwargs)) if t.requires_grad]
            if outputs and inputs:
                torch.autograd.grad(outputs, inputs, [torch.ones_like(t) for t in outputs], allow_unused=True)
    except NotImplementedError:
        raise
    except Exception:
        return True
    return False


def sweep(dtypes: tuple[str, ...], ops: set[str] | None, limit: int, grad: bool) -> tuple[list[Case], float]:
    expectations = load_expectations()
    cases: list[Case] = []
    start = time.perf_counter()
    for op in _op_db():
        key = op.name + op.variant_test_name
        if ops is not None and key not in ops and op.name not in ops:
            continue
        supported = op.supported_dtypes("mps")
        backward = op.supported_backward_dtypes("mps") if op.supports_autograd else set()
        for name in dtypes:
            dtype = getattr(torch, name)
            if dtype not in supported:
                continue
            case = Case(key, name, "forward", expectations.forward_outcome(key, name))
            if case.truth != "skip":
                run_case(op, dtype, case, limit, grad=False)
                cases.append(case)
            if grad and name in GRAD_DTYPES and dtype in backward:
                gcase = Case(key, name, "grad", expectations.grad_outcome(key, name))
                if gcase.truth != "skip":
                    run_case(op, dtype, gcase, limit, grad=True)
                    cases.append(gcase)
    return cases, time.perf_counter() - start


def score(cases: list[Case], test: str, dtype: str) -> dict[str, Any]:
    mine = [c for c in cases if c.test == test and c.dtype == dtype]
    scored = [c for c in mine if c.scored]
    real = [c for c in scored if c.truth == "fails"]
    predicted = [c for c in scored if c.predicted]
    caught = [c for c in real if c.predicted]
    return {
        "cases": len(scored),
        "real_failures": len(real),
        "caught": len(caught),
        "recall": len(caught) / len(real) if real else None,
        "predicted": len(predicted),
        "precision": len(caught) / len(predicted) if predicted else None,
        "accuracy_only": sum(1 for c in mine if c.truth == "accuracy"),
        "cpu_only": sum(
            1 for c in mine if c.truth == "cpu" or (c.truth in ("fails", "passes") and not c.scored)
        ),
        "misses": sorted(c.key for c in real if not c.predicted),
        "false_alarms": sorted(f"{c.key} ({c.why})" for c in scored if c.predicted and c.truth == "passes"),
        "emulator_errors": sorted({f"{c.key}: {c.emulator_errors[0]}" for c in mine if c.emulator_errors}),
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def report(cases: list[Case], dtypes: tuple[str, ...], seconds: float, registry_only: bool) -> dict[str, Any]:
    print(
        f"\ntorch {torch.__version__}; {len(cases)} cases in {seconds:.0f} s"
        + ("; rules from PyTorch's test expectations OFF (--registry-only)" if registry_only else "")
    )
    notes = load_expectations().notes
    for note in notes:
        print(f"note: {note}")
    header = (
        "test",
        "dtype",
        "cases",
        "real failures",
        "caught",
        "recall",
        "predicted",
        "precision",
        "accuracy-only",
        "cpu-only",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    results: dict[str, Any] = {}
    for test in ("forward", "grad"):
        for dtype in dtypes:
            s = score(cases, test, dtype)
            if not s["cases"]:
                continue
            results[f"{test}/{dtype}"] = s
            row = (
                test,
                dtype,
                s["cases"],
                s["real_failures"],
                s["caught"],
                _fmt(s["recall"]),
                s["predicted"],
                _fmt(s["precision"]),
                s["accuracy_only"],
                s["cpu_only"],
            )
            print("| " + " | ".join(str(x) for x in row) + " |")
    for name, s in results.items():
        if s["misses"]:
            print(f"\n{name} misses ({len(s['misses'])}): " + ", ".join(s["misses"]))
        if s["false_alarms"]:
            print(f"{name} false alarms ({len(s['false_alarms'])}): " + "; ".join(s["false_alarms"]))
        if s["emulator_errors"]:
            print(f"{name} emulator errors ({len(s['emulator_errors'])}): " + "; ".join(s["emulator_errors"]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--ops", default="", help="comma-separated OpInfo names or keys (default: all)")
    parser.add_argument(
        "--max-samples",
        type=int,
        default=0,
        help="sample inputs per case (default 0: all, as PyTorch's test)",
    )
    parser.add_argument("--no-grad", dest="grad", action="store_false", help="skip the gradient comparison")
    parser.add_argument("--registry-only", action="store_true", help="turn off rules from PyTorch's lists")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    unknown = [d for d in dtypes if not isinstance(getattr(torch, d, None), torch.dtype)]
    if unknown:
        parser.error(f"unknown dtype(s) {unknown}; use torch dtype names such as float32")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if args.registry_only:
        from pytest_mps.emulation import function_rules

        function_rules.disable()
    ops = {o.strip() for o in args.ops.split(",") if o.strip()} or None
    cases, seconds = sweep(dtypes, ops, args.max_samples, args.grad)
    results = report(cases, dtypes, seconds, args.registry_only)
    if args.json is not None:
        payload = {"torch": torch.__version__, "seconds": round(seconds, 1), "results": results}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
