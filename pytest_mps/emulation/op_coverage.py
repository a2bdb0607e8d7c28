"""Which aten ops have an MPS kernel in the *installed* torch, read from its own operator registry.

Two sources, in this order:

1. the dispatcher's own registrations for the ``MPS`` key (``torch._C._dispatch_get_registrations_for_
   dispatch_key("MPS")``). On a Mac build that is every MPS kernel; on a Linux build it holds the kernels
   PyTorch registers for MPS *from Python* (``torch/_refs/linalg`` registers ``linalg_lu_solve.out``),
   which no yaml lists;
2. the build's ``torchgen/packaged/ATen/native/native_functions.yaml``, which lists every aten operator
   and, under ``dispatch:``, the backends that register a C++ kernel for it (a Linux build has none of
   the MPS ones, so the yaml is what says which exist on a Mac).

Every operator gets one status:

* ``NATIVE``: a ``dispatch:`` key names ``MPS`` (alone or in a combined key such as ``CPU, CUDA, MPS``),
  the dispatcher has an MPS registration for it, or the op is ``structured_delegate``-d to an ``.out``
  entry that has either;
* ``COMPOSITE``: no ``dispatch:`` at all (CompositeImplicitAutograd: it decomposes into other ops), or a
  ``CompositeExplicitAutograd`` / ``CompositeExplicitAutogradNonFunctional`` / ``CompositeImplicitAutograd``
  kernel, which is registered for every backend;
* ``MISSING``: a ``dispatch:`` that names only other backends; on a Mac the op raises
  ``NotImplementedError`` (or runs on the CPU when ``PYTORCH_ENABLE_MPS_FALLBACK=1``);
* ``ALWAYS_FALLBACK``: not in the yaml at all but in PyTorch's ``aten/src/ATen/mps/MPSFallback.mm``, which
  registers a handful of ops to always run on the CPU on MPS (see :data:`MPS_CPU_FALLBACK_OPS`).

Two hand-kept tables cover what the yaml cannot say: :data:`MPS_CPU_FALLBACK_OPS` (kernels registered
outside the yaml) and :data:`CPU_ONLY_HELPER_OPS` (ops that a CPU trace records although MPS would call a
different op, e.g. ``_scaled_dot_product_flash_attention_for_cpu``); such helpers take the status of their
MPS counterpart so that they are not false alarms.

:meth:`OpCoverage.runs_composite_kernel` says which COMPOSITE ops reach MPS through a
``CompositeExplicitAutograd`` kernel (``put`` -> ``put_``, ``logspace`` -> ``logspace.out``): a CPU trace
records only the composite op, so the emulation runs those kernels again to see the ops they call.

The yaml is read by :mod:`pytest_mps.emulation.native_functions` (a small line parser, no YAML
dependency).
"""

from __future__ import annotations

import enum
import functools
import importlib.metadata
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_mps.emulation.kernel_tables import (
    COMPOSITE_DISPATCH_KEYS,
    CPU_ONLY_HELPER_OPS,
    CPU_ONLY_PREFIXES,
    MPS_CPU_FALLBACK_OPS,
)
from pytest_mps.emulation.native_functions import (
    FIX_HINT,
    NativeFunction,
    OpCoverageError,
    parse_native_functions,
)

__all__ = [
    "COMPOSITE_DISPATCH_KEYS",
    "CPU_ONLY_HELPER_OPS",
    "MPS_CPU_FALLBACK_OPS",
    "KernelStatus",
    "NativeFunction",
    "OpCoverage",
    "OpCoverageError",
    "default_yaml_path",
    "dispatcher_mps_registrations",
    "has_mps_kernel",
    "iter_statuses",
    "kernel_status",
    "load_coverage",
    "missing_ops",
    "normalize_op_name",
    "parse_native_functions",
]


class KernelStatus(enum.Enum):
    """How an operator runs on the MPS backend."""

    NATIVE = "native"  # MPS kernel in the yaml
    COMPOSITE = "composite"  # decomposes / composite kernel: runs on MPS via other ops
    ALWAYS_FALLBACK = "fallback"  # registered to fall back to CPU on MPS (MPSFallback.mm)
    MISSING = "missing"  # no MPS kernel: NotImplementedError on a Mac (or CPU fallback with the env var)


_EXPLICIT_KEYS: frozenset[str] = frozenset(
    {"CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional"}
)

_RANK: Mapping[KernelStatus, int] = MappingProxyType(
    {
        KernelStatus.MISSING: 0,
        KernelStatus.ALWAYS_FALLBACK: 1,
        KernelStatus.COMPOSITE: 2,
        KernelStatus.NATIVE: 3,
    }
)


def normalize_op_name(op: Any) -> tuple[str, str]:
    """Return ``(namespace, yaml_name)`` for an op object or name.

    Accepts a ``torch._ops.OpOverload`` (``aten.add.Tensor``), an ``OpOverloadPacket`` (``aten.add``), any
    object with a ``name()`` method (e.g. a HigherOrderOperator), or a string: ``"aten::add.Tensor"``,
    ``"aten.add.Tensor"``, ``"aten._fft_c2c.default"``, ``"torch.ops.aten.mm.default"``, ``"add.Tensor"``,
    ``"_fft_c2c"``. The yaml name spells the default overload as the bare name (``"_fft_c2c"``).
    """
    namespace: str
    rest: str
    schema = getattr(op, "_schema", None)
    if schema is not None and hasattr(op, "_overloadname"):  # OpOverload, without importing torch
        namespace, _, base = schema.name.partition("::")
        return namespace, base if op._overloadname in ("default", "") else f"{base}.{op._overloadname}"
    qualified = getattr(op, "_qualified_op_name", None)  # OpOverloadPacket
    if isinstance(qualified, str):
        namespace, _, base = qualified.partition("::")
        return namespace, base
    if not isinstance(op, str):
        name_fn = getattr(op, "name", None)
        if not callable(name_fn):
            raise TypeError(f"expected an OpOverload, OpOverloadPacket or op name, got {type(op).__name__}")
        namespace = getattr(op, "namespace", None) or "higher_order"
        name = str(name_fn())
        if "::" in name:
            namespace, _, name = name.partition("::")
        return namespace, name
    text = op.strip()
    if text.startswith("torch.ops."):
        text = text[len("torch.ops.") :]
    if "::" in text:
        namespace, _, rest = text.partition("::")
    else:
        parts = text.split(".")
        if len(parts) >= 3 or (len(parts) == 2 and parts[0] in ("aten", "prims")):
            # "ns.op.overload" (Python spelling of an OpOverload) or "aten.op" (of a packet).
            namespace, rest = parts[0], ".".join(parts[1:])
        else:
            namespace, rest = "aten", text  # a bare yaml name: "add.Tensor", "_fft_c2c"
    base, _, overload = rest.partition(".")
    return namespace, base if overload in ("", "default") else f"{base}.{overload}"


@dataclass(frozen=True)
class OpCoverage:
    """MPS coverage of every aten operator of one native_functions.yaml.

    ``statuses`` maps yaml names (``"add.Tensor"``, ``"_fft_c2c"``; ``autogen:`` ops included) to their
    :class:`KernelStatus`. Lookups accept anything :func:`normalize_op_name` does. Ops outside the aten
    namespace (custom ops, ``prims``, higher-order ops) are COMPOSITE: the yaml only describes aten, a
    third-party op's MPS kernel may be registered by code that only a Mac imports, and ``prims`` ops run via
    Python references built on aten. An aten name absent from the yaml is looked up in torch's own
    dispatcher (an MPS registration, else a composite kernel, e.g. ``aten::get_gradients``), else MISSING.

    ``explicit`` holds the COMPOSITE names whose MPS path is a ``CompositeExplicitAutograd`` (or generated
    ``autogen:``) kernel; ``mps_registered`` the dispatcher's MPS registrations that were taken into account.
    """

    yaml_path: Path
    torch_version: str | None
    statuses: Mapping[str, KernelStatus] = field(hash=False, repr=False)
    reasons: Mapping[str, str] = field(hash=False, repr=False, compare=False)
    explicit: frozenset[str] = field(default=frozenset(), hash=False, repr=False, compare=False)
    mps_registered: frozenset[str] = field(default=frozenset(), hash=False, repr=False, compare=False)
    dispatch_keys: Mapping[str, frozenset[str] | None] = field(
        default_factory=dict, hash=False, repr=False, compare=False
    )
    # Memo of lookups by op object/name: the emulation asks once per dispatched op, so this is hot.
    _memo: dict[Any, tuple[KernelStatus, str]] = field(
        default_factory=dict, init=False, hash=False, repr=False, compare=False
    )

    @property
    def counts(self) -> dict[KernelStatus, int]:
        """Number of yaml operator names (overloads, autogen included) per status."""
        result = dict.fromkeys(KernelStatus, 0)
        for status in self.statuses.values():
            result[status] += 1
        return result

    def __len__(self) -> int:
        return len(self.statuses)

    def __contains__(self, op: object) -> bool:
        try:
            namespace, name = normalize_op_name(op)
        except TypeError:
            return False
        return namespace == "aten" and name in self.statuses

    def names_with(self, status: KernelStatus) -> frozenset[str]:
        """All yaml names with ``status``."""
        return frozenset(name for name, s in self.statuses.items() if s is status)

    def status(self, op: Any) -> KernelStatus:
        """The :class:`KernelStatus` of ``op`` (an OpOverload, OpOverloadPacket or name)."""
        return self._lookup(op)[0]

    def has_mps_kernel(self, op: Any) -> bool:
        """True when ``op`` runs on MPS without a CPU fallback (NATIVE or COMPOSITE)."""
        return self.status(op) in (KernelStatus.NATIVE, KernelStatus.COMPOSITE)

    def explain(self, op: Any) -> str:
        """A one-line reason for ``op``'s status, for error messages and reports."""
        status, reason = self._lookup(op)
        return f"{status.value}: {reason}"

    def sparse_status(self, op: Any, compressed: bool) -> KernelStatus | None:
        """Status of ``op`` for sparse inputs (``compressed``: CSR/CSC/BSR/BSC, else COO): NATIVE when the
        yaml names ``SparseCsrMPS``/``SparseMPS`` for it, MISSING when it names only the CPU's sparse key,
        None when the op has no sparse-specific kernel (the dense status applies)."""
        try:
            namespace, name = normalize_op_name(op)
        except TypeError:
            return None
        keys = self.dispatch_keys.get(name) if namespace == "aten" else None
        if not keys:
            return None
        prefix = "SparseCsr" if compressed else "Sparse"
        if f"{prefix}MPS" in keys:
            return KernelStatus.NATIVE
        if f"{prefix}CPU" in keys:
            return KernelStatus.MISSING
        return None

    def runs_composite_kernel(self, op: Any) -> bool:
        """True when ``op`` reaches MPS through a ``CompositeExplicitAutograd``-style kernel that calls other
        aten ops (which a recorder of the CPU run does not see: the emulation runs the kernel again to find
        them). CompositeImplicitAutograd ops are not: they decompose before any recorder sees them."""
        try:
            namespace, name = normalize_op_name(op)
        except TypeError:
            return False
        if namespace != "aten":
            return False
        if name in self.statuses:
            return name in self.explicit
        status, reason = self._lookup(op)
        return status is KernelStatus.COMPOSITE and "CompositeExplicitAutograd" in reason

    def _lookup(self, op: Any) -> tuple[KernelStatus, str]:
        try:
            return self._memo[op]
        except KeyError:
            pass
        except TypeError:  # an unhashable op-like object: just compute
            return self._compute(op)
        result = self._memo[op] = self._compute(op)
        return result

    def _compute(self, op: Any) -> tuple[KernelStatus, str]:
        namespace, name = normalize_op_name(op)
        if namespace != "aten":
            return KernelStatus.COMPOSITE, f"{namespace}::{name} is outside aten; assumed to run on MPS"
        status = self.statuses.get(name)
        if status is not None:
            return status, self.reasons[name]
        # An OpOverloadPacket / bare name without a default overload ("add"): the caller cannot tell which
        # overload will run, so answer with the best-covered one rather than raise a false alarm.
        overloads = [n for n in self.statuses if n.startswith(name + ".")]
        if overloads:
            best = max(overloads, key=lambda n: _RANK[self.statuses[n]])
            return self.statuses[best], f"best-covered overload {best}: {self.reasons[best]}"
        if name in self.mps_registered:
            return (
                KernelStatus.NATIVE,
                "not in native_functions.yaml; MPS kernel registered in the dispatcher",
            )
        return _dispatcher_status(name)


def _dispatcher_status(name: str) -> tuple[KernelStatus, str]:
    """Status of an aten op that the yaml does not list (registered by hand in C++ or Python)."""
    # Composite registrations are backend-independent, so the Linux dispatcher *can* answer this part.
    try:
        import torch  # deferred: coverage of yaml ops must not need torch imported
    except ImportError:
        return KernelStatus.MISSING, "not in native_functions.yaml (torch not importable to ask further)"

    qualified = f"aten::{name}"
    try:
        if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "MPS"):
            return (
                KernelStatus.NATIVE,
                "not in native_functions.yaml; MPS kernel registered in the dispatcher",
            )
        for key in sorted(COMPOSITE_DISPATCH_KEYS):
            if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key):
                return KernelStatus.COMPOSITE, f"not in native_functions.yaml; {key} kernel in the dispatcher"
    except RuntimeError:  # "operator aten::x does not exist"
        return KernelStatus.MISSING, "unknown aten operator (not in native_functions.yaml nor the dispatcher)"
    return KernelStatus.MISSING, "not in native_functions.yaml; no composite kernel in the dispatcher"


def _classify(
    entries: Mapping[str, NativeFunction], mps_registered: frozenset[str] = frozenset()
) -> tuple[dict[str, KernelStatus], dict[str, str], frozenset[str]]:
    statuses: dict[str, KernelStatus] = {}
    reasons: dict[str, str] = {}
    explicit: set[str] = set()

    def has_mps(entry: NativeFunction) -> bool:
        return (entry.dispatch is not None and "MPS" in entry.dispatch) or entry.name in mps_registered

    def yaml_status(name: str, seen: frozenset[str]) -> tuple[KernelStatus, str]:
        entry = entries[name]
        if entry.autogen_of is not None:
            # torchgen registers generated out=/functional variants as CompositeExplicitAutograd wrappers
            # around the source op: they run on MPS exactly when it does.
            source, why = resolve(entry.autogen_of, seen)
            if source is KernelStatus.NATIVE:
                source = KernelStatus.COMPOSITE
            if source is KernelStatus.COMPOSITE:
                explicit.add(name)  # a generated wrapper kernel around its source op
            return source, f"autogen of {entry.autogen_of} ({why})"
        keys = entry.dispatch
        if keys is not None and "MPS" in keys:
            return KernelStatus.NATIVE, "MPS kernel in native_functions.yaml"
        if name in mps_registered:
            return KernelStatus.NATIVE, "MPS kernel registered in the dispatcher (from Python)"
        delegate = entries.get(entry.structured_delegate) if entry.structured_delegate else None
        # A structured op's functional/inplace variants get, per backend, a kernel generated from the .out
        # entry's kernel: they have an MPS kernel exactly when the delegate's dispatch: names MPS. Their own
        # dispatch: keys then only add other layouts (sparse, nested) or a composite default.
        if delegate is not None and has_mps(delegate):
            return KernelStatus.NATIVE, f"structured_delegate {delegate.name} has an MPS kernel"
        # A backend kernel beats a composite one in the dispatcher, hence the composite check comes second
        # (e.g. silu_backward: CompositeImplicitAutograd, but MPS-native through silu_backward.grad_input).
        if keys is not None and keys & COMPOSITE_DISPATCH_KEYS:
            if keys & _EXPLICIT_KEYS and "CompositeImplicitAutograd" not in keys:
                explicit.add(name)
            return KernelStatus.COMPOSITE, f"{sorted(keys & COMPOSITE_DISPATCH_KEYS)[0]} kernel"
        if entry.structured_delegate:
            return KernelStatus.MISSING, f"structured_delegate {entry.structured_delegate} has no MPS kernel"
        if keys is None:
            return KernelStatus.COMPOSITE, "no dispatch: CompositeImplicitAutograd (decomposes)"
        return KernelStatus.MISSING, "no MPS kernel in native_functions.yaml"

    def resolve(name: str, seen: frozenset[str] = frozenset()) -> tuple[KernelStatus, str]:
        if name in statuses:
            return statuses[name], reasons[name]
        if name in seen:
            raise OpCoverageError(f"autogen/helper-table cycle through {name!r} in native_functions.yaml")
        seen = seen | {name}
        status, why = yaml_status(name, seen)
        counterpart = CPU_ONLY_HELPER_OPS.get(name)
        if counterpart is not None and counterpart in entries:
            mps_status, mps_why = resolve(counterpart, seen)
            status, why = mps_status, f"CPU-only helper; MPS calls {counterpart} instead ({mps_why})"
        elif status is KernelStatus.MISSING and name.startswith(CPU_ONLY_PREFIXES):
            status, why = KernelStatus.COMPOSITE, "mkldnn (CPU-only) helper; never selected for MPS tensors"
        elif name in MPS_CPU_FALLBACK_OPS and status is not KernelStatus.NATIVE:
            status, why = KernelStatus.ALWAYS_FALLBACK, "registered to run on the CPU in MPSFallback.mm"
        statuses[name], reasons[name] = status, why
        return status, why

    for name in entries:
        resolve(name)
    return statuses, reasons, frozenset(explicit)


def default_yaml_path() -> Path:
    """Locate the installed torch's native_functions.yaml without importing torch."""
    candidates: list[Path] = []
    for package in ("torchgen", "torch"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            # torchgen ships inside the torch wheel as a sibling package of torch.
            root = Path(spec.origin).parent
            if package == "torch":
                root = root.parent / "torchgen"
            candidates.append(root / "packaged" / "ATen" / "native" / "native_functions.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "no torchgen/torch package found"
    raise OpCoverageError(f"cannot find torch's native_functions.yaml (looked at: {looked}). {FIX_HINT}")


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _load_cached(path: Path, mtime_ns: int, size: int, mps_registered: frozenset[str]) -> OpCoverage:
    # Keyed on mtime and size too, so a rewritten file (e.g. a test's synthetic yaml) is parsed afresh.
    entries = parse_native_functions(path)
    statuses, reasons, explicit = _classify(entries, mps_registered)
    return OpCoverage(
        path,
        _torch_version(),
        MappingProxyType(statuses),
        MappingProxyType(reasons),
        explicit,
        mps_registered,
        MappingProxyType({name: entry.dispatch for name, entry in entries.items()}),
    )


@functools.cache
def _default_coverage() -> OpCoverage:
    # The installed torch does not change under a running process: locate and parse its yaml once, and
    # skip even the path search and stat() on later calls (kernel_status() runs once per dispatched op).
    return load_coverage(default_yaml_path())


def dispatcher_mps_registrations() -> frozenset[str]:
    """Yaml-spelled names of the aten ops with a kernel registered for the ``MPS`` dispatch key in this
    process (every MPS kernel on a Mac build; those registered from Python elsewhere). Empty when torch
    cannot be imported or does not answer."""
    try:
        import torch

        names = torch._C._dispatch_get_registrations_for_dispatch_key("MPS")
    except Exception:  # torch missing, or a version without the call: the yaml alone decides
        return frozenset()
    out = set()
    for qualified in names:
        namespace, name = normalize_op_name(qualified)
        if namespace == "aten":
            out.add(name)
    return frozenset(out)


def load_coverage(
    yaml_path: str | Path | None = None, *, mps_registered: frozenset[str] | None = None
) -> OpCoverage:
    """Coverage table of ``yaml_path`` (default: the installed torch's), parsed once and cached.

    ``mps_registered``: ops (yaml spelling) known to have an MPS kernel besides the yaml's; default: the
    dispatcher's MPS registrations in this process (see :func:`dispatcher_mps_registrations`).

    Raises :class:`OpCoverageError` naming the path and a fix when the file is missing or malformed.
    """
    if yaml_path is None:
        return _default_coverage()
    path = Path(yaml_path)
    try:
        stat = path.stat()
    except OSError:
        parse_native_functions(path)  # raises the descriptive OpCoverageError
        raise  # pragma: no cover - parse_native_functions always raises for an unreadable path
    registered = dispatcher_mps_registrations() if mps_registered is None else frozenset(mps_registered)
    return _load_cached(path.resolve(), stat.st_mtime_ns, stat.st_size, registered)


def kernel_status(op: Any) -> KernelStatus:
    """Status of ``op`` (OpOverload, OpOverloadPacket, or a name such as ``"aten::add.Tensor"``)."""
    return load_coverage().status(op)


def has_mps_kernel(op: Any) -> bool:
    """True when ``op`` runs on MPS as-is: NATIVE or COMPOSITE."""
    return load_coverage().has_mps_kernel(op)


def missing_ops() -> frozenset[str]:
    """Yaml names of the installed torch's aten ops with status MISSING."""
    return load_coverage().names_with(KernelStatus.MISSING)


def iter_statuses(names: Iterable[Any]) -> dict[str, KernelStatus]:
    """Status of each op in ``names``, keyed by ``namespace::yaml_name``; handy for reports."""
    coverage = load_coverage()
    result: dict[str, KernelStatus] = {}
    for op in names:
        namespace, name = normalize_op_name(op)
        result[f"{namespace}::{name}"] = coverage.status(op)
    return result
