"""The OpInfo definitions' MPS declarations, read from the installed torch's source (never imported).

``torch/testing/_internal/common_methods_invocations.py`` (1.4 MB) and ``opinfo/definitions/*.py`` define
the OpInfos PyTorch's MPS tests sweep. Importing them needs torch's test machinery (``expecttest``) and
seconds; this module scans the text instead: OpInfo entries start a line (``    OpInfo('name', ...``), only
those that mention MPS are parsed with :mod:`ast` (their ``DecorateInfo(..., device_type="mps")``
expected failures and skips, ``dtypesIfMPS``), and the comment above each decoration says what it is
about when it says so. Also the small literal readers :mod:`~pytest_mps.emulation.mps_expectations` shares.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ACCURACY_WORDS",
    "CPU_WORDS",
    "DtypeSet",
    "OpInfoDeclaration",
    "Unreadable",
    "comments_by_line",
    "dtypes_value",
    "parse_opinfo_declarations",
    "scan_opinfo_keys",
]

#: dtype names an entry applies to; None: every dtype.
DtypeSet = frozenset[str] | None


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


class Unreadable(Exception):
    """An expression this parser does not evaluate (the entry is skipped)."""


def _dtype_name(node: ast.expr) -> str:
    # torch.float32 / torch.half / torch.cdouble ...: canonical names without importing torch.
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        return _ALIASES.get(node.attr, node.attr)
    raise Unreadable(ast.dump(node)[:80])


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


def dtypes_value(node: ast.expr) -> DtypeSet:
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return frozenset(_dtype_name(e) for e in node.elts)
    raise Unreadable(ast.dump(node)[:80])


# What PyTorch's comment above an entry says it is about, when it says: wrong values on a working op, or
# a failure on the CPU side of the comparison. Such entries are not MPS failures a rule can predict.
ACCURACY_WORDS = (
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
CPU_WORDS = (
    "cpu error",
    "not implemented on cpu",
    "any device",
    "derivative for",
    "on both cpu and mps",
    "is not iterable",
)


def comments_by_line(text: str) -> dict[int, str]:
    found: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                found[tok.start[0]] = tok.string.lstrip("#").strip().lower()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return found


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
        raise Unreadable(ast.dump(n)[:80])

    try:
        value = ev(node)
    except (Unreadable, TypeError, AttributeError):
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
        dtypes = None if dtypes_node is None else dtypes_value(dtypes_node)
    except Unreadable:
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
    if any(w in words for w in ACCURACY_WORDS):
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
                declaration = _declaration(node, comments_by_line(source))
                if declaration is not None:
                    found.setdefault(declaration.key, declaration)
    return found
