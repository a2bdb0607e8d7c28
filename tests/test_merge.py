"""``pytest-mps merge``: the JSON reports of CI shards or runners joined into one report (Markdown,
HTML, JSON), each check keeping its runner; one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from test_reports import SCHEMA, full_run, report_of, result

from pytest_mps.merge import main
from pytest_mps.reports.html import place_images
from pytest_mps.reports.images import encode_images
from pytest_mps.reports.json_report import write_json
from pytest_mps.reports.markdown import BADGE


def shard(folder: Path, *results, real_mps: bool) -> Path:
    """A shard's outputs as ``--mps-report-json`` and ``--mps-report-html`` write them."""
    report = report_of(*results, real_mps=real_mps)
    images = {i: encode_images(r.images) for i, r in enumerate(results)}
    place_images(report, folder / "html", images)
    return write_json(report, folder / "report.json", images_root=folder / "html")


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    mac = shard(
        tmp_path / "mac",
        *full_run("StableDiffusionPipeline"),
        result(pipeline="DiTPipeline", real_mps=True, passed=False, shift=0.3, nodeid="t.py::test_dit"),
        real_mps=True,
    )
    linux = shard(
        tmp_path / "linux",
        result(pipeline="DDPMPipeline", nodeid="t.py::test_ddpm"),
        real_mps=False,
    )
    return mac, linux


def test_merge_joins_shards(tmp_path: Path, shards: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "merged"
    code = main(
        [
            *map(str, shards),
            "--md",
            str(out / "r.md"),
            "--html",
            str(out / "html"),
            "--json",
            str(out / "r.json"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    full = len(full_run())
    checks = full + 2
    out_text = capsys.readouterr().out
    assert (
        f"merged 2 run(s): {checks} checks, {checks - 1} passed, 1 failed ({full + 1} on real MPS)"
        in out_text
    )
    merged = json.loads((out / "r.json").read_text())
    jsonschema.validate(merged, SCHEMA)
    assert [s["name"] for s in merged["sources"]] == ["report.json", "report.json"]
    assert [(c["pipeline"], c["source"]) for c in merged["checks"]] == [
        *[("StableDiffusionPipeline", 0)] * full,
        ("DiTPipeline", 0),
        ("DDPMPipeline", 1),
    ]
    assert merged["sources"][1]["target"]["real_mps"] is False
    assert merged["totals"] == {
        "checks": checks,
        "passed": checks - 1,
        "failed": 1,
        "real_mps": full + 1,
        "standin": 1,
    }
    # images copied into the merged HTML folder; the merged JSON points at them
    with_images = [c for c in merged["checks"] if c["images"]]
    assert len(with_images) == checks - 1  # the speed check has no images
    for check in with_images:
        for name in ("cpu", "target", "diff"):
            assert (out / check["images"][name]).is_file()
    page = (out / "html" / "index.html").read_text()
    assert page.count("<figure>") == 3 * len(with_images) and "stand-in" in page
    markdown = (out / "r.md").read_text()
    assert markdown.count(BADGE) == 1
    badge_row = next(line for line in markdown.splitlines() if BADGE in line)
    assert badge_row.startswith("| StableDiffusionPipeline |")


def test_a_merged_report_merges_again(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    once = tmp_path / "once.json"
    assert main([str(shards[0]), "--json", str(once)]) == 0
    assert main([str(once), str(shards[1]), "--json", str(tmp_path / "twice.json")]) == 0
    twice = json.loads((tmp_path / "twice.json").read_text())
    jsonschema.validate(twice, SCHEMA)
    assert [c["source"] for c in twice["checks"]] == [0] * (len(full_run()) + 1) + [1]
    # without --html the merged JSON points at the shards' own images
    assert (tmp_path / twice["checks"][0]["images"]["cpu"]).resolve().is_file()


def test_a_real_mps_failure_in_any_shard_denies_the_badge(tmp_path: Path) -> None:
    passing = shard(tmp_path / "a", *full_run("P"), real_mps=True)
    assert main([str(passing), "--md", str(tmp_path / "alone.md")]) == 0
    assert BADGE in (tmp_path / "alone.md").read_text()
    failing = shard(tmp_path / "b", result(pipeline="P", real_mps=True, passed=False), real_mps=True)
    assert main([str(passing), str(failing), "--md", str(tmp_path / "r.md")]) == 0
    assert BADGE not in (tmp_path / "r.md").read_text()


def test_a_partial_real_mps_run_gets_no_badge_from_merge(tmp_path: Path) -> None:
    """A Mac test that only called assert_cpu_parity: the merged Markdown and HTML carry no badge."""
    partial = shard(tmp_path / "a", result(pipeline="P", real_mps=True), real_mps=True)
    more = shard(tmp_path / "b", *full_run("P", drop=("cpu_parity", "float16")), real_mps=True)
    out = tmp_path / "merged"
    assert main([str(partial), str(more), "--md", str(out / "r.md"), "--html", str(out / "html")]) == 0
    markdown = (out / "r.md").read_text()
    assert BADGE not in markdown and "no badge yet: float16 not run on MPS" in markdown
    assert '<span class="badge"' not in (out / "html" / "index.html").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "missing.json: no such file"),
        ("{not json", "bad.json: not JSON (Expecting property name"),
        (
            '{"schema_version": 2, "checks": []}',
            "bad.json: schema_version 2 is not supported (this pytest-mps reads 1)",
        ),
        ("[1, 2]", "bad.json: not a pytest-mps report (a JSON list, not an object)"),
        ('{"checks": []}', "bad.json: not a pytest-mps report (no schema_version)"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path,
    shards: tuple[Path, Path],
    capsys: pytest.CaptureFixture,
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    assert main([str(shards[0]), str(path), "--md", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pytest-mps merge: error: ")
    assert message in err
    assert not (tmp_path / "r.md").exists()


def test_broken_check_is_one_line(
    tmp_path: Path, shards: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    data = json.loads(shards[0].read_text())
    data["checks"][0]["source"] = 7
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main([str(bad), "--md", str(tmp_path / "r.md")]) == 2
    assert "bad.json: checks[0].source 7 names no source" in capsys.readouterr().err


def test_usage_errors(tmp_path: Path, shards: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    assert main([str(shards[0])]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert main([str(shards[0]), str(shards[0]), "--md", str(tmp_path / "r.md")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main([]) == 2  # argparse: REPORT.json is required
    assert main(["--help"]) == 0


def _schema_keywords(node: object, found: set[str]) -> set[str]:
    """Every keyword used in a JSON Schema (names under properties and $defs are not keywords)."""
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            if key in ("properties", "$defs"):
                for sub in value.values():
                    _schema_keywords(sub, found)
            elif key in ("items", "additionalProperties"):
                _schema_keywords(value, found)
    return found


def test_the_hand_validator_interprets_every_keyword_of_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """merge validates with schema.json itself, interpreted by hand (no jsonschema at run time): a
    keyword added to the schema that the interpreter does not know fails here and at run time, never
    silently."""
    from pytest_mps.reports import validate

    used = _schema_keywords(SCHEMA, set())
    assert used <= validate._KEYWORDS | validate._ANNOTATIONS, (
        used - validate._KEYWORDS - validate._ANNOTATIONS
    )
    assert {"type", "const", "enum", "required", "additionalProperties", "minimum", "$ref"} <= used
    monkeypatch.setattr(validate, "schema", lambda: {**SCHEMA, "properties": {**SCHEMA["properties"],
                        "generator": {"type": "string", "pattern": "^pytest-mps"}}})  # fmt: skip
    with pytest.raises(validate.SchemaKeywordError, match="pattern"):
        validate.validate_report(json.loads(json.dumps(report_of(result()))))


def test_merge_needs_no_jsonschema_at_run_time(tmp_path: Path, shards: tuple[Path, Path]) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['jsonschema'] = None\n"
        "from pytest_mps.merge import main\n"
        f"raise SystemExit(main([{str(shards[0])!r}, '--json', {str(tmp_path / 'r.json')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads((tmp_path / "r.json").read_text()), SCHEMA)
