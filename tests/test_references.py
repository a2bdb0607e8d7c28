"""Stored CPU references: written by one run and used by the next, keyed by everything that changes the
output, checked on every read (a flipped byte or a truncated file is reported and recomputed, never
trusted), never unpickled, and written atomically even when the writer is killed mid-write."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pytest_mps.reference_store import (
    FORMAT,
    CorruptReferenceWarning,
    ReferenceStore,
    entry_metadata,
    file_key,
    stored_entries,
    verify_entry,
)
from pytest_mps.references import ReferenceCache, ReferenceKey
from pytest_mps.reports.atomic import TEMP_PREFIX, atomic_write, remove_stale_temporaries
from pytest_mps.running import Run

from conftest import FIXTURES, REPO

DDPM = str(FIXTURES / "tiny-ddpm")
VERSIONS = {"torch": "2.13.0", "diffusers": "0.42.1"}
KEY = ReferenceKey(pipeline="a" * 32, inputs="b" * 32, dtype="float32", output_type="np")


def store_at(folder: Path, *, warn: bool = False, **versions: str) -> ReferenceStore:
    fixed = {**VERSIONS, **versions}
    return ReferenceStore(folder, versions=lambda: fixed, warn=warn)


def small_run(seed: int = 0) -> Run:
    array = np.random.default_rng(seed).random((1, 4, 4, 3), dtype=np.float32)
    return Run(array, 0.25, "float32")


# --- the store on its own ---------------------------------------------------------------------------


def test_round_trip_keeps_array_timing_and_dtype(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    run = small_run()
    store.save(KEY, run)
    loaded = store_at(tmp_path).load(KEY)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.array, run.array)
    assert loaded.array.dtype == np.float32 and loaded.seconds == 0.25 and loaded.dtype == "float32"
    (path,) = stored_entries(tmp_path)
    meta = entry_metadata(path)
    assert meta is not None and meta["format"] == FORMAT
    assert {k: meta[k] for k in file_key(KEY, VERSIONS)} == file_key(KEY, VERSIONS)
    assert len(meta["checksum"]) == 64


def test_file_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    store = store_at(tmp_path)
    store.save(KEY, small_run())
    with safe_open(str(store.path_for(KEY)), framework="np") as handle:
        assert list(handle.keys()) == ["output"]
        assert handle.metadata()["torch"] == "2.13.0"


@pytest.mark.parametrize(
    ("change", "key", "versions"),
    [
        ("weights or configs", ReferenceKey("c" * 32, KEY.inputs, KEY.dtype, KEY.output_type), {}),
        ("inputs or seed", ReferenceKey(KEY.pipeline, "d" * 32, KEY.dtype, KEY.output_type), {}),
        ("dtype", ReferenceKey(KEY.pipeline, KEY.inputs, "float16", KEY.output_type), {}),
        ("output type", ReferenceKey(KEY.pipeline, KEY.inputs, KEY.dtype, "pt"), {}),
        ("torch version", KEY, {"torch": "2.14.0"}),
        ("diffusers version", KEY, {"diffusers": "0.43.0"}),
    ],
)
def test_a_key_change_misses_the_old_entry(tmp_path: Path, change: str, key: ReferenceKey, versions) -> None:
    store_at(tmp_path).save(KEY, small_run())
    changed = store_at(tmp_path, **versions)
    assert changed.path_for(key) != store_at(tmp_path).path_for(KEY), change
    assert changed.load(key) is None
    assert not changed.corrupted  # a miss, not a corruption
    assert store_at(tmp_path).load(KEY) is not None  # the old entry is still there for the old key


def test_local_version_label_is_not_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pytest_mps.reference_store import library_versions

    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    cpu_build = library_versions()
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    assert library_versions() == cpu_build and cpu_build["torch"] == "2.13.0"


def test_every_flipped_byte_is_detected(tmp_path: Path) -> None:
    """Flip each byte of a stored reference in turn (header, metadata, checksum, array): every single one
    is caught, so a damaged file can never pass as a reference."""
    store = store_at(tmp_path)
    store.save(KEY, small_run())
    path = store.path_for(KEY)
    good = path.read_bytes()
    missed = []
    for offset in range(len(good)):
        for mask in (0x01, 0xFF):
            damaged = bytearray(good)
            damaged[offset] ^= mask
            path.write_bytes(bytes(damaged))
            reader = store_at(tmp_path)
            if reader.load(KEY) is not None or not reader.corrupted:
                missed.append((offset, mask))
    assert not missed, f"flips not detected at {missed[:10]}"


def test_every_truncation_is_detected(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.save(KEY, small_run())
    path = store.path_for(KEY)
    good = path.read_bytes()
    for length in range(len(good)):
        path.write_bytes(good[:length])
        reader = store_at(tmp_path)
        assert reader.load(KEY) is None and reader.corrupted, length


def test_corrupted_entry_warns_then_is_recomputed_and_rewritten(tmp_path: Path) -> None:
    store = store_at(tmp_path, warn=True)
    store.save(KEY, small_run())
    path = store.path_for(KEY)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the array
    path.write_bytes(bytes(data))

    cache = ReferenceCache(store=store)
    computed = []
    with pytest.warns(CorruptReferenceWarning, match="checksum mismatch.*recomputed"):
        run, origin = cache.get_or_compute(KEY, lambda: computed.append(1) or small_run())
    assert origin == "computed" and computed == [1]
    assert store.corrupted[0]["problem"] == "checksum mismatch"
    again, origin = ReferenceCache(store=store_at(tmp_path)).get_or_compute(KEY, small_run)
    assert origin == "disk"  # the recomputed reference replaced the damaged file
    np.testing.assert_array_equal(again.array, run.array)


def test_update_mode_ignores_and_rewrites(tmp_path: Path) -> None:
    store_at(tmp_path).save(KEY, small_run(0))
    updating = ReferenceStore(tmp_path, update=True, versions=lambda: VERSIONS)
    _, origin = ReferenceCache(store=updating).get_or_compute(KEY, lambda: small_run(1))
    assert origin == "computed" and updating.rewritten == 1
    np.testing.assert_array_equal(store_at(tmp_path).load(KEY).array, small_run(1).array)


class _Payload:
    """Unpickling this object writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _plant(folder: Path, marker: Path, name: str) -> list[Path]:
    """A pickle under the reference's own name, an .npz with an object array, and a .pkl."""
    payload = pickle.dumps(_Payload(marker))
    folder.mkdir(parents=True, exist_ok=True)
    planted = [
        folder / name,
        folder / "reference.npz",
        folder / "reference.pkl",
        folder / "other.safetensors",
    ]
    planted[0].write_bytes(payload)
    np.savez(planted[1], output=np.array([_Payload(marker)], dtype=object))
    planted[2].write_bytes(payload)
    planted[3].write_bytes(len(payload).to_bytes(8, "little") + payload)
    return planted


def test_planted_pickles_are_live(tmp_path: Path) -> None:
    """The payloads used below do run code when unpickled (so their silence there proves something)."""
    control = tmp_path / "control"
    folder = tmp_path / "planted"
    _plant(folder, control, "x.safetensors")
    np.load(folder / "reference.npz", allow_pickle=True)["output"]
    assert control.read_text() == "pwned"


def test_planted_pickles_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "refs"
    store = store_at(folder)
    _plant(folder, marker, store.path_for(KEY).name)
    assert store.load(KEY) is None
    assert store.corrupted
    ReferenceCache(store=store).get_or_compute(KEY, small_run)  # recomputed, rewritten
    assert [entry_metadata(p) for p in folder.iterdir()]  # reading every header runs nothing either
    assert store_at(folder).load(KEY) is not None
    assert not marker.exists()


def test_interrupted_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(tmp_path)
    store.save(KEY, small_run(0))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save(KEY, small_run(1))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [store.path_for(KEY).name]
    np.testing.assert_array_equal(store_at(tmp_path).load(KEY).array, small_run(0).array)


_KILLER = """
import json, os, random, signal, sys, time
import numpy as np
from pytest_mps.reference_store import ReferenceStore
from pytest_mps.references import ReferenceKey
from pytest_mps.running import Run

folder = sys.argv[1]
versions = {"torch": "1", "diffusers": "1"}
store = ReferenceStore(folder, versions=lambda: versions, warn=False)
keys = [ReferenceKey(f"p{i}", "inputs", "float32") for i in range(3)]
arrays = [np.full((1, 512, 512, 3), i + 1, np.float32) for i in range(3)]
random.seed(0)
interrupted = bad_reads = good_reads = 0
cycle = 0
# 20 kills, and more (up to 200) until one landed mid-write and a read found a reference: on a loaded
# machine a writer can be killed before it wrote anything
while cycle < 20 or ((interrupted == 0 or good_reads == 0) and cycle < 200):
    cycle += 1
    pid = os.fork()
    if pid == 0:  # the writer: rewrites the three references until it is killed
        while True:
            for key, array in zip(keys, arrays):
                store.save(key, Run(array, 1.0))
    deadline = time.time() + random.uniform(0.02, 0.12)
    while time.time() < deadline:  # meanwhile, read: every read is a whole reference or a miss
        reader = ReferenceStore(folder, versions=lambda: versions, warn=False)
        for key, array in zip(keys, arrays):
            run = reader.load(key)
            if run is not None:
                good_reads += bool((run.array == array).all())
        bad_reads += len(reader.corrupted)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    temporaries = [n for n in os.listdir(folder) if n.endswith(".part")]
    interrupted += len(temporaries) > 0
    for name in temporaries:  # what a killed writer left: never a reference file
        os.unlink(os.path.join(folder, name))
reader = ReferenceStore(folder, versions=lambda: versions, warn=False)
final = [reader.load(key) for key in keys]
print("RESULT " + json.dumps({
    "interrupted": interrupted, "bad_reads": bad_reads, "good_reads": good_reads,
    "final_ok": bool(all(r is not None and (r.array == a).all() for r, a in zip(final, arrays))),
    "corrupted": len(reader.corrupted),
}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_twenty_killed_writers_never_leave_half_a_file(tmp_path: Path) -> None:
    """20 writer processes killed (SIGKILL) at random moments while a reader reads: every read is a
    whole, verified reference or a miss, and the files left are all whole. Runs in a subprocess that
    imports no torch (forking a process with torch's thread pools is not safe)."""
    folder = tmp_path / "refs"
    out = subprocess.run(
        [sys.executable, "-c", _KILLER, str(folder)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["bad_reads"] == 0 and result["corrupted"] == 0, result
    assert result["final_ok"], result
    assert result["good_reads"] > 0, result
    assert result["interrupted"] >= 1, f"no kill landed mid-write: {result}"
    assert not [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_atomic_write_and_stale_temporaries(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    stale = tmp_path / "a" / f"{TEMP_PREFIX}x.part"
    stale.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path / "a") == []  # young: maybe a write in progress
    os.utime(stale, (0, 0))
    assert remove_stale_temporaries(tmp_path / "a") == [stale]


# --- in real pytest sessions --------------------------------------------------------------------------

TEST_FILE = f"""
import os

import torch

from pytest_mps import assert_cpu_parity, default_inputs


def test_parity(mps_pipeline):
    mode = os.environ.get("KEY_MODE", "base")
    pipe = mps_pipeline({DDPM!r})
    inputs = default_inputs(pipe)
    if mode == "weights":
        with torch.no_grad():
            pipe.unet.conv_in.bias.add_(0.01)
    if mode == "inputs":
        inputs["generator"] = torch.Generator("cpu").manual_seed(1234)
    assert_cpu_parity(pipe, inputs)
"""

CONFTEST = """
import os

import pytest

import pytest_mps.reference_store as store


@pytest.fixture(autouse=True)
def _versions(monkeypatch):
    if os.environ.get("KEY_MODE") == "versions":
        monkeypatch.setattr(store, "library_versions", lambda: {"torch": "99.0", "diffusers": "0.99"})
"""

# The outer suite turns PytestMPSWarning into errors (pyproject); inner runs see them as a user would.
ARGS = (
    "--mps-device",
    "cpu",
    "--mps-report-json",
    "report.json",
    "-W",
    "default::pytest_mps.warnings.PytestMPSWarning",
)


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    result = pytester.runpytest(*ARGS, *args)
    report = json.loads((pytester.path / "report.json").read_text())
    return result, report


def origins(report: dict) -> list[str]:
    return [c["details"]["reference"] for c in report["checks"]]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_keys=TEST_FILE)
    pytester.makeconftest(CONFTEST)
    return pytester


def test_written_by_one_run_used_by_the_next(project: pytest.Pytester) -> None:
    result, report = run(project, "--mps-references", "refs")
    result.assert_outcomes(passed=1)
    assert origins(report) == ["computed"]
    (entry,) = stored_entries(project.path / "refs")
    assert entry_metadata(entry)["nodeid"] == "test_keys.py::test_parity"
    result, report = run(project, "--mps-references", "refs")
    result.assert_outcomes(passed=1)
    assert origins(report) == ["disk"]
    assert report["sources"][0]["references"]["loaded"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_is_reported_and_recomputed(project: pytest.Pytester, damage: str) -> None:
    run(project, "--mps-references", "refs")
    (entry,) = stored_entries(project.path / "refs")
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[len(data) // 2 + 200] ^= 0x40
    else:
        del data[len(data) - 100 :]
    entry.write_bytes(bytes(data))

    result, report = run(project, "--mps-references", "refs")
    result.assert_outcomes(passed=1, warnings=1)  # the outcome is the real comparison's, recomputed
    assert origins(report) == ["computed"]
    result.stdout.fnmatch_lines(
        [
            "*CorruptReferenceWarning: stored CPU reference*is not trusted*recomputed*",
            "*corrupted reference recomputed and rewritten: *refs*",
        ]
    )
    (corrupted,) = report["sources"][0]["references"]["corrupted"]
    assert ("checksum mismatch" if damage == "flip" else "") in corrupted["problem"]
    (rewritten,) = stored_entries(project.path / "refs")
    assert rewritten.read_bytes() != bytes(data) and entry_metadata(rewritten) is not None
    if damage == "flip":
        result, report = run(project, "--mps-references", "refs")
        assert origins(report) == ["disk"]  # rewritten whole


def test_key_changes_miss_the_old_entry(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    run(project, "--mps-references", "refs")
    (base,) = stored_entries(project.path / "refs")
    for mode in ("weights", "inputs", "versions"):
        monkeypatch.setenv("KEY_MODE", mode)
        result, report = run(project, "--mps-references", "refs")
        result.assert_outcomes(passed=1)
        assert origins(report) == ["computed"], mode
        # the old entry no test used is listed, since the whole suite ran
        assert str(base) in report["sources"][0]["references"]["unused"], mode
        result.stdout.fnmatch_lines(
            ["*unused references*", f"*{base.name} (written by test_keys.py::test_parity)"]
        )
    assert len(stored_entries(project.path / "refs")) == 4
    monkeypatch.setenv("KEY_MODE", "base")
    result, report = run(project, "--mps-references", "refs")
    assert origins(report) == ["disk"]


def test_unused_references_are_not_listed_for_a_partial_run(project: pytest.Pytester) -> None:
    project.makepyfile(test_other="def test_other():\n    pass\n")
    (project.path / "refs").mkdir()
    (project.path / "refs" / "stale.safetensors").write_bytes(b"not even a header")
    result, report = run(project, "--mps-references", "refs", "-k", "other", "-v")
    assert report["sources"][0]["references"]["unused"] is None
    result.stdout.fnmatch_lines(["*unused references not listed: 1 tests deselected*"])
    result, report = run(project, "--mps-references", "refs")
    assert report["sources"][0]["references"]["unused"] == [str(project.path / "refs" / "stale.safetensors")]


def test_update_references_rewrites_and_still_reports_outcomes(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_fail=f"""
        from pytest_mps import assert_cpu_parity

        def test_fails(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            calls = []

            def drift(module, args, output):  # the target run (first 2 steps) drifts; the CPU run does not
                calls.append(1)
                if len(calls) <= 2:
                    output.sample[:, :, 8:20, 10:24] += 0.4
                return output

            pipe.unet.register_forward_hook(drift)
            assert_cpu_parity(pipe)
        """
    )
    run(project, "--mps-references", "refs")
    result, report = run(project, "--mps-references", "refs", "--mps-update-references")
    result.assert_outcomes(passed=1, failed=1)
    # Two keys: the drifting test's hook is part of its pipeline's key (a reference computed with a
    # hook is never shared with a pipeline without it). Both are recomputed; the stored one rewritten.
    assert sorted(origins(report)) == ["computed", "computed"]
    assert report["sources"][0]["references"]["rewritten"] == 1
    result.stdout.fnmatch_lines(
        ["references: *1 rewritten*; --mps-update-references recomputed every one used"]
    )


def test_default_store_is_pytest_cache_and_memory_without_it(project: pytest.Pytester) -> None:
    run(project)
    result, report = run(project)
    assert origins(report) == ["disk"] and report["sources"][0]["references"]["mode"] == "cache"
    assert stored_entries(project.path / ".pytest_cache" / "d" / "pytest-mps-references")

    result, report = run(project, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert origins(report) == ["computed"] and report["sources"][0]["references"]["mode"] == "memory"


def test_ini_folder_is_relative_to_the_ini_file(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeini("[pytest]\nmps_references = stored/refs\n")
    sub = project.mkdir("sub")
    monkeypatch.chdir(sub)
    result = project.runpytest(*ARGS, str(project.path))
    result.assert_outcomes(passed=1)
    assert stored_entries(project.path / "stored" / "refs")
    assert not (sub / "stored").exists()


def test_planted_pickle_in_the_folder_never_runs(project: pytest.Pytester, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    run(project, "--mps-references", "refs")
    (entry,) = stored_entries(project.path / "refs")
    _plant(project.path / "refs", marker, entry.name)  # replaces the real reference with a pickle
    result, report = run(project, "--mps-references", "refs")
    result.assert_outcomes(passed=1, warnings=1)
    assert origins(report) == ["computed"]
    unused = report["sources"][0]["references"]["unused"]
    assert str(project.path / "refs" / "other.safetensors") in unused
    assert not marker.exists()


def test_store_module_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys
        import pytest_mps.plugin, pytest_mps.reference_store, pytest_mps.merge
        import pytest_mps.reports.model, pytest_mps.reports.html, pytest_mps.reports.markdown
        heavy = [m for m in ("torch", "diffusers", "numpy", "safetensors", "PIL") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_references_path_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "refs").write_text("not a folder")
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest("--mps-references", "refs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --mps-references *refs: this is a file, not a folder*"])


# --- readable names, identity by hash, the summary line -------------------------------------------------


def labelled(label: str = "tiny-sd", check: str = "cpu_parity") -> ReferenceKey:
    return ReferenceKey(KEY.pipeline, KEY.inputs, KEY.dtype, KEY.output_type, label=label, check=check)


def test_file_names_say_pipeline_check_dtype_and_a_short_hash(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.save(labelled(), small_run())
    (entry,) = stored_entries(tmp_path)
    assert re.fullmatch(r"tiny-sd\.cpu_parity\.float32\.[0-9a-f]{12}\.safetensors", entry.name), entry.name
    meta = entry_metadata(entry)
    assert meta is not None and meta["label"] == "tiny-sd" and meta["check"] == "cpu_parity"
    store.save(KEY, small_run())  # no label or check: today's slug, same hash, so the same file
    assert stored_entries(tmp_path) == [entry]


def test_label_and_check_describe_but_do_not_identify(tmp_path: Path) -> None:
    """A reference written by one check (or under one label) is found by another asking for the same
    key: the name is for people, the hash for the store."""
    other = labelled("copy", "float16")
    assert other == labelled() and hash(other) == hash(labelled())
    store_at(tmp_path).save(labelled(), small_run())
    reader = store_at(tmp_path)
    run = reader.load(other)
    assert run is not None and reader.used == {stored_entries(tmp_path)[0].name}
    reader.save(other, small_run(1))  # a rewrite goes to the existing file, not a second one
    assert len(stored_entries(tmp_path)) == 1


def test_labels_never_reach_a_path(tmp_path: Path) -> None:
    evil = ReferenceKey(KEY.pipeline, KEY.inputs, KEY.dtype, label="../../outside", check="a/b\\c:d")
    store = store_at(tmp_path / "refs")
    store.save(evil, small_run())
    (entry,) = stored_entries(tmp_path / "refs")
    assert "/" not in entry.name and "\\" not in entry.name and ".." not in entry.name
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [entry]


def test_old_named_files_are_not_read(tmp_path: Path) -> None:
    """Names before readable names (``slug-<16 hex>.safetensors``) are not looked up: every key changed
    with canonical configs anyway, so they are listed as unused at the end of a full run instead."""
    store = store_at(tmp_path)
    store.save(KEY, small_run())
    (entry,) = stored_entries(tmp_path)
    old = entry.rename(tmp_path / f"{KEY.slug()}-0123456789abcdef.safetensors")
    assert store_at(tmp_path).load(KEY) is None
    assert old.exists() and verify_entry(old) is None


def test_summary_line_counts_what_the_store_did(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    assert store.summary_line() is None  # nothing done: nothing to say
    assert store.summary_line(unused=2) == "references: 0 loaded, 0 written, 0 rewritten, 2 unused"
    other = ReferenceKey("c" * 32, KEY.inputs, KEY.dtype)
    store.save(KEY, small_run())
    store.save(other, small_run())
    assert store.load(KEY) is not None
    assert store.summary_line(unused=0) == "references: 1 loaded, 2 written, 0 rewritten, 0 unused"
    assert store.summary_line() == "references: 1 loaded, 2 written, 0 rewritten"  # unused not known

    updating = ReferenceStore(tmp_path, update=True, versions=lambda: VERSIONS, warn=False)
    updating.save(KEY, small_run(1))
    damaged = store.path_for(other)
    damaged.write_bytes(damaged.read_bytes()[:-4])
    worker = store_at(tmp_path)
    assert worker.load(other) is None
    line = updating.summary_line(unused=1, others=[worker.stats(), store.stats()])
    assert line == "references: 1 loaded, 2 written, 1 rewritten, 1 unused (1 corrupt replaced)"
