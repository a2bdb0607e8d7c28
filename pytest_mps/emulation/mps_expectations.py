"""PyTorch's own record of what fails on MPS, read from the installed torch's test helpers (never imported).

The torch wheel ships the expectations that PyTorch's ``test/test_mps.py`` runs its OpInfo sweep with:

* ``torch/testing/_internal/common_mps.py``: the lists ``mps_ops_modifier`` and ``mps_ops_grad_modifier``
  apply (``SUPPORTED_COMPLEX_OPS``, ``UNIMPLEMENTED_XFAILLIST``, ``UNDEFINED_XFAILLIST``,
  ``ON_MPS_XFAILLIST``, the skip lists, ``XFAILLIST_GRAD`` ...). Its contents sit behind
  ``if torch.backends.mps.is_available():``, so importing it on Linux yields nothing: it is parsed with
  :mod:`ast` instead, which also keeps torch's test machinery (and its ``expecttest`` dependency) out.
* the OpInfos of ``common_methods_invocations.op_db`` (and ``opinfo/definitions/*.py``): their
  ``DecorateInfo(..., device_type="mps")`` expected failures and skips, and ``dtypesIfMPS``. Only the
  entries that mention MPS are parsed (see :mod:`~pytest_mps.emulation.opinfo_source`).

Keys are OpInfo keys, ``name + variant_test_name`` (``"nn.functional.interpolatearea"``), exactly as the
lists spell them; dtypes are names (``"float32"``). A source missing from another torch version (older
wheels keep these lists in ``test/test_mps.py``, which is not shipped) leaves its part empty and adds a
line to :attr:`MPSExpectations.notes`; nothing raises.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pytest_mps.emulation.opinfo_source import (
    ACCURACY_WORDS,
    CPU_WORDS,
    DtypeSet,
    OpInfoDeclaration,
    Unreadable,
    comments_by_line,
    dtypes_value,
    parse_opinfo_declarations,
    scan_opinfo_keys,
)

__all__ = [
    "DtypeSet",
    "MPSExpectations",
    "OpInfoDeclaration",
    "load_expectations",
    "parse_common_mps",
    "parse_opinfo_declarations",
    "scan_opinfo_keys",
]


# What each list of common_mps.py means for a test of (OpInfo key, dtype). "fails": an expected failure
# of the forward comparison (an exception, a missing kernel, a refused dtype or shape, or a wrong value:
# the list alone cannot say which; the comment above an entry sometimes does, see _categories);
# "accuracy": results that differ from the CPU's (undefined behaviour, RNG, tolerance) while the op runs;
# "skip": not tested.
_FORWARD_LISTS: Mapping[str, str] = MappingProxyType(
    {
        "UNIMPLEMENTED_XFAILLIST": "fails",
        "ON_MPS_XFAILLIST": "fails",
        "UNDEFINED_XFAILLIST": "accuracy",
        "EMPTY_OPS_SKIPLIST": "skip",
        "SKIPLIST": "skip",
    }
)
_GRAD_LISTS: Mapping[str, str] = MappingProxyType(
    {"XFAILLIST_GRAD": "fails", "ON_MPS_XFAILLIST": "fails", "SKIPLIST_GRAD": "skip"}
)
_COMPLEX_LISTS = ("SUPPORTED_COMPLEX_OPS", "AFTER_MACOS_14_0_SUPPORTED_COMPLEX_OPS")


@dataclass(frozen=True)
class MPSExpectations:
    """PyTorch's MPS test expectations for the installed torch (see the module docstring).

    Attributes:
        source: the ``common_mps.py`` read, or None when this torch has none.
        supported_complex: OpInfo keys PyTorch tests with complex64 on MPS (None: unknown, or a torch that
            keeps a deny-list instead, see :attr:`unsupported_complex`).
        forward: ``{"fails" | "accuracy" | "skip": {key: dtypes}}`` for the forward comparison.
        grad: the same for the gradient comparison (``test_output_grad_match``).
        lists: ``mps_ops_modifier``'s tables by their own names (``"UNIMPLEMENTED_XFAILLIST"`` ...).
        opinfo_files: where the OpInfos are defined.
        notes: one line per source that was missing or could not be read.
    """

    source: Path | None
    supported_complex: frozenset[str] | None
    forward: Mapping[str, Mapping[str, DtypeSet]]
    grad: Mapping[str, Mapping[str, DtypeSet]]
    lists: Mapping[str, Any] = field(default_factory=dict)
    opinfo_files: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def unsupported_complex(self) -> frozenset[str] | None:
        """OpInfo keys PyTorch expects to fail with complex64 on MPS, where it keeps a deny-list
        (``UNSUPPORTED_COMPLEX_OPS``, torch 2.15+) instead of the allow-list; None otherwise."""
        table = self.lists.get("UNSUPPORTED_COMPLEX_OPS")
        return table if isinstance(table, frozenset) else None

    def complex_supported(self, key: str) -> bool:
        """Whether PyTorch expects OpInfo ``key`` to work with complex64 on MPS (True when unknown)."""
        if self.supported_complex is not None:
            return key in self.supported_complex
        unsupported = self.unsupported_complex
        return unsupported is None or key not in unsupported

    @functools.cached_property
    def opinfo_keys(self) -> Mapping[str, tuple[str, str]]:
        """Every OpInfo key found in the definitions, as ``key -> (name, variant)`` (a regex scan on first
        use, ~0.1 s: OpInfos built in loops are missed)."""
        try:
            return MappingProxyType(scan_opinfo_keys(self.opinfo_files))
        except (OSError, UnicodeDecodeError):
            return MappingProxyType({})

    @functools.cached_property
    def opinfos(self) -> Mapping[str, OpInfoDeclaration]:
        """MPS declarations of the OpInfos that have any, by key (parsed on first use: ~0.2 s)."""
        try:
            return MappingProxyType(parse_opinfo_declarations(self.opinfo_files))
        except (OSError, UnicodeDecodeError):
            return MappingProxyType({})

    def forward_outcome(self, key: str, dtype: str) -> str:
        """``"skip"``, ``"fails"``, ``"accuracy"``, ``"cpu"`` or ``"passes"``: what PyTorch's own MPS test
        expects of the forward comparison of OpInfo ``key`` at ``dtype`` (skips first, as unittest applies
        them). ``accuracy`` and ``cpu`` are expected failures whose comment in ``common_mps.py`` says they
        are about values (undefined order, RNG, precision) or an error of the CPU side."""
        declared = self.opinfos.get(key)
        if _listed(self.forward.get("skip", {}), key, dtype) or (
            declared is not None and _declared(declared.skip, "test_output_match", dtype)
        ):
            return "skip"
        if _listed(self.forward.get("fails", {}), key, dtype):
            return "fails"
        if _listed(self.forward.get("cpu", {}), key, dtype):
            return "cpu"
        if dtype.startswith("complex") and not self.complex_supported(key):
            return "fails"
        if declared is not None and _declared(declared.xfail, "test_output_match", dtype):
            return "fails"
        if declared is not None and _declared(declared.cpu_xfail, "test_output_match", dtype):
            return "cpu"
        if declared is not None and _declared(declared.accuracy_xfail, "test_output_match", dtype):
            return "accuracy"
        if _listed(self.forward.get("accuracy", {}), key, dtype):
            return "accuracy"
        return "passes"

    def grad_outcome(self, key: str, dtype: str) -> str:
        """The same for the gradient comparison; a forward failure fails it too."""
        declared = self.opinfos.get(key)
        if _listed(self.grad.get("skip", {}), key, dtype) or (
            declared is not None and _declared(declared.skip, "test_output_grad_match", dtype)
        ):
            return "skip"
        if _listed(self.grad.get("fails", {}), key, dtype) or (
            declared is not None and _declared(declared.xfail, "test_output_grad_match", dtype)
        ):
            return "fails"
        for outcome in ("accuracy", "cpu"):
            if _listed(self.grad.get(outcome, {}), key, dtype):
                return outcome
        if declared is not None:
            if _declared(declared.accuracy_xfail, "test_output_grad_match", dtype):
                return "accuracy"
            if _declared(declared.cpu_xfail, "test_output_grad_match", dtype):
                return "cpu"
        forward = self.forward_outcome(key, dtype)
        return "passes" if forward == "skip" else forward

    def failing_entries(self) -> Iterator[tuple[str, DtypeSet, str]]:
        """``(key, dtypes, origin)`` of every expected failure of the forward comparison."""
        for key, dtypes in self.forward.get("fails", {}).items():
            yield key, dtypes, "common_mps.py"
        for key, declared in self.opinfos.items():
            for target, dtypes in declared.xfail.items():
                if _applies_to(target, "test_output_match"):
                    yield key, dtypes, "op_db"


def _listed(table: Mapping[str, DtypeSet], key: str, dtype: str) -> bool:
    if key not in table:
        return False
    dtypes = table[key]
    return dtypes is None or dtype in dtypes


def _applies_to(target: str, test: str) -> bool:
    return target in ("*", "TestConsistency.*", f"TestConsistency.{test}")


def _declared(table: Mapping[str, DtypeSet], test: str, dtype: str) -> bool:
    return any(
        _applies_to(target, test) and (dtypes is None or dtype in dtypes) for target, dtypes in table.items()
    )


# -- common_mps.py ---------------------------------------------------------------------------------------
def _literal_table(node: ast.expr) -> dict[str, DtypeSet] | frozenset[str] | None:
    """A ``{key: [torch.dtype, ...] | None}`` dict or a ``{"key", ...}`` set literal; None otherwise."""
    if isinstance(node, ast.Set):
        return frozenset(
            e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
        )
    if not isinstance(node, ast.Dict):
        return None
    table: dict[str, DtypeSet] = {}
    for k, v in zip(node.keys, node.values, strict=True):
        if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
            continue
        try:
            table[k.value] = dtypes_value(v)
        except Unreadable:
            continue  # one odd entry must not cost the rest
    return table


def _assignments(func: ast.FunctionDef) -> dict[str, Any]:
    """Literal tables assigned by name anywhere in ``func`` (including under ``if`` blocks)."""
    found: dict[str, Any] = {}
    for node in ast.walk(func):
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and value is not None:
            table = _literal_table(value)
            if table is not None:
                found[target.id] = table
    return found


def parse_common_mps(
    path: str | Path,
) -> tuple[
    frozenset[str] | None, dict[str, dict[str, DtypeSet]], dict[str, dict[str, DtypeSet]], dict[str, Any]
]:
    """``(supported_complex, forward, grad, lists)`` read from a ``common_mps.py`` (see
    :class:`MPSExpectations`; ``lists`` holds ``mps_ops_modifier``'s tables by their own names, without
    the entries whose comment says they are about accuracy or fail on the CPU too).

    Raises ``OSError``/``SyntaxError`` for an unreadable file; unknown list names are ignored, so lists
    PyTorch adds later do not break it.
    """
    text = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(text)
    comments = comments_by_line(text)
    forward: dict[str, dict[str, DtypeSet]] = {"fails": {}, "accuracy": {}, "skip": {}, "cpu": {}}
    grad: dict[str, dict[str, DtypeSet]] = {"fails": {}, "accuracy": {}, "skip": {}, "cpu": {}}
    complex_ops: set[str] | None = None
    lists: dict[str, Any] = {}
    # The file holds two definitions of each function (the real one and the no-op `else:` stub): the
    # real one is the first in the source, and the stub assigns no tables, so merging both is harmless.
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        tables = _assignments(node)
        categories = _categories(node, comments)
        if node.name == "mps_ops_modifier":
            for name, table in tables.items():
                if isinstance(table, dict):
                    table = {k: v for k, v in table.items() if not categories.get((name, k))}
                lists.setdefault(name, table)
            for name in _COMPLEX_LISTS:
                if isinstance(tables.get(name), frozenset):
                    complex_ops = (complex_ops or set()) | tables[name]
            _merge(forward, tables, _FORWARD_LISTS, categories)
        elif node.name == "mps_ops_grad_modifier":
            _merge(grad, tables, _GRAD_LISTS, categories)
    return (None if complex_ops is None else frozenset(complex_ops)), forward, grad, lists


def _categories(func: ast.FunctionDef, comments: Mapping[int, str]) -> dict[tuple[str, str], str]:
    """``(list, key) -> "accuracy" | "cpu"`` from the comment block above each entry (an entry without a
    comment of its own shares the category of the entry before it)."""
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target: ast.expr = node.targets[0]
        elif isinstance(node, ast.AnnAssign):
            target = node.target
        else:
            continue
        if not (isinstance(target, ast.Name) and isinstance(node.value, ast.Dict)):
            continue
        previous_end = node.value.lineno
        category = ""
        for key, value in zip(node.value.keys, node.value.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            block = [comments.get(line, "") for line in range(previous_end + 1, key.lineno + 1)]
            words = " ".join(b for b in block if b)
            if words:
                category = (
                    "accuracy"
                    if any(w in words for w in ACCURACY_WORDS)
                    else "cpu"
                    if any(w in words for w in CPU_WORDS)
                    else ""
                )
            if category:
                out[(target.id, key.value)] = category
            previous_end = getattr(value, "end_lineno", None) or key.lineno
    return out


def _merge(
    into: dict[str, dict[str, DtypeSet]],
    tables: Mapping[str, Any],
    meaning: Mapping[str, str],
    categories: Mapping[tuple[str, str], str],
) -> None:
    for list_name, listed_as in meaning.items():
        table = tables.get(list_name)
        if not isinstance(table, dict):
            continue
        for key, dtypes in table.items():
            outcome = categories.get((list_name, key)) if listed_as == "fails" else None
            bucket = into[outcome or listed_as]
            if key in bucket and bucket[key] is not None and dtypes is not None:
                bucket[key] = bucket[key] | dtypes  # type: ignore[operator]
            else:
                bucket[key] = None if key in bucket and bucket[key] is None else dtypes


# -- loading ---------------------------------------------------------------------------------------------
def _testing_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "testing" / "_internal"


@functools.cache
def load_expectations(testing_dir: Path | None = None) -> MPSExpectations:
    """The installed torch's MPS test expectations (parsed once per process; about 0.1 s, plus 0.2 s the
    first time :attr:`MPSExpectations.opinfos` is read).

    ``testing_dir`` defaults to ``torch/testing/_internal`` of the installed torch.
    """
    root = testing_dir if testing_dir is not None else _testing_dir()
    notes: list[str] = []
    supported_complex: frozenset[str] | None = None
    forward: dict[str, dict[str, DtypeSet]] = {}
    grad: dict[str, dict[str, DtypeSet]] = {}
    lists: dict[str, Any] = {}
    source: Path | None = None
    common_mps = root / "common_mps.py" if root is not None else None
    if common_mps is not None and common_mps.is_file():
        try:
            supported_complex, forward, grad, lists = parse_common_mps(common_mps)
            source = common_mps
        except (OSError, SyntaxError, UnicodeDecodeError) as exc:
            notes.append(f"cannot read {common_mps} ({exc}): PyTorch's MPS lists are not used")
    else:
        notes.append(
            "this torch ships no torch/testing/_internal/common_mps.py (older releases keep PyTorch's MPS "
            "test lists in test/test_mps.py, outside the wheel): per-dtype and complex rules are off"
        )
    if not forward.get("fails") and source is not None:
        notes.append(f"{source} has no UNIMPLEMENTED_XFAILLIST this parser recognises")
    present: list[Path] = []
    if root is not None:
        files = [
            root / "common_methods_invocations.py",
            *sorted((root / "opinfo" / "definitions").glob("*.py")),
        ]
        present = [f for f in files if f.is_file()]
    if not present:
        notes.append(
            "this torch ships no common_methods_invocations.py: OpInfo MPS declarations are not used"
        )
    return MPSExpectations(
        source=source,
        supported_complex=supported_complex,
        forward=MappingProxyType({k: MappingProxyType(v) for k, v in forward.items()}),
        grad=MappingProxyType({k: MappingProxyType(v) for k, v in grad.items()}),
        lists=MappingProxyType(lists),
        opinfo_files=tuple(present),
        notes=tuple(notes),
    )
