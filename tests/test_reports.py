"""The session reports: JSON that validates against its schema, Markdown with the MPS badge only for
pipelines that earned it on real MPS, and an offline HTML page that escapes every name and shows the CPU,
target and difference images of each parity check."""

from __future__ import annotations

import html
import html.parser
import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from pytest_mps.metrics import compare
from pytest_mps.registry import required_checks
from pytest_mps.reports.html import place_images, render_html, write_html
from pytest_mps.reports.images import encode_images, heatmap, to_rgb
from pytest_mps.reports.json_report import json_text, write_json
from pytest_mps.reports.markdown import BADGE, md_text, render_markdown, write_markdown
from pytest_mps.reports.model import SCHEMA_PATH, build_report, comparable, pipeline_rows
from pytest_mps.results import CheckResult
from pytest_mps.tables import session_table
from pytest_mps.tolerances import resolve_tolerance
from pytest_mps.verdict import Status

from conftest import FIXTURES

DDPM = str(FIXTURES / "tiny-ddpm")
EVIL = "<script>alert('x')</script>"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def result(
    *,
    pipeline: str = "DDPMPipeline",
    check: str = "cpu_parity",
    passed: bool = True,
    real_mps: bool = False,
    nodeid: str = "test_x.py::test_a",
    shift: float = 0.0,
) -> CheckResult:
    rng = np.random.default_rng(0)
    cpu = rng.random((1, 8, 8, 3), dtype=np.float32)
    target = cpu.copy()
    target[:, 2:5, 2:5] += shift
    return CheckResult(
        check=check,
        status=Status.PASSED if passed else Status.FAILED,
        target="mps" if real_mps else "cpu (stand-in for mps: CPU against CPU, a dry run)",
        real_mps=real_mps,
        pipeline=pipeline,
        summary="max |diff| 0" if passed else "max |diff| 0.5",
        failures=[] if passed else ["max |diff| 0.5 exceeds atol 0.03"],
        comparisons={"target vs cpu": compare(target, cpu)},
        tolerance=resolve_tolerance("cpu_parity"),
        timings={"target": 0.1, "cpu": 0.2},
        details={"reference": "computed"},
        images={"cpu": cpu, "target": target},
        nodeid=nodeid,
    )


def full_run(
    pipeline: str = "StableDiffusionPipeline",
    *,
    real_mps: bool = True,
    speed: float = 2.0,
    failing: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> list[CheckResult]:
    """One result per check the badge requires, as the bundled suite records them."""
    out = []
    for check in required_checks():
        if check in drop:
            continue
        one = result(pipeline=pipeline, check=check, real_mps=real_mps, passed=check not in failing)
        one.nodeid = f"t.py::test_{check}[{pipeline}]"
        if check == "speed":
            one.figure, one.comparisons, one.images = speed, {}, {}
        out.append(one)
    return out


def report_of(*results: CheckResult, real_mps: bool | None = None) -> dict:
    real = real_mps if real_mps is not None else all(r.real_mps for r in results)
    source = {
        "name": "session",
        "created": "2025-01-01T00:00:00+00:00",
        "duration": 1.0,
        "exitstatus": 0,
        "target": {"label": "mps" if real else "cpu (stand-in for mps)", "real_mps": real},
        "environment": {"os_name": "Darwin", "macos_version": "14.5", "torch_version": "2.5.0"},
        "xdist_workers": 0,
        "references": None,
    }
    return build_report([r.to_dict() for r in results], [source])


# --- JSON ---------------------------------------------------------------------------------------------


def test_schema_is_valid_and_synthetic_reports_match_it() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    report = report_of(result(), result(passed=False, shift=0.5), result(real_mps=True, pipeline="Other"))
    VALIDATOR.validate(json.loads(json_text(report)))


def test_json_refuses_non_finite_numbers() -> None:
    data = result().to_dict()
    data["timings"]["target"] = float("nan")
    report = build_report([data], report_of(result())["sources"])
    assert report["checks"][0]["timings"]["target"] is None
    json.loads(json_text(report))  # strict JSON


def test_reports_of_a_real_session(pytester: pytest.Pytester) -> None:
    """One pytest session writes all three reports: the JSON validates and holds every metric,
    tolerance, timing and the environment; the HTML and Markdown show the test named <script> as text."""
    pytester.makepyfile(
        test_session=f"""
        import pytest
        from pytest_mps import assert_cpu_parity, assert_float16_parity

        DDPM = {DDPM!r}

        def test_drifting_kernel(mps_pipeline):
            pipe = mps_pipeline(DDPM)
            calls = []

            def drift(module, args, output):  # only the target run (its 2 steps) drifts
                calls.append(1)
                if len(calls) <= 2:
                    output.sample[:, :, 8:20, 10:24] += 0.4
                return output

            pipe.unet.register_forward_hook(drift)
            assert_cpu_parity(pipe)

        @pytest.mark.parametrize("name", [{EVIL!r}])
        def test_named(mps_pipeline, name):
            pipe = mps_pipeline(DDPM)
            assert_cpu_parity(pipe)
            assert_float16_parity(pipe)
        """
    )
    result_ = pytester.runpytest(
        "--mps-device",
        "cpu",
        "--mps-report-json",
        "out/report.json",
        "--mps-report-md",
        "out/report.md",
        "--mps-report-html",
        "out/html",
    )
    result_.assert_outcomes(passed=1, failed=1)
    result_.stdout.fnmatch_lines(
        ["*HTML report: *out/html/index.html", "*JSON report: *", "*Markdown report: *"]
    )
    out = pytester.path / "out"
    report = json.loads((out / "report.json").read_text())
    VALIDATOR.validate(report)
    assert [(c["check"], c["outcome"]) for c in report["checks"]] == [
        ("cpu_parity", "failed"),
        ("cpu_parity", "passed"),
        ("float16", "passed"),
    ]
    failed = report["checks"][0]
    assert set(failed["metrics"]["target vs cpu"]) >= {"max_abs", "cosine_distance", "psnr", "rms_255"}
    assert failed["tolerance"]["atol"] is not None and failed["tolerance"]["sources"]
    assert set(failed["timings"]) == {"target", "cpu"} and failed["failures"]
    assert report["sources"][0]["environment"]["torch_version"]
    assert report["sources"][0]["target"] == {
        "label": "cpu (stand-in for mps: CPU against CPU, a dry run)",
        "real_mps": False,
    }
    assert report["pipelines"][0]["badge"] is False
    # images: written next to the page, referenced relative to the JSON file
    for name in ("cpu", "target", "diff"):
        assert (out / failed["images"][name]).is_file()
    page = (out / "html" / "index.html").read_text()
    assert_inert(page, EVIL)
    assert "images/0001-tiny-ddpm-cpu_parity-diff.png" in page
    markdown = (out / "report.md").read_text()
    assert "&lt;script&gt;" in markdown and "<script>" not in markdown
    assert BADGE not in markdown and "Stand-in results are not an MPS verdict" in markdown


# --- Markdown -------------------------------------------------------------------------------------------


_BADGE_CASES = {
    "a full real-MPS pass": ({}, True),
    "a stand-in": ({"real_mps": False}, False),
    "a failed check": ({"failing": ("batch",)}, False),
    "no faster than the CPU": ({"speed": 0.8}, False),
    "a check not run": ({"drop": ("float16",)}, False),
    "only cpu_parity ran": ({"drop": tuple(c for c in required_checks() if c != "cpu_parity")}, False),
}


@pytest.mark.parametrize(("kwargs", "badge"), _BADGE_CASES.values(), ids=_BADGE_CASES.keys())
def test_badge_only_for_a_full_real_mps_pass_in_every_output(
    kwargs: dict, badge: bool, tmp_path: Path
) -> None:
    """The one verdict decides the badge in the JSON, the Markdown and the HTML report alike."""
    report = report_of(*full_run(**kwargs))
    assert report["pipelines"][0]["badge"] is badge
    assert (report["pipelines"][0]["kind"] == "badge") is badge
    assert (BADGE in render_markdown(report)) is badge
    assert ('<span class="badge"' in render_html(report)) is badge
    text = json_text(report)
    assert json.loads(text)["pipelines"][0]["badge"] is badge
    if not kwargs.get("real_mps", True):
        assert "stand-in" in render_markdown(report)


def test_badge_per_pipeline() -> None:
    report = report_of(
        *full_run("StableDiffusionPipeline"),
        result(pipeline="DiTPipeline", real_mps=True, passed=False),
        result(pipeline="DDPMPipeline", real_mps=False),
    )
    text = render_markdown(report)
    assert text.count(BADGE) == 1
    row = next(line for line in text.splitlines() if line.startswith("| StableDiffusionPipeline |"))
    assert BADGE in row
    verdicts = {row["pipeline"]: row["verdict"] for row in report["pipelines"]}
    assert verdicts["StableDiffusionPipeline"] == "earns the MPS badge (2.00x faster than the CPU)"
    assert verdicts["DiTPipeline"] == "fails: cpu_parity"
    assert verdicts["DDPMPipeline"].startswith("pre-check passed (cpu stand-in); not run: load, inference")


def test_no_badge_when_real_mps_skipped_a_check_a_stand_in_ran() -> None:
    checks = [r.to_dict() for r in full_run(drop=("float16",))]
    checks.append(result(check="float16", real_mps=False, pipeline="StableDiffusionPipeline").to_dict())
    rows = pipeline_rows(checks)
    assert rows[0]["badge"] is False
    assert rows[0]["verdict"] == "no badge yet: float16 not run on MPS (the badge needs every required check)"


def test_markdown_escapes_names_and_table_pipes() -> None:
    text = render_markdown(report_of(result(nodeid=f"t.py::test[{EVIL}|x]", passed=False)))
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    row = next(line for line in text.splitlines() if "&lt;script&gt;" in line and line.startswith("| ❌"))
    assert row.count(" | ") == 5  # six cells: the pipe in the name is escaped
    assert md_text("**bold** _x_ `code` [a](b)") == "\\*\\*bold\\*\\* \\_x\\_ \\`code\\` \\[a\\](b)"


def test_markdown_appends_to_github_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_markdown(report_of(result()), summary)
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "## pytest-mps" in text
    other = tmp_path / "other.md"
    other.write_text("old")
    write_markdown(report_of(result()), other)
    assert other.read_text().startswith("## pytest-mps")


# --- HTML -----------------------------------------------------------------------------------------------


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_inert(page: str, payload: str) -> None:
    """``payload`` appears in the page as text only: one script element (the page's own), no element
    or attribute the payload could have made."""
    parsed = _Page()
    parsed.feed(page)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert len(scripts) == 1 and page.count("<script") == 1
    assert any(payload in text for text in parsed.text), "the name must be shown as text"
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert str(attrs["src"]).startswith("images/"), attrs


def test_html_escapes_every_name(tmp_path: Path) -> None:
    evil_img = '"><img src=x onerror=alert(1)>'
    bad = result(pipeline=f"Pipe{EVIL}", nodeid=f"t.py::test[{EVIL}{evil_img}]", passed=False, shift=0.3)
    bad.check = f"check{evil_img}"
    bad.failures = [f"failure {EVIL}"]
    bad.summary = f"summary {evil_img}"
    report = report_of(bad)
    place_images(report, tmp_path, {0: encode_images(bad.images)})
    page = write_html(report, tmp_path).read_text()
    assert_inert(page, EVIL)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    csp = html.unescape(next(line for line in page.split("<meta") if "Content-Security-Policy" in line))
    script_src = csp.split("script-src", 1)[1].split('"')[0]
    assert script_src.strip().startswith("'sha256-") and "unsafe" not in script_src


def test_html_shows_three_images_per_parity_check(tmp_path: Path) -> None:
    good, bad = result(), result(passed=False, shift=0.25)
    report = report_of(good, bad)
    place_images(report, tmp_path, {0: encode_images(good.images), 1: encode_images(bad.images)})
    write_html(report, tmp_path)
    page = (tmp_path / "index.html").read_text()
    for index in (1, 2):
        for name in ("cpu", "target", "diff"):
            path = tmp_path / f"images/{index:04d}-DDPMPipeline-cpu_parity-{name}.png"
            assert path.is_file() and f"'images/{path.name}'" in page
            assert Image.open(path).size == (8, 8)
    assert "identical (no difference)" in page and "amplified ×4 (max 0.25)" in page
    assert page.count("<details open>") == 1  # the failing check is unfolded
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # offline


def test_html_json_paths_are_relative_to_each_file(tmp_path: Path) -> None:
    report = report_of(result(passed=False, shift=0.1))
    place_images(report, tmp_path / "html", {0: encode_images(result(shift=0.1).images)})
    write_json(report, tmp_path / "json" / "report.json", images_root=tmp_path / "html")
    data = json.loads((tmp_path / "json" / "report.json").read_text())
    assert data["checks"][0]["images"]["cpu"] == "../html/images/0001-DDPMPipeline-cpu_parity-cpu.png"
    assert (tmp_path / "json" / data["checks"][0]["images"]["diff"]).is_file()


def test_heatmap_amplifies_and_marks_non_finite() -> None:
    cpu = np.zeros((4, 4, 3))
    rgb, gain, largest = heatmap(cpu, cpu)
    assert gain == 1.0 and largest == 0.0 and (rgb == (0, 0, 4)).all()  # the bottom of the colour map
    target = cpu.copy()
    target[1, 1] = 0.001
    target[2, 2, 0] = np.nan
    rgb, gain, largest = heatmap(cpu, target)
    assert largest == pytest.approx(0.001) and gain == pytest.approx(1000)
    assert tuple(rgb[1, 1]) == (252, 255, 164)  # the largest difference reaches the top
    assert tuple(rgb[2, 2]) == (0, 255, 255)  # NaN/Inf: cyan, outside the map


def test_to_rgb_layouts() -> None:
    assert to_rgb(np.zeros((2, 8, 6, 3))).shape == (8, 12, 3)  # a batch side by side
    assert to_rgb(np.zeros((1, 3, 8, 8))).shape == (8, 8, 3)  # channels first
    assert to_rgb(np.zeros((1, 2, 8, 8, 3))).shape == (8, 16, 3)  # video frames
    assert to_rgb(np.zeros((1, 8, 8, 1))).shape == (8, 8, 3)
    assert to_rgb(np.zeros((1, 16000))) is None  # audio: no picture
    png = encode_images({"cpu": np.full((1, 2, 2, 3), np.nan), "target": np.zeros((1, 2, 2, 3))})[0]["cpu"]
    assert Image.open(io.BytesIO(png)).getpixel((0, 0)) == (0, 255, 255)


# --- the session table ----------------------------------------------------------------------------------


def test_session_table_marks_stand_ins_and_gives_each_pipeline_its_verdict() -> None:
    results = [result().to_dict(), result(pipeline="DiTPipeline", passed=False).to_dict()]
    lines = session_table(results, heading="target: x")
    assert lines[0] == "target: x"
    assert lines[-3] == "verdicts:"
    assert lines[-1] == "  DiTPipeline: fails: cpu_parity"
    mixed = session_table([result(real_mps=True).to_dict(), result().to_dict()], heading="h")
    assert mixed[4].endswith("[stand-in]") and not mixed[3].endswith("[stand-in]")


def test_comparable_drops_only_volatile_fields() -> None:
    first, second = report_of(result()), report_of(result())
    second["created"] = "later"
    second["checks"][0]["timings"] = {"target": 9.0}
    second["checks"][0]["details"]["reference"] = "disk"
    assert comparable(first) == comparable(second)
    second["checks"][0]["metrics"]["target vs cpu"]["max_abs"] = 1.0
    assert comparable(first) != comparable(second)


def test_render_html_without_checks() -> None:
    page = render_html(report_of())
    assert "0 of 0 checks passed" in page
