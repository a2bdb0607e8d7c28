"""Reading torch's own ``torchgen/packaged/ATen/native/native_functions.yaml``: the four fields of each
operator entry that decide MPS coverage (:mod:`pytest_mps.emulation.op_coverage` classifies them).

A small dedicated line parser rather than PyYAML: only four fields of a machine-generated, regularly
formatted file are needed, the project then needs no YAML dependency, and the parse is ~10x faster than
even libyaml's C loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["FIX_HINT", "NativeFunction", "OpCoverageError", "parse_native_functions"]


class OpCoverageError(RuntimeError):
    """native_functions.yaml could not be found or parsed; the message names the path and a fix."""


@dataclass(frozen=True)
class NativeFunction:
    """The fields of one native_functions.yaml entry (or an ``autogen:`` op) that decide MPS coverage.

    ``dispatch`` is ``None`` when the entry has no ``dispatch:`` field (CompositeImplicitAutograd), else the
    set of individual dispatch keys (``"CPU, CUDA, MPS: foo"`` contributes three); ``autogen_of`` names the
    entry whose ``autogen:`` generated this op (its kernel is a generated composite wrapper around it).
    """

    name: str
    dispatch: frozenset[str] | None = None
    structured_delegate: str | None = None
    autogen: tuple[str, ...] = ()
    autogen_of: str | None = None
    line: int = 0


#: How to get a good native_functions.yaml back (the end of every error about it).
FIX_HINT = (
    "Fix: reinstall torch (`pip install --force-reinstall torch`), whose wheel ships it, "
    "or pass load_coverage(yaml_path=...) a good copy."
)


def _corrupt(path: Path, line: int, what: str) -> OpCoverageError:
    return OpCoverageError(
        f"cannot parse {path} (line {line}): {what}. The file should be torch's own "
        f"torchgen/packaged/ATen/native/native_functions.yaml. {FIX_HINT}"
    )


def parse_native_functions(path: str | Path) -> dict[str, NativeFunction]:
    """Parse the fields needed for MPS coverage out of a native_functions.yaml.

    A line parser for the file's fixed layout: top-level ``- func: name(...) -> ...`` entries, two-space
    entry fields, and four-space ``Keys: kernel`` lines under ``dispatch:``. Anything else is skipped, so
    new fields do not break it; structural surprises raise :class:`OpCoverageError`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OpCoverageError(
            f"native_functions.yaml not found at {path}. It ships with torch "
            f"(torchgen/packaged/ATen/native/); {FIX_HINT}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OpCoverageError(f"cannot read {path}: {exc}. {FIX_HINT}") from exc

    entries: dict[str, NativeFunction] = {}
    # Per-entry accumulators, flushed when the next entry starts; plain locals keep the loop fast.
    name: str | None = None
    start = 0
    keys: set[str] | None = None
    delegate: str | None = None
    autogen: tuple[str, ...] = ()
    in_dispatch = False

    def flush() -> None:
        if name is None:
            return
        if name in entries:
            raise _corrupt(path, start, f"duplicate entry {name!r}")
        entries[name] = NativeFunction(
            name, None if keys is None else frozenset(keys), delegate, autogen, None, start
        )

    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw or raw[0] == "#":
            continue
        if raw.startswith("- func:"):
            flush()
            schema = raw[7:].strip()
            paren = schema.find("(")
            name = schema[:paren].strip() if paren > 0 else ""
            if not name or " " in name:
                raise _corrupt(path, lineno, f"malformed operator schema {schema[:80]!r}")
            start, keys, delegate, autogen, in_dispatch = lineno, None, None, (), False
            continue
        stripped = raw.strip()
        if not stripped or stripped[0] == "#":
            continue
        if name is None:
            raise _corrupt(path, lineno, "content before the first `- func:` entry")
        if raw.startswith("    ") and in_dispatch:
            key_part, sep, _kernel = stripped.partition(":")
            if not sep:
                raise _corrupt(path, lineno, f"dispatch line without `Key: kernel`: {stripped[:80]!r}")
            assert keys is not None  # set when `dispatch:` was seen
            keys.update(k.strip() for k in key_part.split(","))
            continue
        if raw.startswith("  ") and raw[2] != " ":
            in_dispatch = False
            if stripped.startswith("- "):  # a block-sequence item of another field (``precomputed:``)
                continue
            field_name, sep, value = stripped.partition(":")
            value = value.split("#", 1)[0].strip()
            if not sep:
                raise _corrupt(path, lineno, f"entry field without `:`: {stripped[:80]!r}")
            if field_name == "dispatch":
                keys = set()
                if value == "{}":  # an explicit empty dispatch: no kernel anywhere (e.g. NJT-only ops)
                    continue
                if value:
                    raise _corrupt(path, lineno, f"unsupported inline dispatch {value[:80]!r}")
                in_dispatch = True
            elif field_name == "structured_delegate":
                delegate = value
            elif field_name == "autogen":
                autogen = tuple(a.strip() for a in value.split(",") if a.strip())
            continue
        if raw[0] not in " -":
            raise _corrupt(path, lineno, f"unexpected top-level content {stripped[:80]!r}")
        # Anything else (continuation lines of other fields, deeper nesting) is not needed here.
    flush()
    if not entries:
        raise _corrupt(path, 1, "no `- func:` entries found")

    # ``autogen:`` ops (mostly ``.out`` variants) are generated by torchgen, not written in the file; they
    # exist in the dispatcher, so give them entries pointing back at their source.
    for entry in list(entries.values()):
        for generated in entry.autogen:
            entries.setdefault(generated, NativeFunction(generated, autogen_of=entry.name, line=entry.line))
    return entries
