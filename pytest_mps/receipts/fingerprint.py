"""What a receipt binds: the files of each pipeline folder, the project's source tree, and the machine.

A fingerprint is a map of POSIX relative path -> ``sha256:<hex>`` of the file's bytes (a symlink is
followed: its target's bytes count, as they are what a pipeline loads), plus the SHA-256 of that map
in canonical JSON (``digest``). Keeping the whole map, not only the digest, lets a verifier name the
file that changed.

- **Pipeline folders**: every regular file under the folder (weights, configs, tokenizer vocabularies,
  pickled weights if any), skipping names that start with a dot (``.DS_Store``, ``.cache``): those
  appear on one machine and not another and never decide a pipeline's output.
- **Source tree, git**: at signing, the tracked files and the untracked files git does not ignore
  (what the run could have imported); at verification, the tracked files of the checkout (what was
  committed; never CI's own build debris). Contents are read from the working tree, so uncommitted
  edits count. The commit and whether the tree was dirty are recorded for the reader only: a pull
  request's merge commit differs from the contributor's, so the content decides.
- **Source tree, no git**: every file under the folder, skipping version-control folders, caches,
  virtual environments and build outputs (:data:`SKIPPED_NAMES`), at both ends.

Paths listed as excluded (the receipt and its signature, report files the run wrote) are left out at
both ends.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_TREE_FILES",
    "SKIPPED_NAMES",
    "FingerprintError",
    "describe_difference",
    "files_digest",
    "pipeline_fingerprint",
    "signing_environment",
    "source_fingerprint",
    "source_root",
]

#: Folder and file names a plain (non-git) source tree walk skips: version control, caches, virtual
#: environments and build outputs, which differ between a laptop and a CI checkout.
SKIPPED_NAMES = (
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".tox",
    ".nox",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "*.pyc",
    ".DS_Store",
)
#: A plain tree walk refuses folders larger than this: a home folder is not a project.
MAX_TREE_FILES = 20_000
_CHUNK = 1 << 20


class FingerprintError(ValueError):
    """A folder cannot be fingerprinted (missing, unreadable, too large); the message is one line."""


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise FingerprintError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    return "sha256:" + h.hexdigest()


def files_digest(files: Mapping[str, str]) -> str:
    """The SHA-256 of a path -> hash map in canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(dict(files), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def _hash_files(root: Path, relative: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in sorted(set(relative)):
        path = root / rel
        if path.is_file():  # follows symlinks; a dangling link or a folder (submodule) is left out
            out[rel] = _file_hash(path)
    return out


def _excluded(rel: str, exclude: Sequence[str]) -> bool:
    return any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in exclude)


def pipeline_fingerprint(folder: str | os.PathLike[str], *, root: Path | None = None) -> dict[str, Any]:
    """The fingerprint of one pipeline folder: ``name`` (the folder's name), ``path`` (relative to
    ``root`` when inside it, else None), ``files`` and ``digest``."""
    path = Path(folder)
    if not path.is_dir():
        raise FingerprintError(f"pipeline folder {path} does not exist or is not a folder")
    rel_files = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(path)
        rel_files += [(base / f).as_posix() for f in filenames if not f.startswith(".")]
    files = _hash_files(path, rel_files)
    if not files:
        raise FingerprintError(f"pipeline folder {path} holds no files")
    where: str | None = None
    if root is not None:
        try:
            where = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            where = None
    return {"name": path.resolve().name, "path": where, "files": files, "digest": files_digest(files)}


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise FingerprintError(
            "git is not installed; install it, or fingerprint a folder without .git"
        ) from None
    except subprocess.TimeoutExpired:
        raise FingerprintError(f"git timed out listing the files of {root}") from None


def source_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The top of the git work tree holding ``start`` (default: the current folder), else ``start``."""
    folder = Path(start or Path.cwd()).resolve()
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return folder
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 and out.stdout.strip() else folder


def _is_git_top(root: Path) -> bool:
    out = _git(root, "rev-parse", "--show-toplevel")
    return out.returncode == 0 and Path(os.fsdecode(out.stdout.strip())).resolve() == root.resolve()


def _git_files(root: Path, *, untracked: bool) -> list[str]:
    args = ["ls-files", "-z", "--cached"]
    if untracked:
        args += ["--others", "--exclude-standard"]
    out = _git(root, *args)
    if out.returncode != 0:
        first = os.fsdecode(out.stderr).strip().splitlines()
        raise FingerprintError(f"git cannot list the files of {root}: {first[0] if first else 'failed'}")
    return [os.fsdecode(p) for p in out.stdout.split(b"\0") if p]


def _git_state(root: Path, exclude: Sequence[str]) -> tuple[str | None, bool]:
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    commit = os.fsdecode(head.stdout).strip() or None if head.returncode == 0 else None
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=normal")
    entries = [os.fsdecode(p) for p in status.stdout.split(b"\0") if p]
    dirty = any(len(e) > 3 and not _excluded(e[3:], exclude) for e in entries)
    return commit, dirty


def _skipped(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SKIPPED_NAMES)


def _tree_files(root: Path) -> list[str]:
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        base = Path(dirpath).relative_to(root)
        files += [(base / f).as_posix() for f in filenames if not _skipped(f)]
        if len(files) > MAX_TREE_FILES:
            raise FingerprintError(
                f"{root} holds more than {MAX_TREE_FILES} files and is not a git checkout; "
                "point the source at your project's folder"
            )
    return files


def source_fingerprint(
    root: str | os.PathLike[str],
    *,
    exclude: Sequence[str] = (),
    kind: str | None = None,
    signing: bool = True,
) -> dict[str, Any]:
    """The fingerprint of a project's source tree at ``root``.

    Args:
        exclude: relative paths (files or folders) left out.
        kind: ``"git"`` or ``"tree"``; default: ``"git"`` when ``root`` is the top of a git work tree.
        signing: at signing, git's untracked (not ignored) files count too; at verification only the
            tracked files do (see the module docstring).
    """
    folder = Path(root).resolve()
    if not folder.is_dir():
        raise FingerprintError(f"source folder {root} does not exist or is not a folder")
    if kind is None:
        kind = "git" if _is_git_top(folder) else "tree"
    if kind == "git":
        if not _is_git_top(folder):
            raise FingerprintError(
                f"{root} is not the top of a git checkout, but the receipt was signed from one; "
                "pass the checkout's root as --source"
            )
        listed = _git_files(folder, untracked=signing)
        commit, dirty = _git_state(folder, exclude) if signing else (None, None)
    elif kind == "tree":
        listed, commit, dirty = _tree_files(folder), None, None
    else:
        raise FingerprintError(f"unknown source fingerprint kind {kind!r}")
    files = _hash_files(folder, (rel for rel in listed if not _excluded(rel, exclude)))
    return {
        "kind": kind,
        "commit": commit,
        "dirty": dirty,
        "excluded": sorted(set(exclude)),
        "files": files,
        "digest": files_digest(files),
    }


def describe_difference(signed: Mapping[str, str], now: Mapping[str, str]) -> str | None:
    """One phrase naming how ``now`` differs from ``signed`` (changed, missing and new files), or None
    when they are equal."""
    changed = sorted(p for p in signed.keys() & now.keys() if signed[p] != now[p])
    missing = sorted(signed.keys() - now.keys())
    added = sorted(now.keys() - signed.keys())
    parts = []
    for label, paths in (("changed", changed), ("missing", missing), ("not in the receipt", added)):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            parts.append(f"{paths[0]} {label}{more}")
    return "; ".join(parts) if parts else None


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def signing_environment() -> dict[str, Any]:
    """The machine that signs: :func:`pytest_mps.environment.detect_environment` (without importing
    torch) plus the platform string and, on macOS, the chip (``Apple M2 Pro``) and model."""
    from pytest_mps.environment import detect_environment

    data = detect_environment(probe_torch=False).to_dict()
    data["platform"] = platform.platform()
    data["chip"] = _sysctl("machdep.cpu.brand_string") if data["os_name"] == "Darwin" else None
    data["model"] = _sysctl("hw.model") if data["os_name"] == "Darwin" else None
    return data
