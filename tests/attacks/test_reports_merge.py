"""Attacks on ``pytest-mps merge`` (issue 12, points 3 and 8): crafted reports are refused with exit
status 2 and one line, and nothing is written (types the schema declares, a bool that is not a version,
strings or NaN for metrics, unsafe image names, absurd nesting); image paths from a report never lead
outside that report's folder and nothing is written outside the output folder; inputs that are not
regular files never block; and what merge writes validates against ``schema.json``.

Each attack is one case."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_reports import SCHEMA, report_of, result

from pytest_mps.merge import main
from pytest_mps.reports.html import place_images
from pytest_mps.reports.images import encode_images
from pytest_mps.reports.json_report import write_json

VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def shard(folder: Path, *results, real_mps: bool = False) -> Path:
    """A shard's outputs as ``--mps-report-json`` and ``--mps-report-html`` write them."""
    report = report_of(*results, real_mps=real_mps)
    place_images(report, folder / "html", {i: encode_images(r.images) for i, r in enumerate(results)})
    return write_json(report, folder / "report.json", images_root=folder / "html")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return shard(tmp_path / "good", result(pipeline="DDPMPipeline", nodeid="t.py::test_a"))


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def run_merge(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


# --- point 8: crafted inputs -------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Set a field by a dotted path (``checks.0.metrics.target vs cpu.max_abs``)."""

    def change(report: dict) -> None:
        *parents, last = path.split(".")
        node: Any = report
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _drop(path: str) -> Callable[[dict], None]:
    def change(report: dict) -> None:
        *parents, last = path.split(".")
        node: Any = report
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return change


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


METRIC = "checks.0.metrics.target vs cpu"

# (change, words the one-line error must contain); a string change is the file's raw text
CRAFTED = [
    pytest.param(_set("schema_version", True), "schema_version true is not supported", id="version-true"),
    pytest.param(_set("schema_version", 1.0), "schema_version 1.0 is not supported", id="version-float"),
    pytest.param(_set("schema_version", "1"), "schema_version '1' is not supported", id="version-string"),
    pytest.param(_set(f"{METRIC}.max_abs", "0.1"), "max_abs: '0.1' is a string", id="metric-string"),
    pytest.param(_set(f"{METRIC}.max_abs", True), "max_abs: true is a boolean", id="metric-bool"),
    pytest.param(_set(f"{METRIC}.max_abs", float("nan")), "NaN is not valid JSON", id="metric-nan"),
    pytest.param(_set(f"{METRIC}.psnr", float("inf")), "Infinity is not valid JSON", id="metric-infinity"),
    pytest.param("1e400", "non-finite number", id="metric-1e400"),
    pytest.param(
        _set(f"{METRIC}.shape", [1, 2.5]), "shape[1]: 2.5 is a number, not an integer", id="shape-float"
    ),
    pytest.param(_drop(f"{METRIC}.cosine_distance"), "cosine_distance: missing", id="metric-missing"),
    pytest.param(_set("checks.0.metrics", []), "checks[0].metrics: [] is an array", id="metrics-a-list"),
    pytest.param(_set("checks.0.real_mps", "yes"), "real_mps: 'yes' is a string", id="real-mps-string"),
    pytest.param(_set("checks.0.source", True), "source: true is a boolean", id="source-bool"),
    pytest.param(_set("checks.0.source", -1), "below the minimum 0", id="source-negative"),
    pytest.param(_set("checks.0.source", 3), "checks[0].source 3 names no source", id="source-out-of-range"),
    pytest.param(_drop("checks.0.nodeid"), "checks[0].nodeid: missing", id="nodeid-missing"),
    pytest.param(_set("checks.0.summary", 5), "summary: 5 is an integer", id="summary-a-number"),
    pytest.param(_set("checks.0.failures", "x"), "failures: 'x' is a string", id="failures-a-string"),
    pytest.param(_set("checks.0.failures", [1]), "failures[0]: 1 is an integer", id="failure-a-number"),
    pytest.param(
        _set("checks.0.outcome", "xfailed"), "is not one of 'passed', 'failed'", id="outcome-unknown"
    ),
    pytest.param(_set("checks.0.tolerance.atol", "1e-3"), "tolerance.atol: '1e-3'", id="tolerance-string"),
    pytest.param(_set("checks.0.timings.cpu", "fast"), "timings.cpu: 'fast'", id="timing-string"),
    pytest.param(_set("checks.0.details", []), "details: [] is an array", id="details-a-list"),
    pytest.param(_set("checks.0.details", {"deep": _nested(100)}), "nested deeper than", id="details-deep"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="json-100000-deep"),
    pytest.param(_set("checks.0.images", []), "images: [] is an array", id="images-a-list"),
    pytest.param(
        _set("checks.0.images", {"../../escape": "x.png"}), "image name '../../escape'", id="image-dotdot"
    ),
    pytest.param(
        _set("checks.0.images", {"/etc/x": "x.png"}), "image name '/etc/x'", id="image-name-absolute"
    ),
    pytest.param(_set("checks.0.images", {"a/b": "x.png"}), "image name 'a/b'", id="image-name-slash"),
    pytest.param(_set("checks.0.images", {"": "x.png"}), "image name ''", id="image-name-empty"),
    pytest.param(_set("checks.0.images", {"c" * 33: "x.png"}), "image name 'ccc", id="image-name-long"),
    pytest.param(_set("checks.0.images", {"çpu": "x.png"}), "image name 'çpu'", id="image-name-unicode"),
    pytest.param(_set("checks.0.images", {"cpu": "x.png", "extra": [1]}), "neither a path", id="image-list"),
    pytest.param(_set("checks.0.images", {"cpu": True}), "images.cpu: true is a boolean", id="image-bool"),
    pytest.param(_set("sources.0", "session"), "sources[0]: 'session' is a string", id="source-a-string"),
    pytest.param(_drop("sources.0.target"), "sources[0].target: missing", id="source-target-missing"),
    pytest.param(_set("sources.0.target.real_mps", 1), "real_mps: 1 is an integer", id="source-real-mps-int"),
    pytest.param(_set("sources.0.environment", []), "environment: [] is an array", id="environment-a-list"),
    pytest.param(_set("sources.0.xdist_workers", -2), "below the minimum", id="workers-negative"),
    pytest.param(
        _set("sources.0.references", {"corrupted": ["x"]}), "corrupted[0]: 'x'", id="references-bad"
    ),
    pytest.param(_set("totals.checks", -1), "totals.checks: -1 is below the minimum", id="totals-negative"),
    pytest.param(_set("totals.extra", 1), "totals.extra: unknown field", id="totals-extra-field"),
    pytest.param(_set("extra", 1), "extra: unknown field", id="top-level-extra-field"),
    pytest.param(
        _set("pipelines.0", "DDPMPipeline"), "pipelines[0]: 'DDPMPipeline' is a string", id="row-string"
    ),
    pytest.param(_set("pipelines.0.badge", "yes"), "badge: 'yes' is a string", id="badge-a-string"),
    pytest.param(_drop("generator"), "generator: missing", id="generator-missing"),
]


def _write_crafted(folder: Path, good: Path, change: Callable[[dict], None] | str) -> Path:
    bad = folder / "bad.json"
    if isinstance(change, str):
        data = json.loads(good.read_text())
        text = json.dumps(data)
        if change == "1e400":
            text = text.replace('"max_abs": 0.0', '"max_abs": 1e400', 1)
            assert "1e400" in text
        else:
            text = change
        bad.write_text(text)
    else:
        data = json.loads(good.read_text())
        change(data)
        bad.write_text(json.dumps(data))  # allow_nan: NaN and Infinity are written as such
    return bad


@pytest.mark.parametrize(("change", "says"), CRAFTED)
def test_a_crafted_report_is_refused_in_one_line(
    tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str], change, says: str
) -> None:
    bad = _write_crafted(tmp_path, good, change)
    out = tmp_path / "out"
    code, err, _ = run_merge(
        capsys, str(good), str(bad), "--md", str(out / "r.md"), "--html", str(out / "html"),
        "--json", str(out / "r.json"),
    )  # fmt: skip
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("pytest-mps merge: error: "), err
    assert str(bad) in err[0] and says in err[0], err[0]
    assert not out.exists(), "something was written for a refused input"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x/../../../../escaped", id="image-name-climbs-out"),
        pytest.param("../../../../../escaped", id="image-name-dotdot-real-png"),
    ],
)
def test_an_image_name_never_writes_outside_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """The image name is part of the output file name: with a real PNG behind it, a name that climbs
    out of ``images/`` would write there; it is refused instead."""
    report = shard(tmp_path / "in", result(shift=0.2, passed=False))
    data = json.loads(report.read_text())
    data["checks"][0]["images"][name] = data["checks"][0]["images"]["cpu"]
    report.write_text(json.dumps(data))
    out = tmp_path / "out"
    before = files_under(tmp_path)
    code, err, _ = run_merge(capsys, str(report), "--html", str(out / "html"))
    assert code == 2 and len(err) == 1 and "image name" in err[0], err
    assert files_under(tmp_path) == before, files_under(tmp_path) - before


def test_the_schema_refuses_what_merge_refuses(tmp_path: Path, good: Path) -> None:
    """Where the schema types a field, its own validator agrees with merge's (merge is stricter only
    where Python's JSON differs from JSON: bools, floats as integers, nesting, image names)."""
    stricter = {"version-float", "details-deep", "image-dotdot", "image-name-absolute", "image-name-slash"}
    stricter |= {
        "image-name-empty",
        "image-name-long",
        "image-name-unicode",
        "source-out-of-range",
        "image-list",
    }
    not_json = {"metric-nan", "metric-infinity"}  # Python's json reads them; JSON has no such values
    checked = 0
    for case in CRAFTED:
        change = case.values[0]
        if isinstance(change, str) or case.id in stricter | not_json:
            continue
        data = json.loads(good.read_text())
        change(data)
        assert not VALIDATOR.is_valid(data), case.id
        checked += 1
    assert checked >= 30


# --- point 3: image paths and output names ----------------------------------------------------------


def _png_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode_images(result().images)[0]["cpu"])
    return outside


def _point_image(report_path: Path, value: str) -> None:
    data = json.loads(report_path.read_text())
    data["checks"][0]["images"]["cpu"] = value
    report_path.write_text(json.dumps(data))


def _dotdot(tmp_path: Path, report: Path) -> None:
    _point_image(report, os.path.relpath(_png_outside(tmp_path), report.parent))


def _absolute(tmp_path: Path, report: Path) -> None:
    _point_image(report, str(_png_outside(tmp_path)))


def _symlink_out(tmp_path: Path, report: Path) -> None:
    link = report.parent / "html" / "images" / "link.png"
    link.symlink_to(_png_outside(tmp_path))
    _point_image(report, "html/images/link.png")


def _folder_symlink_out(tmp_path: Path, report: Path) -> None:
    _png_outside(tmp_path)
    (report.parent / "up").symlink_to(tmp_path)
    _point_image(report, "up/secret.png")


def _nul(tmp_path: Path, report: Path) -> None:
    _point_image(report, "html/images/a\x00b.png")


@pytest.mark.parametrize(
    "redirect",
    [
        pytest.param(_dotdot, id="image-path-dotdot"),
        pytest.param(_absolute, id="image-path-absolute"),
        pytest.param(_symlink_out, id="image-path-symlink-out"),
        pytest.param(_folder_symlink_out, id="image-path-folder-symlink-out"),
        pytest.param(_nul, id="image-path-nul"),
    ],
)
@pytest.mark.parametrize("outputs", ["html", "json-only"])
def test_image_paths_never_lead_outside_the_reports_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redirect, outputs: str
) -> None:
    report = shard(tmp_path / "in", result(shift=0.2, passed=False))
    redirect(tmp_path, report)
    out = tmp_path / "out"
    before = files_under(tmp_path) - files_under(out)
    args = ["--json", str(out / "r.json")] + (["--html", str(out / "html")] if outputs == "html" else [])
    code, err, _ = run_merge(capsys, str(report), *args)
    assert code == 0, err
    merged = json.loads((out / "r.json").read_text())
    VALIDATOR.validate(merged)
    assert "cpu" not in merged["checks"][0]["images"] and "target" in merged["checks"][0]["images"]
    secret = (tmp_path / "secret.png").read_bytes() if (tmp_path / "secret.png").exists() else None
    assert secret is None or all(p.read_bytes() != secret for p in files_under(out) if p.is_file())
    assert len(err) == 1 and "outside the report's folder and are not used" in err[0], err
    assert files_under(tmp_path) - files_under(out) == before, (
        "something was written outside the output folder"
    )


def test_a_fifo_image_never_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str], fifos) -> None:
    report = shard(tmp_path / "in", result(shift=0.2, passed=False))
    fifos.plant(report.parent / "html" / "images" / "trap.png")
    _point_image(report, "html/images/trap.png")
    code, err, _ = run_merge(capsys, str(report), "--html", str(tmp_path / "out"))
    assert code == 0, err
    assert not fifos.unblocked, "merge opened a FIFO for reading"


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param("fifo", id="input-a-fifo"),
        pytest.param("device", id="input-a-device"),
        pytest.param("folder", id="input-a-folder"),
        pytest.param("huge", id="input-257MB"),
    ],
)
def test_an_input_that_is_not_a_report_file_is_refused_at_once(
    tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str], fifos, plant: str
) -> None:
    bad = tmp_path / "bad.json"
    if plant == "fifo":
        fifos.plant(bad)
    elif plant == "device":
        bad.symlink_to(os.devnull)
    elif plant == "folder":
        bad.mkdir()
    else:
        with open(bad, "wb") as handle:
            handle.truncate(257 << 20)
    code, err, _ = run_merge(capsys, str(good), str(bad), "--md", str(tmp_path / "r.md"))
    assert code == 2 and len(err) == 1 and str(bad) in err[0], err
    assert not fifos.unblocked


def test_place_images_refuses_unsafe_names_and_non_pngs(tmp_path: Path) -> None:
    report = report_of(result())
    png = encode_images(result().images)[0]["cpu"]
    for images, says in (
        ({"../../../escape": png}, "image name"),
        ({"a/b": png}, "image name"),
        ({"cpu": b"<html>not a png</html>"}, "not a PNG"),
    ):
        with pytest.raises(ValueError, match=says):
            place_images(copy.deepcopy(report), tmp_path / "out", {0: (images, {})})
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_place_images_replaces_a_planted_symlink_never_writes_through_it(tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("untouched")
    images = tmp_path / "out" / "images"
    images.mkdir(parents=True)
    (images / "0001-DDPMPipeline-cpu_parity-cpu.png").symlink_to(target)
    report = report_of(result())
    place_images(report, tmp_path / "out", {0: encode_images(result().images)})
    assert target.read_text() == "untouched"
    assert not (images / "0001-DDPMPipeline-cpu_parity-cpu.png").is_symlink()


# --- point 8: what merge writes validates ------------------------------------------------------------


def _unicode(tmp_path: Path) -> list[Path]:
    return [shard(tmp_path / "u", result(pipeline="Pïpé<script>", nodeid="t.py::test_é[🙂]"))]


def _no_checks(tmp_path: Path) -> list[Path]:
    return [write_json(report_of(), tmp_path / "empty.json")]


def _missing_images(tmp_path: Path) -> list[Path]:
    path = shard(tmp_path / "m", result(shift=0.3, passed=False))
    for png in (path.parent / "html" / "images").glob("*.png"):
        png.unlink()
    return [path]


def _merged_twice(tmp_path: Path) -> list[Path]:
    a = shard(tmp_path / "a", result(pipeline="A"), real_mps=True)
    b = shard(tmp_path / "b", result(pipeline="B"))
    assert main([str(a), str(b), "--json", str(tmp_path / "ab.json")]) == 0
    return [tmp_path / "ab.json", shard(tmp_path / "c", result(pipeline="C"))]


def _nulls(tmp_path: Path) -> list[Path]:
    path = shard(tmp_path / "n", result())
    data = json.loads(path.read_text())
    data["sources"][0]["environment"] = None
    data["sources"][0]["references"] = {
        "mode": "folder",
        "unreadable": [{"file": "x", "problem": "y"}],
        "unused": None,
    }
    data["checks"][0]["tolerance"] = None
    data["checks"][0]["nodeid"] = None
    path.write_text(json.dumps(data))
    return [path]


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param(_unicode, id="unicode-and-markup-names"),
        pytest.param(_no_checks, id="no-checks"),
        pytest.param(_missing_images, id="image-files-gone"),
        pytest.param(_merged_twice, id="merge-of-a-merge"),
        pytest.param(_nulls, id="nulls-where-allowed"),
    ],
)
def test_what_merge_writes_validates(tmp_path: Path, inputs, capsys: pytest.CaptureFixture[str]) -> None:
    paths = inputs(tmp_path)
    out = tmp_path / "out"
    code, err, _ = run_merge(
        capsys, *map(str, paths), "--html", str(out / "html"), "--json", str(out / "r.json")
    )
    assert code == 0, err
    VALIDATOR.validate(json.loads((out / "r.json").read_text()))
