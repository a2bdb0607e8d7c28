"""PyTorch's own record of what fails on MPS, read from the installed torch's test helpers (never imported).

The torch wheel ships the expectations that PyTorch's ``test/test_mps.py`` runs its OpInfo sweep with:

* ``torch/testing/_internal/common_mps.py``: the lists ``mps_ops_modifier`` and ``mps_ops_grad_modifier``
  apply (``SUPPORTED_COMPLEX_OPS``, ``UNIMPLEMENTED_XFAILLIST``, ``UNDEFINED_XFAILLIST``,
  ``ON_MPS_XFAILLIST``, the skip lists, ``XFAILLIST_GRAD`` ...). Its contents sit behind
  ``if torch.backends.mps.is_available():``, so importing it on Linux yields nothing: it is parsed with
  :mod:`ast` instead, which also keeps torch's test machinery (and its ``expecttest`` dependency) out.
* the OpInfos of ``common_methods_invocations.op_db`` (and ``opinfo/definitions/*.py``): their
  ``DecorateInfo(..., device_type="mps")`` expected failures and skips, and ``dtypesIfMPS``. Only the
  entries that mention MPS are parsed (the file is 1.4 MB; a full parse would cost a second).

Keys are OpInfo keys, ``name + variant_test_name`` (``"nn.functional.interpolatearea"``), exactly as the
lists spell them; dtypes are names (``"float32"``). A source missing from another torch version (older
wheels keep these lists in ``test/test_mps.py``, which is not shipped) leaves its part empty and adds a
line to :attr:`MPSExpectations.notes`; nothing raises.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import re
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DtypeSet",
    "MPSExpectations",
    "OpInfoDeclaration",
    "load_expectations",
    "parse_common_mps",
    "parse_opinfo_declarations",
    "scan_opinfo_keys",
]

#: dtype names an entry applies to; None: every dtype.
DtypeSet = frozenset[str] | None

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
class OpInfoDeclaration:
    """What one OpInfo of ``op_db`` declares about MPS.

    ``xfail``/``skip`` map the test the decoration targets (``"TestConsistency.test_output_match"``,
    ``"TestConsistency.*"``, ``"*"``) to its dtypes (``cpu_xfail``: expected failures whose comment
    quotes a CPU kernel's error, i.e. the test's CPU reference fails; ``accuracy_xfail``: those whose
    comment says values differ); ``dtypes_if_mps`` is
    ``dtypesIfMPS`` evaluated to dtype names (None when absent or not evaluable).
    """

    name: str
    variant: str = ""
    aten_name: str | None = None
    op: str | None = None
    dtypes_if_mps: DtypeSet = None
    xfail: Mapping[str, DtypeSet] = field(default_factory=dict)
    skip: Mapping[str, DtypeSet] = field(default_factory=dict)
    cpu_xfail: Mapping[str, DtypeSet] = field(default_factory=dict)
    accuracy_xfail: Mapping[str, DtypeSet] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``name + variant_test_name``, the key PyTorch's MPS lists use."""
        return self.name + self.variant


@dataclass(frozen=True)
class MPSExpectations:
    """PyTorch's MPS test expectations for the installed torch (see the module docstring).

    Attributes:
        source: the ``common_mps.py`` read, or None when this torch has none.
        supported_complex: OpInfo keys PyTorch tests with complex64 on MPS (None: unknown).
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
        complex_unsupported = self.supported_complex is not None and key not in self.supported_complex
        if dtype.startswith("complex") and complex_unsupported:
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
class _Unreadable(Exception):
    """An expression this parser does not evaluate (the entry is skipped)."""


def _dtype_name(node: ast.expr) -> str:
    # torch.float32 / torch.half / torch.cdouble ...: canonical names without importing torch.
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        return _ALIASES.get(node.attr, node.attr)
    raise _Unreadable(ast.dump(node)[:80])


_ALIASES = {
    "half": "float16",
    "float": "float32",
    "double": "float64",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
    "long": "int64",
    "int": "int32",
    "short": "int16",
}


def _dtypes_value(node: ast.expr) -> DtypeSet:
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return frozenset(_dtype_name(e) for e in node.elts)
    raise _Unreadable(ast.dump(node)[:80])


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
            table[k.value] = _dtypes_value(v)
        except _Unreadable:
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
    comments = _comments(text)
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


# What PyTorch's comment above an entry says it is about, when it says: wrong values on a working op, or
# a failure on the CPU side of the comparison. Such entries are not MPS failures a rule can predict.
_ACCURACY_WORDS = (
    "undefined behavio",
    "sign-ambiguous",
    "random",
    "mismatch",
    "precision",
    "flaky",
    "disagrees",
    "output on cpu",
    "uninitialized",
    "not close",
)
_CPU_WORDS = (
    "cpu error",
    "not implemented on cpu",
    "any device",
    "derivative for",
    "on both cpu and mps",
    "is not iterable",
)


def _comments(text: str) -> dict[int, str]:
    found: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                found[tok.start[0]] = tok.string.lstrip("#").strip().lower()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return found


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
                    if any(w in words for w in _ACCURACY_WORDS)
                    else "cpu"
                    if any(w in words for w in _CPU_WORDS)
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


# -- the OpInfos' MPS declarations ----------------------------------------------------------------------
# An OpInfo entry starts a line: `    OpInfo('name',`, `    UnaryUfuncInfo(`, `    ReductionOpInfo(` ...
_ENTRY = re.compile(r"^[ \t]*((?!DecorateInfo\b)[A-Z]\w*Info)\(", re.MULTILINE)


def _call_source(text: str) -> str | None:
    """The source of the call ``text`` starts with (up to its closing parenthesis), via tokenize."""
    depth = 0
    lines = io.StringIO(text).readline
    end_line = end_col = None
    try:
        for tok in tokenize.generate_tokens(lines):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth == 0:
                    end_line, end_col = tok.end
                    break
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    if end_line is None:
        return None
    chunk = text.splitlines(keepends=True)[:end_line]
    chunk[-1] = chunk[-1][:end_col]
    return "".join(chunk).strip()


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _eval_dtypes(node: ast.expr) -> DtypeSet:
    """Evaluate a ``dtypesIfMPS=`` expression built from torch dtypes and common_dtype's helpers."""
    helpers = _common_dtype_helpers()
    if helpers is None:
        return None

    def ev(n: ast.expr) -> Any:
        if isinstance(n, ast.Attribute) and _dotted(n) is not None and _dotted(n).startswith("torch."):  # type: ignore[union-attr]
            return _dtype_name(n)
        if isinstance(n, (ast.Tuple, ast.List)):
            return [ev(e) for e in n.elts]
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in helpers:
            import torch

            args = [getattr(torch, a) if isinstance(a, str) else a for a in (ev(x) for x in n.args)]
            return [_dtype_text(d) for d in helpers[n.func.id](*args)]
        raise _Unreadable(ast.dump(n)[:80])

    try:
        value = ev(node)
    except (_Unreadable, TypeError, AttributeError):
        return None
    return frozenset(value) if isinstance(value, list) else None


def _dtype_text(dtype: Any) -> str:
    return str(dtype).rpartition(".")[2]


@functools.cache
def _common_dtype_helpers() -> dict[str, Any] | None:
    try:
        from torch.testing._internal import common_dtype  # torch only: no test machinery
    except Exception:
        return None
    return {
        name: getattr(common_dtype, name) for name in dir(common_dtype) if name.endswith(("types", "_and"))
    }


def _decorate_infos(node: ast.expr) -> Iterator[ast.Call]:
    if isinstance(node, (ast.Tuple, ast.List)):
        for element in node.elts:
            yield from _decorate_infos(element)
    elif isinstance(node, ast.Call) and _dotted(node.func) in ("DecorateInfo",):
        yield node


def _decoration(call: ast.Call) -> tuple[str, str, DtypeSet] | None:
    """``(kind, target, dtypes)`` of an MPS ``DecorateInfo``; None for other devices or tolerances."""
    kwargs = {k.arg: k.value for k in call.keywords if k.arg}
    if not call.args:
        return None
    device = kwargs.get("device_type")
    positional = [a.value if isinstance(a, ast.Constant) else None for a in call.args[1:3]]
    cls = kwargs.get("cls_name")
    test = kwargs.get("test_name")
    cls_name = cls.value if isinstance(cls, ast.Constant) else (positional[0] if positional else None)
    test_name = (
        test.value if isinstance(test, ast.Constant) else (positional[1] if len(positional) > 1 else None)
    )
    # TestConsistency only runs on MPS, so its decorations need no device_type.
    on_mps = isinstance(device, ast.Constant) and device.value == "mps"
    if not (on_mps or (device is None and cls_name == "TestConsistency")):
        return None
    decorator = call.args[0]
    name = _dotted(decorator.func if isinstance(decorator, ast.Call) else decorator) or ""
    if name.endswith("expectedFailure"):
        kind = "xfail"
    elif name.endswith("skip") or name.startswith("skip"):
        kind = "skip"
    else:
        return None  # toleranceOverride and friends: not an outcome
    target = f"{cls_name or '*'}.{test_name or '*'}" if cls_name else "*"
    dtypes_node = kwargs.get("dtypes")
    try:
        dtypes = None if dtypes_node is None else _dtypes_value(dtypes_node)
    except _Unreadable:
        return None
    return kind, target, dtypes


def _decoration_category(info: ast.Call, comments: Mapping[int, str]) -> str:
    """What the comment right above a ``DecorateInfo`` says its expected failure is about: ``"cpu"`` when it
    quotes a CPU kernel's dtype error (the test's CPU reference fails, e.g. ``"kthvalue_cpu" not
    implemented for 'Bool'``), ``"accuracy"`` for values that differ, else ``""``."""
    line = info.lineno - 1
    block: list[str] = []
    while line in comments:
        block.append(comments[line])
        line -= 1
    words = " ".join(block)
    if "not implemented for" in words and "mps" not in words:
        return "cpu"
    if any(w in words for w in _ACCURACY_WORDS):
        return "accuracy"
    return ""


def _declaration(call: ast.Call, comments: Mapping[int, str] | None = None) -> OpInfoDeclaration | None:
    kwargs = {k.arg: k.value for k in call.keywords if k.arg}
    name_node = call.args[0] if call.args else kwargs.get("name")
    if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
        return None

    def text(key: str) -> str | None:
        node = kwargs.get(key)
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    xfail: dict[str, DtypeSet] = {}
    skip: dict[str, DtypeSet] = {}
    cpu: dict[str, DtypeSet] = {}
    accuracy: dict[str, DtypeSet] = {}
    for key in ("skips", "decorators"):
        if key not in kwargs:
            continue
        for info in _decorate_infos(kwargs[key]):
            decoration = _decoration(info)
            if decoration is None:
                continue
            kind, target, dtypes = decoration
            if kind == "xfail" and comments is not None:
                kind = _decoration_category(info, comments) or kind
            table = {"xfail": xfail, "skip": skip, "cpu": cpu}.get(kind, accuracy)
            previous = table.get(target, frozenset())
            table[target] = None if dtypes is None or previous is None else previous | dtypes
    dtypes_node = kwargs.get("dtypesIfMPS")
    op_node = kwargs.get("op")
    if not (xfail or skip or cpu or accuracy or dtypes_node is not None):
        return None
    return OpInfoDeclaration(
        name=name_node.value,
        variant=text("variant_test_name") or "",
        aten_name=text("aten_name"),
        op=_dotted(op_node) if op_node is not None else None,
        dtypes_if_mps=_eval_dtypes(dtypes_node) if dtypes_node is not None else None,
        xfail=MappingProxyType(xfail),
        skip=MappingProxyType(skip),
        cpu_xfail=MappingProxyType(cpu),
        accuracy_xfail=MappingProxyType(accuracy),
    )


_NAME = re.compile(r"""[ \t]*\w+Info\(\s*(?:name\s*=\s*)?['"]([^'"]+)['"]""")
_VARIANT = re.compile(r"""variant_test_name\s*=\s*['"]([^'"]*)['"]""")


def scan_opinfo_keys(paths: Iterable[str | Path]) -> dict[str, tuple[str, str]]:
    """``key -> (name, variant)`` of every OpInfo entry in ``paths`` that names itself with a literal."""
    keys: dict[str, tuple[str, str]] = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        starts = [m.start(1) for m in _ENTRY.finditer(text)]
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else len(text)
            line_start = text.rfind("\n", 0, start) + 1
            name = _NAME.match(text, line_start)
            if name is None:
                continue
            variant = _VARIANT.search(text, start, stop)
            pair = (name.group(1), variant.group(1) if variant else "")
            keys.setdefault(pair[0] + pair[1], pair)
    return keys


def parse_opinfo_declarations(paths: Iterable[str | Path]) -> dict[str, OpInfoDeclaration]:
    """MPS declarations of the OpInfos defined in ``paths``, by key. Only entries whose source mentions
    ``mps`` are parsed; an entry that cannot be parsed is skipped."""
    found: dict[str, OpInfoDeclaration] = {}
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        starts = [m.start(1) for m in _ENTRY.finditer(text)]
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else len(text)
            span = text[start:stop]
            if "mps" not in span and "MPS" not in span:
                continue
            source = _call_source(span)
            if source is None:
                continue
            try:
                node = ast.parse(source, mode="eval").body
            except SyntaxError:
                continue
            if isinstance(node, ast.Call):
                declaration = _declaration(node, _comments(source))
                if declaration is not None:
                    found.setdefault(declaration.key, declaration)
    return found


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
