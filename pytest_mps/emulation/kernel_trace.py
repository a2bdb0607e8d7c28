"""Which aten ops a call reaches on MPS: the dispatch walked as MPS's dispatcher would walk it.

A recorder of the CPU run sees the ops that reach the CPU's kernels: composite ops are already decomposed
(``torch.linalg.svd`` shows up as ``_linalg_svd``, although MPS registers ``linalg_svd`` itself to run on
the CPU), and the ops that ``CompositeExplicitAutograd`` kernels call are invisible (``put`` calls
``put_``, which MPS lacks). So, the first time a function is called with a given argument signature, the
call is *walked* on meta copies of its arguments (shapes and dtypes only, nothing computed), with
autograd's keys excluded so that every op reaches the walker before any decomposition:

* an op MPS has a kernel for, lacks, or always runs on the CPU is a leaf: its status is recorded and
  the op runs (on meta) for the shapes that follow;
* a ``CompositeImplicitAutograd`` op is decomposed (``op.decompose``) and a ``CompositeExplicitAutograd``
  one runs its composite kernel, under the walker, so the ops *they* call are judged in turn;
* composites that choose their implementation by device (convolution) are judged by the op the MPS
  branch calls (:data:`DEVICE_BRANCHES`).

Where meta tensors cannot run a call (data-dependent ops such as ``nonzero``), the walk is retried on CPU
copies (the global RNG and any generator argument are left untouched); where that fails too, the ops of
the real call are recorded as it runs. Backward passes are recorded as they run, every time (their ops
depend on the graph, not on the call's signature).

Shape rules that MPS kernels enforce (:data:`SHAPE_RULES`: adaptive average pooling with sizes that do
not divide, while the installed torch's MPS tests still list it) are checked on the leaf's arguments; a
call that reaches one is walked again on every call.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_mps.emulation import rules
from pytest_mps.emulation.op_coverage import KernelStatus

__all__ = [
    "DEVICE_BRANCHES",
    "SHAPE_RULES",
    "KernelReport",
    "observe",
    "walk_call",
]

_META = torch.device("meta")
_CEA = torch._C.DispatchKey.CompositeExplicitAutograd
_CEANF = torch._C.DispatchKey.CompositeExplicitAutogradNonFunctional

#: Composite kernels that pick their implementation by device: walked on another device they would show
#: that device's ops, so the walk stops and judges the op MPS's branch calls (aten/src/ATen/native/
#: Convolution.cpp: ``_convolution`` selects ``_mps_convolution``/``_mps_convolution_transpose`` for MPS
#: tensors; ``convolution_backward`` selects ``mps_convolution_backward``).
DEVICE_BRANCHES: dict[str, str] = {
    "convolution": "_mps_convolution",
    "_convolution": "_mps_convolution",
    "_convolution.deprecated": "_mps_convolution",
    "convolution_overrideable": "_mps_convolution",
    "convolution_backward": "mps_convolution_backward",
    "convolution_backward_overrideable": "mps_convolution_backward",
}


class KernelReport(NamedTuple):
    """What a walk found: ops MPS lacks or runs on the CPU, shape-rule violations, and whether the answer
    depends on shapes (then the call is walked again every time)."""

    kernels: tuple[rules.KernelHazard, ...] = ()
    shapes: tuple[rules.Hazard, ...] = ()
    per_call: bool = False


NO_HAZARDS = KernelReport()


# -- shape rules ------------------------------------------------------------------------------------------
def _pool_sizes(args: Sequence[Any], output_from_grad: bool) -> tuple[int, int, int, int] | None:
    if output_from_grad:  # _adaptive_avg_pool2d_backward(grad_output, self)
        grad, inp = args[0], args[1]
        if not (isinstance(grad, torch.Tensor) and isinstance(inp, torch.Tensor)) or grad.dim() < 2:
            return None
        return int(inp.shape[-2]), int(inp.shape[-1]), int(grad.shape[-2]), int(grad.shape[-1])
    inp, size = args[0], args[1]
    if not isinstance(inp, torch.Tensor) or inp.dim() < 2 or len(size) != 2:
        return None
    return int(inp.shape[-2]), int(inp.shape[-1]), int(size[0]), int(size[1])


def _adaptive_rule(*, average: bool, output_from_grad: bool = False) -> Callable[..., str | None]:
    # aten/src/ATen/native/mps/operations/AdaptivePooling.mm, set_kernel_params (TORCH_CHECK_NOT_IMPLEMENTED;
    # pytorch/pytorch#96056): MPS implements adaptive pooling as a fixed-stride pool.
    def check(args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        sizes = _pool_sizes(args, output_from_grad)
        if sizes is None:
            return None
        ih, iw, oh, ow = sizes
        if not ((ih >= oh and iw >= ow) or (ih <= oh and iw <= ow)):
            return (
                "Adaptive pool MPS: Input height and width must both be greater than, or equal to, or lesser "
                "than output height and width"
            )
        if not average or 0 in (ih, iw, oh, ow):
            return None
        if ih >= oh and not (ih % oh == 0 and iw % ow == 0):
            return (
                "Adaptive pool MPS: input sizes must be divisible by output sizes. Non-divisible input sizes "
                "are not implemented on MPS device yet. For now, you can manually transfer tensor to cpu in "
                "this case. Please refer to [this issue](https://github.com/pytorch/pytorch/issues/96056)"
            )
        if ih < oh and not (oh % ih == 0 and ow % iw == 0):
            return (
                "Adaptive pool MPS: output sizes must be divisible by input sizes. Non-divisible input sizes "
                "are not implemented on MPS device yet. For now, you can manually transfer tensor to cpu in "
                "this case. Please refer to [this issue](https://github.com/pytorch/pytorch/issues/96056)"
            )
        return None

    return check


#: aten op (yaml name) -> check of its arguments; returns MPS's NotImplementedError text, or None.
SHAPE_RULES: dict[str, Callable[[Sequence[Any], dict[str, Any]], str | None]] = {
    "_adaptive_avg_pool2d": _adaptive_rule(average=True),
    "_adaptive_avg_pool2d_backward": _adaptive_rule(average=True, output_from_grad=True),
}
# The OpInfo keys PyTorch's MPS tests list while the adaptive-pooling rule holds ("MPS: input sizes must
# be divisible by output sizes"): a torch whose lists drop them has lifted the rule.
_SHAPE_RULE_KEYS = (
    "nn.functional.adaptive_avg_pool1d",
    "nn.functional.adaptive_avg_pool2d",
    "nn.functional.interpolatearea",
)


@functools.cache
def shape_rules_hold() -> bool:
    """Whether the installed torch still has the adaptive-pooling shape rule (True when it ships no
    ``common_mps.py`` to say otherwise: the rule dates from MPS's first releases)."""
    from pytest_mps.emulation.mps_expectations import load_expectations

    expectations = load_expectations()
    if expectations.source is None:
        return True
    listed = expectations.lists.get("UNIMPLEMENTED_XFAILLIST", {})
    return any(key in listed for key in _SHAPE_RULE_KEYS)


# -- how the walk treats each op --------------------------------------------------------------------------
_LEAF, _IMPLICIT, _EXPLICIT = 0, 1, 2
_MAX_DEPTH = 40
_plans: dict[Any, tuple[int, str | None, Any, Any]] = {}


def _plan(func: Any) -> tuple[int, str | None, Any, Any]:
    """``(how, verdict, key, shape_rule)`` for an OpOverload, cached: how to walk it (leaf, decompose, or
    run its explicit composite kernel), its leaf verdict (``"missing"``, ``"always"`` or None) and, for
    composites, the dispatch key of the composite kernel."""
    plan = _plans.get(func)
    if plan is not None:
        return plan
    coverage = rules.coverage()
    name = _yaml_name(func)
    shape_rule = SHAPE_RULES.get(name) if name is not None else None
    if shape_rule is not None and not shape_rules_hold():
        shape_rule = None
    branch = DEVICE_BRANCHES.get(name) if name is not None else None
    if coverage is None or name is None:
        plan = (_LEAF, None, None, shape_rule)
    elif branch is not None:
        plan = (_LEAF, rules.verdict_of(coverage.status(branch)), None, shape_rule)
    else:
        status = coverage.status(func)
        has = torch._C._dispatch_has_kernel_for_dispatch_key
        qualified = f"aten::{name}"
        if status is not KernelStatus.COMPOSITE:
            plan = (_LEAF, rules.verdict_of(status), None, shape_rule)
        elif coverage.runs_composite_kernel(func):
            key = _CEA if has(qualified, "CompositeExplicitAutograd") else _CEANF
            plan = (_EXPLICIT, None, key, shape_rule)
        elif has(qualified, "CompositeImplicitAutograd"):
            plan = (_IMPLICIT, None, None, shape_rule)
        else:  # composite for another reason (a CPU-only helper, an mkldnn op): nothing below to judge
            plan = (_LEAF, None, None, shape_rule)
    _plans[func] = plan
    return plan


def _yaml_name(func: Any) -> str | None:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return None
    namespace, _, base = schema.name.partition("::")
    if namespace != "aten":
        return None
    overload = getattr(func, "_overloadname", "")
    return base if overload in ("default", "") else f"{base}.{overload}"


class _State:
    __slots__ = ("descending", "kernels", "per_call", "seen", "shapes")

    def __init__(self) -> None:
        self.kernels: list[rules.KernelHazard] = []
        self.shapes: list[rules.Hazard] = []
        self.seen: set[Any] = set()
        self.per_call = False
        # Composite ops being walked into: a composite kernel that calls its own op again (``detach``'s
        # does in recent torch) is then run as it is instead of being walked into forever.
        self.descending: list[Any] = []

    def report(self) -> KernelReport:
        if not (self.kernels or self.shapes or self.per_call):
            return NO_HAZARDS
        return KernelReport(tuple(self.kernels), tuple(self.shapes), self.per_call)

    def sparse(self, func: Any, backend: str) -> None:
        if backend and func not in self.seen:
            self.seen.add(func)
            self.kernels.append(rules.KernelHazard(func.name(), False, backend))

    def leaf(self, func: Any, verdict: str | None, shape_rule: Any, args: Any, kwargs: Any) -> None:
        if verdict is not None and func not in self.seen:
            self.seen.add(func)
            self.kernels.append(rules.KernelHazard(func.name(), verdict == "always"))
        if shape_rule is not None:
            self.per_call = True
            message = shape_rule(args, kwargs)
            if message is not None:
                self.shapes.append(rules.Hazard("shape", "error", message, NotImplementedError))


class _Walker(TorchDispatchMode):
    """Walks (``simulate=True``: decomposes composites itself) or observes (the real run: records its
    leaves, and finds the ops of explicit composite kernels by running them again on meta copies)."""

    def __init__(self, state: _State, *, simulate: bool) -> None:
        super().__init__()
        self.state = state
        self.simulate = simulate

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        how, verdict, key, shape_rule = _plan(func)
        sparse = _sparse_layout(args)
        if sparse is not None:
            backend = _sparse_leaf(func, sparse)
            if backend is not None:  # an op with sparse kernels: MPS's sparse key decides, no descent
                self.state.sparse(func, backend)
                return func(*args, **kwargs)
        if how == _LEAF:
            self.state.leaf(func, verdict, shape_rule, args, kwargs)
            return func(*args, **kwargs)
        if func in self.state.descending or len(self.state.descending) > _MAX_DEPTH:
            return func(*args, **kwargs)
        if not self.simulate:
            if how == _EXPLICIT:
                _discover(self.state, func, key, args, kwargs)
            return func(*args, **kwargs)
        self.state.descending.append(func)
        try:
            with _Walker(self.state, simulate=True):
                if how == _EXPLICIT:
                    out = func._op_dk(key, *args, **kwargs)
                else:
                    out = func.decompose(*args, **kwargs)
        finally:
            self.state.descending.pop()
        if out is NotImplemented:  # no composite kernel after all: judge it as a leaf
            self.state.leaf(func, None, shape_rule, args, kwargs)
            return func(*args, **kwargs)
        return out


_COMPRESSED = frozenset({torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc})


def _sparse_layout(args: tuple[Any, ...]) -> torch.layout | None:
    for a in args:
        if isinstance(a, torch.Tensor) and a.layout is not torch.strided:
            return a.layout
    return None


def _sparse_leaf(func: Any, layout: torch.layout) -> str | None:
    """For sparse inputs: ``""`` when MPS has the sparse kernel, the missing backend's name when only the
    CPU has one, None when the op has no sparse kernels (then it is walked as usual)."""
    coverage = rules.coverage()
    if coverage is None:
        return None
    compressed = layout in _COMPRESSED
    status = coverage.sparse_status(func, compressed)
    if status is None:
        return None
    if status is KernelStatus.MISSING:
        return "SparseCsrMPS" if compressed else "SparseMPS"
    return ""


def _discover(state: _State, func: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run ``func``'s explicit composite kernel on meta copies under a walker, for the ops it calls."""
    state.descending.append(func)
    try:
        margs, mkwargs = _to_meta((args, kwargs))
        with _Walker(state, simulate=True):
            func._op_dk(key, *margs, **mkwargs)
    except Exception:  # a kernel meta tensors cannot run: what was seen before it still counts
        pass
    finally:
        state.descending.pop()


# -- copies for the walk ----------------------------------------------------------------------------------
def _meta_tensor(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "meta":
        return t
    if t.layout is not torch.strided:
        return t.to(_META)
    itemsize = t.element_size() or 1
    storage = max(t.untyped_storage().nbytes() // itemsize, t.storage_offset() + 1)
    base = torch.empty(storage, dtype=t.dtype, device=_META)
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def _to_meta(obj: Any) -> Any:
    t = type(obj)
    if isinstance(obj, torch.Tensor):
        return _meta_tensor(obj)
    if t is tuple or t is list:
        return t(_to_meta(x) for x in obj)
    if t is dict:
        return {
            k: (None if k == "generator" else _META if k == "device" else _to_meta(v)) for k, v in obj.items()
        }
    if t is torch.device:
        return _META
    if isinstance(obj, torch.Generator):
        return None
    return obj


def _cpu_copy(obj: Any) -> Any:
    t = type(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if t is tuple or t is list:
        return t(_cpu_copy(x) for x in obj)
    if t is dict:
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, torch.Generator):
        clone = torch.Generator(obj.device)
        clone.set_state(obj.get_state())
        return clone
    return obj


@contextlib.contextmanager
def _walking(state: _State) -> Iterator[None]:
    with torch._C._AutoDispatchBelowAutograd(), _Walker(state, simulate=True):
        yield


def walk_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> KernelReport | None:
    """Walk ``func(*args, **kwargs)`` (payload tensors) as MPS would dispatch it; None when neither a meta
    nor a CPU copy of the call could be walked (the caller then observes the real call)."""
    state = _State()
    try:
        margs, mkwargs = _to_meta((args, kwargs))
        with _walking(state):
            func(*margs, **mkwargs)
        return state.report()
    except Exception:
        if state.kernels:  # MPS stops at the first op it lacks: the rest would not run on a Mac either
            return state.report()
    state = _State()
    try:
        cargs, ckwargs = _cpu_copy((args, kwargs))
        with torch.random.fork_rng(devices=[]), _walking(state):
            func(*cargs, **ckwargs)
        return state.report()
    except Exception:
        return state.report() if state.kernels else None


def observe(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, KernelReport]:
    """Run the real call, recording the leaves it reaches (and the ops of explicit composite kernels)."""
    state = _State()
    with _Walker(state, simulate=False):
        out = func(*args, **kwargs)
    return out, state.report()
