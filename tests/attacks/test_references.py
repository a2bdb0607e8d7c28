"""Attacks on the CPU reference store (issue 12, points 2, 5 and 6): files that cannot be read are kept,
not deleted; only content that fails verification is replaced; nothing but a regular file is ever opened
for reading, and reads are bounded by the header; a reader never deletes what a writer just wrote;
concurrent writers leave whole files; keys are the same in every process.

Each attack is one case; the store runs with ``warn=True`` where the warning is part of the contract."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pytest_mps.reference_store import (
    CorruptReferenceWarning,
    ReferenceStore,
    ReferenceStoreWarning,
    entry_metadata,
    verify_entry,
)
from pytest_mps.references import ReferenceCache, ReferenceKey
from pytest_mps.reports.atomic import atomic_write
from pytest_mps.running import Run

from conftest import FIXTURES, REPO

VERSIONS = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0"}
KEY = ReferenceKey("a" * 32, "b" * 32, "float32", "np")
UNREADABLE = "could not be read.*kept"  # UnreadableReferenceWarning's message


def store_at(folder: Path, *, warn: bool = False) -> ReferenceStore:
    return ReferenceStore(folder, versions=lambda: VERSIONS, warn=warn)


def small_run(seed: int = 0) -> Run:
    return Run(np.random.default_rng(seed).random((1, 4, 4, 3), dtype=np.float32), 0.25, "float32")


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    """A folder holding one valid reference for KEY; returns its path."""
    store = store_at(tmp_path / "refs")
    store.save(KEY, small_run())
    return store.path_for(KEY)


def _run_script(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


# --- point 2: unreadable is not corrupt --------------------------------------------------------------


def _failing_open(monkeypatch: pytest.MonkeyPatch, target: Path, code: int) -> None:
    """Opening ``target`` fails with ``code`` (through every way Python opens a file)."""

    def fail(path: object) -> None:
        if os.fspath(path) == str(target):
            raise OSError(code, os.strerror(code), str(target))

    real_os_open, real_io_open = os.open, io.open

    def os_open(path, *args, **kwargs):
        fail(path)
        return real_os_open(path, *args, **kwargs)

    def io_open(file, *args, **kwargs):
        if not isinstance(file, int):
            fail(file)
        return real_io_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr("builtins.open", io_open)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(errno.EACCES, id="permission-denied"),
        pytest.param(errno.EMFILE, id="too-many-open-files"),
        pytest.param(errno.ENFILE, id="file-table-full"),
        pytest.param(errno.EIO, id="io-error"),
        pytest.param(errno.EAGAIN, id="try-again"),
    ],
)
def test_a_file_that_cannot_be_opened_is_kept(
    stored: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    before = stored.read_bytes()
    store = store_at(stored.parent, warn=True)
    _failing_open(monkeypatch, stored, code)
    computed = []
    with pytest.warns(ReferenceStoreWarning, match=UNREADABLE):
        _, origin = ReferenceCache(store=store).get_or_compute(
            KEY, lambda: computed.append(1) or small_run(1)
        )
    monkeypatch.undo()
    assert origin == "computed" and computed == [1]
    assert stored.read_bytes() == before, "a valid reference was deleted or overwritten"
    assert not store.corrupted and [u["file"] for u in store.stats()["unreadable"]] == [str(stored)]
    assert store_at(stored.parent).load(KEY) is not None  # still there for the next run


def test_running_out_of_descriptors_keeps_the_file(stored: Path) -> None:
    """A real EMFILE: the process's descriptor limit is lowered and used up before the read."""
    result = _run_script(
        """
        import json, resource, sys, warnings
        from pathlib import Path
        from pytest_mps.reference_store import ReferenceStore
        from pytest_mps.references import ReferenceKey
        versions = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0"}
        key = ReferenceKey("a" * 32, "b" * 32, "float32", "np")
        store = ReferenceStore(sys.argv[1], versions=lambda: versions, warn=False)
        import numpy, safetensors.numpy, pytest_mps.running  # imported before the descriptors run out
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(open(sys.argv[2], "rb"))
        except OSError:
            pass
        run = store.load(key)
        for handle in held:
            handle.close()
        print("RESULT " + json.dumps({"run": run is not None, "stats": store.stats(),
                                      "exists": Path(sys.argv[3]).exists()}))
        """,
        str(stored.parent),
        sys.executable,
        str(stored),
    )
    assert result["run"] is False and result["exists"], result
    assert not result["stats"]["corrupted"], result
    assert "EMFILE" in json.dumps(result["stats"]["unreadable"]) or "open files" in json.dumps(result), result


# --- point 5: regular files only, bounded reads --------------------------------------------------------


def _plant_socket(path: Path) -> Callable[[], None]:
    path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    os.chdir(path.parent)  # socket paths are limited to ~100 bytes: bind by the short relative name
    try:
        server.bind(path.name)
    finally:
        os.chdir(here)
    return server.close


def _plant_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inner").write_text("x")


def _plant_device(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/null")


def _plant_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(_plant_folder, id="folder-at-the-name"),
        pytest.param(_plant_device, id="device-at-the-name"),
        pytest.param(_plant_socket, id="socket-at-the-name"),
        pytest.param(_plant_loop, id="symlink-loop-at-the-name"),
    ],
)
def test_something_else_than_a_file_is_reported_and_kept(
    stored: Path, plant: Callable[[Path], object]
) -> None:
    cleanup = plant(stored)
    try:
        store = store_at(stored.parent, warn=True)
        with pytest.warns(ReferenceStoreWarning, match=UNREADABLE):
            _, origin = ReferenceCache(store=store).get_or_compute(KEY, small_run)
        assert origin == "computed" and not store.corrupted and len(store.stats()["unreadable"]) == 1
        assert os.path.lexists(stored), "what was at the reference's name was removed"
        assert not stored.is_file() or stored.is_symlink()
        assert entry_metadata(stored) is None and verify_entry(stored) is not None
    finally:
        if callable(cleanup):
            cleanup()


def test_a_fifo_at_the_name_never_blocks(stored: Path, fifos) -> None:
    fifos.plant(stored)
    store = store_at(stored.parent, warn=False)
    assert store.load(KEY) is None
    assert entry_metadata(stored) is None  # the unused-references listing reads headers
    assert verify_entry(stored) is not None
    assert not fifos.unblocked, "a FIFO was opened for a blocking read"
    assert stored.exists() and len(store.stats()["unreadable"]) == 1


@pytest.mark.parametrize(
    "gigabytes",
    [pytest.param(4, id="padded-to-4GB"), pytest.param(64, id="padded-to-64GB")],
)
def test_a_padded_file_is_refused_without_reading_it(stored: Path, gigabytes: int) -> None:
    """A valid reference extended (sparsely) to gigabytes: refused after reading its header, in a
    process whose address space could not even hold the file."""
    with open(stored, "r+b") as handle:
        handle.truncate(gigabytes << 30)
    result = _run_script(
        """
        import json, os, resource, sys
        from pytest_mps.reference_store import ReferenceStore
        from pytest_mps.references import ReferenceKey
        import numpy, safetensors.numpy
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        read = [0]
        real_read = os.read
        def counting(fd, n):
            data = real_read(fd, n)
            read[0] += len(data)
            return data
        os.read = counting
        versions = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0"}
        store = ReferenceStore(sys.argv[1], versions=lambda: versions, warn=False)
        run = store.load(ReferenceKey("a" * 32, "b" * 32, "float32", "np"))
        print("RESULT " + json.dumps({"run": run is not None, "read": read[0], "stats": store.stats()}))
        """,
        str(stored.parent),
    )
    assert result["run"] is False
    (problem,) = result["stats"]["corrupted"]
    assert "padded" in problem["problem"], problem
    assert result["read"] < 1 << 20, f"read {result['read']} bytes of a padded file"
    assert not stored.exists()  # content that fails verification is replaced


def _rewrite_header(path: Path, change: Callable[[dict], None], *, data: bytes | None = None) -> None:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + (raw[8 + size :] if data is None else data))


def _set_offsets(offsets: object) -> Callable[[Path], None]:
    return lambda p: _rewrite_header(p, lambda h: h["output"].__setitem__("data_offsets", offsets))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(lambda p: p.write_bytes(b""), "truncated", id="empty-file"),
        pytest.param(lambda p: p.write_bytes(b"\xff" * 8), "not plausible", id="header-length-2**64"),
        pytest.param(
            lambda p: p.write_bytes((1 << 20).to_bytes(8, "little") + b"{}"),
            "truncated",
            id="header-past-eof",
        ),
        pytest.param(lambda p: p.write_bytes(b"\x02\0\0\0\0\0\0\0[]"), "no metadata", id="header-a-list"),
        pytest.param(_set_offsets([0, 1 << 40]), "truncated", id="offsets-past-eof"),
        pytest.param(_set_offsets([8, 0]), "data_offsets", id="offsets-backwards"),
        pytest.param(_set_offsets([-4, 8]), "data_offsets", id="offsets-negative"),
        pytest.param(_set_offsets(["0", "8"]), "data_offsets", id="offsets-strings"),
        pytest.param(_set_offsets([True, 8]), "data_offsets", id="offsets-bools"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes() + b"\0" * 4096), "padded", id="padded-by-4KB"),
        pytest.param(
            lambda p: _rewrite_header(p, lambda h: h["__metadata__"].__setitem__("pipeline", "c" * 32)),
            "key field 'pipeline'",
            id="another-keys-file-under-this-name",
        ),
        pytest.param(
            lambda p: _rewrite_header(p, lambda h: h["__metadata__"].__setitem__("shape", "[[")),
            "shape",
            id="metadata-shape-not-json",
        ),
        pytest.param(
            lambda p: _rewrite_header(p, lambda h: h["__metadata__"].__setitem__("seconds", "soon")),
            "timing",
            id="metadata-seconds-not-a-number",
        ),
        pytest.param(
            lambda p: _rewrite_header(p, lambda h: h["__metadata__"].__setitem__("format", "pickle")),
            "unknown format",
            id="metadata-other-format",
        ),
    ],
)
def test_content_that_fails_verification_is_replaced(
    stored: Path, damage: Callable[[Path], None], problem: str
) -> None:
    damage(stored)
    store = store_at(stored.parent, warn=True)
    with pytest.warns(CorruptReferenceWarning):
        _, origin = ReferenceCache(store=store).get_or_compute(KEY, small_run)
    assert origin == "computed" and not store.stats().get("unreadable")
    (found,) = store.corrupted
    assert problem in found["problem"], found
    assert verify_entry(store.path_for(KEY)) is None  # recomputed and rewritten whole
    assert store_at(stored.parent).load(KEY) is not None


# --- concurrent writers ------------------------------------------------------------------------------


def test_a_reader_never_deletes_what_a_writer_just_wrote(
    stored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader finds a damaged file; before it acts, another session replaces it with a whole one.
    The whole one survives (however the reader removes files: unlink or rename)."""
    data = bytearray(stored.read_bytes())
    data[-3] ^= 0x10
    stored.write_bytes(bytes(data))
    good = store_at(stored.parent)
    replaced = []

    def writer_first(real: Callable[..., object]) -> Callable[..., object]:
        def act(*args: object, **kwargs: object) -> object:
            if not replaced and os.fspath(args[0]) == str(stored):
                replaced.append(1)
                atomic_write(stored, _whole_file(good))  # the other session's write lands now
            return real(*args, **kwargs)

        return act

    monkeypatch.setattr(os, "rename", writer_first(os.rename))
    monkeypatch.setattr(os, "unlink", writer_first(os.unlink))
    monkeypatch.setattr(Path, "unlink", writer_first(Path.unlink))
    reader = store_at(stored.parent)
    assert reader.load(KEY) is None and reader.corrupted
    monkeypatch.undo()
    assert replaced, "the reader never tried to remove the damaged file"
    assert stored.exists(), "the reader deleted the file another session had just written"
    assert verify_entry(stored) is None


def _whole_file(store: ReferenceStore) -> bytes:
    scratch = store.folder.parent / "scratch"
    other = ReferenceStore(scratch, versions=store.versions, warn=False)
    other.save(KEY, small_run(7))
    data = other.path_for(KEY).read_bytes()
    shutil.rmtree(scratch)
    return data


_WRITER = """
import json, sys, warnings
import numpy as np
from pytest_mps.reference_store import ReferenceStore
from pytest_mps.references import ReferenceKey
from pytest_mps.reports.atomic import atomic_write
from pytest_mps.running import Run

folder, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
versions = {"torch": "1", "diffusers": "1", "transformers": "1"}
key = ReferenceKey("p", "inputs", "float32")
arrays = [np.full((1, 64, 64, 3), v, np.float32) for v in (1.0, 2.0, 3.0, 4.0)]
wrong = corrupt_seen = whole = 0
for i in range(rounds):
    store = ReferenceStore(folder, versions=lambda: versions, warn=False)
    store.save(key, Run(arrays[(me * 2 + i) % 4], 1.0))
    if i % 10 == me:  # now and then, damage the file in place (a bad disk, a bad copy)
        path = store.path_for(key)
        try:
            atomic_write(path, path.read_bytes()[:-7] + b"garbage")
        except FileNotFoundError:  # the other writer's reader removed it meanwhile
            pass
    run = store.load(key)
    if run is not None:
        whole += 1
        wrong += not any((run.array == a).all() for a in arrays)
    corrupt_seen += len(store.corrupted)
print("RESULT " + json.dumps({"wrong": wrong, "whole": whole, "corrupt_seen": corrupt_seen}))
"""


def test_two_sessions_writing_one_key_leave_whole_files(tmp_path: Path) -> None:
    """Two processes save, damage, load and re-save the same key 150 times each, at once: no crash,
    every load is a whole reference of the right content or a miss, and the folder ends with whole
    files only."""
    folder = tmp_path / "refs"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(folder), str(me), "150"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in (0, 1)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    results = [
        json.loads(next(ln for ln in o.splitlines() if ln.startswith("RESULT "))[7:]) for o, _ in outputs
    ]
    assert all(r["wrong"] == 0 for r in results), results
    assert sum(r["whole"] for r in results) > 0 and sum(r["corrupt_seen"] for r in results) > 0, results
    files = sorted(p.name for p in folder.iterdir())
    assert files and all(verify_entry(folder / name) is None for name in files), files  # no temporaries


# --- point 6: keys are the same in every process -------------------------------------------------------


_KEY_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
from pytest_mps.keys import pipeline_fingerprint
from pytest_mps.pipelines import load_pipeline
from pytest_mps.reference_store import ReferenceStore
from pytest_mps.references import ReferenceKey

out = {}
for folder in sys.argv[1:]:
    pipe = load_pipeline(folder)
    key = ReferenceKey(pipeline_fingerprint(pipe), "inputs", "float32")
    out[folder] = {
        "fingerprint": key.pipeline,
        "file": ReferenceStore(folder + "-refs").path_for(key).name,
        "defaults": list(pipe.scheduler.config.get("_use_default_values", [])),
    }
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def keys_in_two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, str, str]:
    """tiny-ddpm saved by an older Diffusers (configs missing keys, so ``_use_default_values`` holds
    several names) under two paths; process A (PYTHONHASHSEED=1) keys both, process B (seed 2) one."""
    root = tmp_path_factory.mktemp("keys")
    here, there = root / "here" / "ddpm", root / "there" / "ddpm"
    shutil.copytree(FIXTURES / "tiny-ddpm", here)
    for name in ("clip_sample_range", "sample_max_value", "dynamic_thresholding_ratio", "timestep_spacing"):
        config = here / "scheduler" / "scheduler_config.json"
        data = json.loads(config.read_text())
        data.pop(name)
        config.write_text(json.dumps(data))
    shutil.copytree(here, there)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _KEY_SCRIPT, *folders],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"},
        )
        for seed, folders in (("1", [str(here), str(there)]), ("2", [str(here)]))
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:]))
    return results[0], results[1], str(here), str(there)


def test_a_key_is_the_same_under_another_hash_seed(keys_in_two_processes) -> None:
    first, second, here, _ = keys_in_two_processes
    assert first[here]["defaults"] != second[here]["defaults"], "the seeds did not reorder the set"
    assert first[here]["fingerprint"] == second[here]["fingerprint"]
    assert first[here]["file"] == second[here]["file"]


def test_a_key_is_the_same_for_a_copy_in_another_folder(keys_in_two_processes) -> None:
    first, _, here, there = keys_in_two_processes
    assert first[here]["fingerprint"] == first[there]["fingerprint"]


_CONFIG_SCRIPT = """
import json
from pytest_mps.keys import canonical_config
names = {"timestep_spacing", "sample_max_value", "clip_sample_range", "thresholding", "steps_offset"}
config = {"_use_default_values": list(names), "_name_or_path": "/somewhere", "betas": {"b", "a", "c"},
          "beta_end": 0.02, "_from_deprecated_attn_block": True}
print("RESULT " + json.dumps({"order": config["_use_default_values"], "canonical": canonical_config(config)}))
"""


def test_canonical_config_is_the_same_under_another_hash_seed() -> None:
    """The cheap half of the above (no torch): set-ordered entries left out or sorted, paths left out,
    the other private entries kept."""
    first, second = (_run_script(_CONFIG_SCRIPT, env={"PYTHONHASHSEED": seed}) for seed in ("1", "2"))
    assert first["order"] != second["order"]
    assert first["canonical"] == second["canonical"]
    assert first["canonical"] == {
        "_from_deprecated_attn_block": True,
        "beta_end": 0.02,
        "betas": ["a", "b", "c"],
    }


def test_the_key_still_sees_what_changes_the_output(tmp_path: Path) -> None:
    """Canonical, not blind: a config value that changes the output still changes the key."""
    from pytest_mps.keys import pipeline_fingerprint
    from pytest_mps.pipelines import load_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_pipeline(FIXTURES / "tiny-ddpm")
        base = pipeline_fingerprint(pipe)
        pipe.scheduler.register_to_config(clip_sample_range=0.5)
        assert pipeline_fingerprint(pipe) != base
        pipe.scheduler.register_to_config(clip_sample_range=1.0, _use_default_values=["x", "y"])
        assert pipeline_fingerprint(pipe) == base
