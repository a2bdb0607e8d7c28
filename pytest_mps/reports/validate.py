"""Reading and validating JSON reports by hand, against ``schema.json`` itself.

The schema is the one place where a report's shape is written down; :func:`validate_report` interprets
it (the subset of JSON Schema it uses: ``type``, ``const``, ``enum``, ``required``, ``properties``,
``additionalProperties``, ``items``, ``minimum``, local ``$ref``), so a rule added to the schema is
enforced here too, with no dependency on the ``jsonschema`` package (a test dependency only). A keyword
this interpreter does not know is a programming error (:class:`SchemaKeywordError`), caught by the tests
rather than silently skipped.

It is stricter than JSON Schema where Python's JSON differs from JSON: a bool is not a number (so
``"schema_version": true`` is refused, though ``True == 1`` in Python), an integer is an ``int`` (not
``1.0``), a number is finite (``NaN``, ``Infinity`` and ``1e400`` are refused). Beyond the schema it checks
what merging relies on: each check names an existing source, image names use a safe alphabet
(:func:`safe_image_name`), image entries are paths or numbers, and nothing nests absurdly deep.

Every problem is one line: a :class:`ReportError` naming the file and the field.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_REPORT_BYTES",
    "ReportError",
    "SchemaKeywordError",
    "load_report",
    "safe_image_name",
    "schema",
    "validate_report",
]

SCHEMA_PATH = Path(__file__).with_name("schema.json")
#: A report larger than this is refused before it is read (thousands of checks take a few MB).
MAX_REPORT_BYTES = 256 << 20
#: Deeper nesting is refused (the schema nests 5 levels; ``details`` may nest a few more).
MAX_DEPTH = 64
_IMAGE_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")
#: Keywords that only annotate; everything else must be interpreted below.
_ANNOTATIONS = frozenset(("$schema", "$id", "title", "description", "$defs", "default", "examples"))
_KEYWORDS = frozenset(
    ("type", "const", "enum", "required", "properties", "additionalProperties", "items", "minimum", "$ref")
)


class ReportError(ValueError):
    """A file is not a usable pytest-mps report; the message is one line."""


class SchemaKeywordError(RuntimeError):
    """``schema.json`` uses a keyword this validator does not interpret (extend :mod:`validate`)."""


def safe_image_name(name: object) -> bool:
    """Whether ``name`` may name a report image (it becomes part of a file name): 1-32 characters of
    ``[A-Za-z0-9_]``, so no path separator, dot or drive can ever reach a path."""
    return isinstance(name, str) and _IMAGE_NAME.fullmatch(name) is not None


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """``schema.json``, parsed once."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, bool | type(None)) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else "non-finite number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is(value: Any, kind: str) -> bool:
    actual = _json_type(value)
    return actual == kind or (kind == "number" and actual == "integer")


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _same(a: Any, b: Any) -> bool:
    """JSON equality without Python's ``True == 1``."""
    return _json_type(a) == _json_type(b) and a == b


def _field(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) is not None
    return (f"{path}.{text}" if path else text) if plain else f"{path}[{_short(text)}]"


class _Validator:
    def __init__(self, root: Mapping[str, Any], where: str) -> None:
        self.root = root
        self.where = where

    def fail(self, path: str, problem: str) -> ReportError:
        return ReportError(f"{self.where}: {path or 'the report'}: {problem}")

    def resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#/"):
            raise SchemaKeywordError(f"only local $ref is supported, not {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def check(self, value: Any, node: Mapping[str, Any], path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(path, f"nested deeper than {MAX_DEPTH} levels")
        unknown = set(node) - _KEYWORDS - _ANNOTATIONS
        if unknown:
            raise SchemaKeywordError(f"schema keyword(s) {sorted(unknown)} at {path or 'the top'}")
        if "$ref" in node:
            self.check(value, self.resolve(node["$ref"]), path, depth)
        if "type" in node:
            kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
            if not any(_is(value, k) for k in kinds):
                wanted = " or ".join(kinds)
                raise self.fail(path, f"{_short(value)} is {_a(_json_type(value))}, not {_a(wanted)}")
        if "const" in node and not _same(value, node["const"]):
            raise self.fail(path, f"{_short(value)} is not {_short(node['const'])}")
        if "enum" in node and not any(_same(value, e) for e in node["enum"]):
            choices = ", ".join(_short(e) for e in node["enum"])
            raise self.fail(path, f"{_short(value)} is not one of {choices}")
        if "minimum" in node and _is(value, "number") and value < node["minimum"]:
            raise self.fail(path, f"{_short(value)} is below the minimum {node['minimum']}")
        if isinstance(value, dict):
            self.check_object(value, node, path, depth)
        elif isinstance(value, list) and "items" in node:
            for i, item in enumerate(value):
                self.check(item, node["items"], _field(path, i), depth + 1)
        elif isinstance(value, list | dict):
            _depth(value, path, depth, self)

    def check_object(self, value: dict[str, Any], node: Mapping[str, Any], path: str, depth: int) -> None:
        for name in node.get("required", ()):
            if name not in value:
                raise self.fail(_field(path, name), "missing")
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():
            where = _field(path, key)
            if key in properties:
                self.check(item, properties[key], where, depth + 1)
            elif extra is False:
                raise self.fail(where, "unknown field (not in this schema version)")
            elif isinstance(extra, dict):
                self.check(item, extra, where, depth + 1)
            else:
                _depth(item, where, depth + 1, self)


def _depth(value: Any, path: str, depth: int, validator: _Validator) -> None:
    """Refuse absurd nesting (or non-finite numbers) in parts the schema leaves open (``details``)."""
    if depth > MAX_DEPTH:
        raise validator.fail(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise validator.fail(path, f"{_short(value)} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _depth(item, _field(path, key), depth + 1, validator)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _depth(item, _field(path, i), depth + 1, validator)


def validate_report(data: Any, *, where: str = "report") -> None:
    """Raise :class:`ReportError` (one line) unless ``data`` is a report this version reads and writes:
    valid against ``schema.json`` (interpreted strictly: see the module docstring), every check naming
    an existing source, and every image name safe."""
    from pytest_mps.reports.model import SCHEMA_VERSION

    if not isinstance(data, dict):
        raise ReportError(f"{where}: not a pytest-mps report (a JSON {type(data).__name__}, not an object)")
    if "schema_version" not in data:
        raise ReportError(f"{where}: not a pytest-mps report (no schema_version)")
    version = data["schema_version"]
    if not _same(version, SCHEMA_VERSION):
        raise ReportError(
            f"{where}: schema_version {_short(version)} is not supported "
            f"(this pytest-mps reads {SCHEMA_VERSION})"
        )
    validator = _Validator(schema(), where)
    validator.check(data, validator.root, "", 0)
    for i, check in enumerate(data["checks"]):
        if not check["source"] < len(data["sources"]):
            raise ReportError(f"{where}: checks[{i}].source {check['source']} names no source")
        images = check.get("images")
        for name, value in (images or {}).items():
            if not safe_image_name(name):
                raise ReportError(
                    f"{where}: checks[{i}].images: image name {_short(name)} is not 1-32 letters, "
                    "digits or underscores"
                )
            if not (isinstance(value, str) or _is(value, "number")):
                raise ReportError(
                    f"{where}: checks[{i}].images.{name}: {_short(value)} is neither a path nor a number"
                )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_regular(path: Path, where: str, limit: int) -> bytes:
    """The bytes of a regular file, refusing FIFOs, devices and folders without blocking on them, and
    files larger than ``limit`` without reading them."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ReportError(f"{where}: no such file") from None
    except OSError as exc:
        raise ReportError(f"{where}: cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ReportError(f"{where}: is a folder, not a JSON report")
    if not stat.S_ISREG(info.st_mode):
        raise ReportError(f"{where}: is not a regular file (a FIFO, socket or device?); give a JSON report")
    if info.st_size > limit:
        raise ReportError(f"{where}: {info.st_size} bytes, larger than a report can be ({limit} bytes)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ReportError(f"{where}: cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the stat and the open
            raise ReportError(f"{where}: is not a regular file")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise ReportError(f"{where}: cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ReportError(f"{where}: larger than a report can be ({limit} bytes)")
    return data


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a JSON report; every problem is a one-line :class:`ReportError`."""
    where = str(path)
    data = _read_regular(Path(path), where, MAX_REPORT_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{where}: cannot be read (not UTF-8 text)") from None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ReportError(f"{where}: not JSON we read (nested too deeply)") from None
    except ValueError as exc:
        raise ReportError(f"{where}: not JSON ({exc})") from None
    validate_report(parsed, where=where)
    return parsed
