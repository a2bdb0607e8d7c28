"""The HTML report (``--mps-report-html DIR``): one self-contained page, ``DIR/index.html``, that works
offline (inline CSS and JS, no CDN), with PNGs written next to it in ``DIR/images/``.

For each check with images (the parity checks) it shows the CPU output, the target output and an
amplified heatmap of their difference side by side. The checks table sorts by any column and filters by
outcome (also from the address: ``index.html#failed``) and by text. Every string from a test is escaped
with :func:`html.escape`, and a Content Security Policy allows only the page's own script (by hash), so
even a test named ``<script>`` stays text.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_mps.reports.atomic import atomic_write

__all__ = ["IMAGE_FOLDER", "place_images", "render_html", "write_html"]

IMAGE_FOLDER = "images"
#: An embedded PNG (the single-file layout): nothing but base64 after the prefix.
_DATA_PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]*={0,2}")
_IMAGE_LABELS = (("cpu", "CPU reference"), ("target", "target output"), ("diff", "|difference|"))
_FIGURES = (
    ("max_abs", "atol", "<=", "max |diff|"),
    ("mean_abs", None, "", "mean |diff|"),
    ("cosine_distance", "max_cosine_distance", "<=", "cosine distance"),
    ("psnr", "min_psnr", ">=", "PSNR dB"),
    ("rms_255", "max_rms", "<=", "RMS (0-255)"),
    ("pixel_fraction", "max_pixel_fraction", "<=", "pixels off >1 level"),
)

_CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--line:#d0d7de;--soft:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 padding:16px 24px;color:#1f2328}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
.muted{color:#59636e}
.banner{border:1px solid #d4a72c;background:#fff8c5;padding:8px 12px;border-radius:6px;margin:10px 0}
.banner.real{border-color:#4ac26b;background:#dafbe1}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
th[data-sort]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.pill{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.pill.passed{background:var(--ok)}.pill.failed{background:var(--bad)}
.standin{color:var(--warn);font-weight:600}
.badge{display:inline-block;background:#000;color:#fff;font:600 11px/18px Verdana,sans-serif;
 padding:0 6px;border-radius:3px}
.controls{margin:6px 0 8px;display:flex;gap:6px;align-items:center}
.controls button{border:1px solid var(--line);background:#fff;border-radius:6px;padding:3px 10px;
 cursor:pointer}
.controls button.on{background:#0969da;border-color:#0969da;color:#fff}
.controls input{border:1px solid var(--line);border-radius:6px;padding:3px 8px;min-width:260px}
tbody.check>tr.more>td{background:#fbfcfd;padding:6px 12px 10px}
tbody.check.failed>tr.row{background:#fff5f5}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
ul.failures{margin:4px 0;padding-left:20px;color:var(--bad)}
ul.failures li{white-space:pre-wrap;font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.images{display:flex;gap:14px;flex-wrap:wrap;margin:8px 0}
.images figure{margin:0;width:min-content}
.images img{height:200px;width:auto;image-rendering:pixelated;border:1px solid var(--line);background:#eee}
.images figcaption{font-size:12px;color:#59636e;max-width:420px}
table.metrics{width:auto;margin:6px 0}table.metrics td,table.metrics th{padding:2px 10px;font-size:12px}
details>summary{cursor:pointer;color:#0969da}
"""

_JS = """
(function () {
  var table = document.getElementById("checks");
  if (!table) { return; }
  var state = {filter: "all", text: "", key: "index", dir: 1};
  function bodies() { return Array.prototype.slice.call(table.tBodies); }
  function apply() {
    bodies().forEach(function (b) {
      var byOutcome = state.filter === "all" || b.dataset.outcome === state.filter;
      var byText = !state.text || b.dataset.search.indexOf(state.text) >= 0;
      b.hidden = !(byOutcome && byText);
    });
  }
  function choose(button) {
    state.filter = button.dataset.filter;
    Array.prototype.forEach.call(document.querySelectorAll("[data-filter]"), function (other) {
      other.classList.toggle("on", other === button);
    });
    apply();
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-filter]"), function (button) {
    button.addEventListener("click", function () { choose(button); });
    if (location.hash === "#" + button.dataset.filter) { choose(button); }
  });
  document.getElementById("search").addEventListener("input", function (event) {
    state.text = event.target.value.toLowerCase();
    apply();
  });
  Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (th) {
    th.addEventListener("click", function () {
      var key = th.dataset.sort;
      var numeric = th.dataset.type === "num";
      state.dir = state.key === key ? -state.dir : 1;
      state.key = key;
      var list = bodies();
      list.sort(function (a, b) {
        var x = a.dataset[key], y = b.dataset[key], order;
        if (numeric) {
          x = x === "" ? Infinity : parseFloat(x);
          y = y === "" ? Infinity : parseFloat(y);
          order = x === y ? 0 : (x < y ? -1 : 1);
        } else {
          order = x.localeCompare(y);
        }
        return order * state.dir || a.dataset.index - b.dataset.index;
      });
      list.forEach(function (b) { table.appendChild(b); });
      Array.prototype.forEach.call(table.querySelectorAll("th[data-sort]"), function (other) {
        other.removeAttribute("aria-sort");
      });
      th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
    });
  });
  apply();
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _figure(value: Any) -> str:
    from pytest_mps.results import format_figure

    if value is None:
        return "n/a"
    return format_figure(float(value)) if isinstance(value, int | float) else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "check"


def place_images(
    report: Mapping[str, Any],
    folder: str | Path,
    images: Mapping[int, tuple[dict[str, bytes], dict[str, float]]],
) -> None:
    """Write each check's PNGs (keyed by the check's index in ``report["checks"]``) into
    ``folder/images/`` and point the check's ``images`` at them, relative to ``folder``.

    The file names are made here (check number, pipeline and check slugs, image name), never taken
    from input: an image name outside the safe alphabet
    (:func:`~pytest_mps.reports.validate.safe_image_name`) or data that is not a PNG raises
    ``ValueError``, and no file is written outside ``folder/images/``.
    """
    from pytest_mps.reports.validate import safe_image_name

    root = Path(folder)
    image_root = (root / IMAGE_FOLDER).resolve()
    for index, check in enumerate(report["checks"]):
        encoded = images.get(index)
        if not encoded:
            continue
        pngs, info = encoded
        stem = f"{index + 1:04d}-{_slug(str(check.get('pipeline')))}-{_slug(str(check.get('check')))}"
        entry: dict[str, Any] = {}
        for name, data in pngs.items():
            if not safe_image_name(name):
                raise ValueError(f"image name {str(name)[:40]!r} is not 1-32 letters, digits or underscores")
            if bytes(data[:8]) != b"\x89PNG\r\n\x1a\n":
                raise ValueError(f"image {name!r} of check {index + 1} is not a PNG")
            # Safe parts only, so the name has no separator: the file lands in images/ (a symlink at
            # that name is replaced by the rename, never followed).
            filename = f"{stem}-{name}.png"
            atomic_write(image_root / filename, data)
            entry[name] = f"{IMAGE_FOLDER}/{filename}"
        entry.update({k: v for k, v in info.items() if safe_image_name(k)})
        check["images"] = entry


def _badge(row: Mapping[str, Any]) -> str:
    if row["badge"]:
        title = "earned on real MPS: every required check passed, and MPS beat the CPU"
        return f'<span class="badge" title="{title}">MPS</span>'
    if not row["real_mps_checks"]:
        return '<span class="standin">stand-in only</span>'
    return "—"


def _source_item(source: Mapping[str, Any]) -> str:
    env = source.get("environment") or {}
    target = source.get("target") or {}
    kind = (
        "real MPS" if target.get("real_mps") else '<span class="standin">stand-in: not an MPS verdict</span>'
    )
    system = f"macOS {env['macos_version']}" if env.get("macos_version") else env.get("os_name")
    facts = [
        system,
        env.get("machine_arch"),
        env.get("python_version") and f"Python {env['python_version']}",
        env.get("torch_version") and f"torch {env['torch_version']}",
        env.get("diffusers_version") and f"diffusers {env['diffusers_version']}",
    ]
    text = " · ".join(_e(f) for f in facts if f)
    return (
        f"<li><b>{_e(source.get('name', 'run'))}</b>: target <b>{_e(target.get('label', 'unknown'))}</b> "
        f"({kind}) <span class='muted'>{text}</span></li>"
    )


def _metrics_table(check: Mapping[str, Any]) -> str:
    metrics = check.get("metrics") or {}
    if not metrics:
        return ""
    tolerance = check.get("tolerance") or {}
    head = "".join(f"<th>{_e(label)}</th>" for label in metrics)
    rows = []
    for field, limit_name, sense, label in _FIGURES:
        cells = "".join(f"<td class='num'>{_e(_figure((m or {}).get(field)))}</td>" for m in metrics.values())
        limit = tolerance.get(limit_name) if limit_name else None
        judged = f"{sense} {_figure(limit)}" if limit is not None else ""
        rows.append(f"<tr><th>{_e(label)}</th>{cells}<td class='num muted'>{_e(judged)}</td></tr>")
    return f"<table class='metrics'><tr><th></th>{head}<th>limit</th></tr>{''.join(rows)}</table>"


def _image_figures(check: Mapping[str, Any]) -> str:
    images = check.get("images") or {}
    figures = []
    for name, label in _IMAGE_LABELS:
        path = images.get(name)
        if not isinstance(path, str):
            continue
        caption = label if name != "target" else f"{label} ({check.get('target')})"
        if name == "diff":
            gain, largest = images.get("diff_gain"), images.get("diff_max")
            caption = (
                "identical (no difference)"
                if not largest
                else f"{label}, amplified ×{_figure(gain)} (max {_figure(largest)})"
            )
        src = path if _DATA_PNG.fullmatch(path) else urllib.parse.quote(path, safe="/")
        figures.append(
            f"<figure><img src='{_e(src)}' alt='{_e(label)}' loading='lazy'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return f"<div class='images'>{''.join(figures)}</div>" if figures else ""


def _localization(check: Mapping[str, Any]) -> str:
    """Where a failing check's divergence starts: the headline and the ranked modules."""
    found = (check.get("details") or {}).get("localization")
    if not isinstance(found, Mapping):
        return ""
    rows = "".join(
        f"<tr><td class='num'>{n}</td><td><code>{_e(m.get('path'))}</code></td>"
        f"<td>{_e(m.get('module_class'))}</td>"
        f"<td>{_e('x'.join(str(d) for d in m.get('shape') or ()))}</td><td>{_e(m.get('dtype'))}</td>"
        f"<td class='num'>{_e(_figure(m.get('max_abs')) if m.get('max_abs') is not None else 'inf')}</td>"
        f"<td>{'yes' if m.get('draws_random') else ''}</td></tr>"
        for n, m in enumerate(found.get("ranking") or (), 1)
        if isinstance(m, Mapping)
    )
    table = (
        "<table class='metrics'><tr><th>#</th><th>module</th><th>class</th><th>shape</th><th>dtype</th>"
        f"<th>local max |diff|</th><th>draws random</th></tr>{rows}</table>"
        if rows
        else ""
    )
    return f"<div class='localization'><b>{_e(found.get('headline'))}</b>{table}</div>"


def _worst(check: Mapping[str, Any], field: str) -> str:
    values = [m.get(field) for m in (check.get("metrics") or {}).values() if isinstance(m, dict)]
    values = [v for v in values if isinstance(v, int | float)]
    return repr(float(max(values))) if values else ""


def _check_body(index: int, check: Mapping[str, Any]) -> str:
    outcome = "passed" if check.get("outcome") == "passed" else "failed"
    target = str(check.get("target"))
    nodeid = str(check.get("nodeid") or "")
    search = " ".join(
        str(v) for v in (check.get("pipeline"), check.get("check"), target, nodeid, check.get("summary"))
    ).lower()
    data = {
        "index": str(index),
        "outcome": outcome,
        "pipeline": str(check.get("pipeline")),
        "check": str(check.get("check")),
        "target": target,
        "maxabs": _worst(check, "max_abs"),
        "cosine": _worst(check, "cosine_distance"),
        "test": nodeid,
        "search": search,
    }
    attributes = " ".join(f"data-{k}='{_e(v)}'" for k, v in data.items())
    target_cell = _e(target) if check.get("real_mps") else f"<span class='standin'>{_e(target)}</span>"
    failures = "".join(f"<li>{_e(f)}</li>" for f in check.get("failures") or [])
    timings = ", ".join(f"{_e(k)} {float(v):.3f}s" for k, v in (check.get("timings") or {}).items())
    details_open = " open" if outcome == "failed" else ""
    more = (
        f"<details{details_open}><summary>{_e(check.get('summary') or 'details')}</summary>"
        + (f"<ul class='failures'>{failures}</ul>" if failures else "")
        + _localization(check)
        + _image_figures(check)
        + _metrics_table(check)
        + (f"<div class='muted'>timings: {timings}</div>" if timings else "")
        + "</details>"
    )
    return (
        f"<tbody class='check {outcome}' {attributes}>"
        f"<tr class='row'><td class='num'>{index + 1}</td>"
        f"<td><span class='pill {outcome}'>{outcome}</span></td>"
        f"<td>{_e(check.get('pipeline'))}</td><td>{_e(check.get('check'))}</td><td>{target_cell}</td>"
        f"<td class='num'>{_e(_figure(float(data['maxabs'])) if data['maxabs'] else 'n/a')}</td>"
        f"<td class='num'>{_e(_figure(float(data['cosine'])) if data['cosine'] else 'n/a')}</td>"
        f"<td><code>{_e(nodeid)}</code></td></tr>"
        f"<tr class='more'><td colspan='8'>{more}</td></tr></tbody>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The page for ``report``; image paths in the checks are used as they are (relative URLs)."""
    totals = report["totals"]
    checks = report["checks"]
    script_hash = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    policy = (
        "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'"
    )
    if totals["standin"] and not totals["real_mps"]:
        banner = (
            "<div class='banner'><b>Stand-in run: not an MPS verdict.</b> Every result below comes from a "
            "stand-in target, not Apple's MPS backend; no MPS badge is awarded.</div>"
        )
    elif totals["standin"]:
        banner = (
            f"<div class='banner'><b>{totals['standin']} stand-in results</b> are marked as such: they are "
            "not an MPS verdict and earn no badge.</div>"
        )
    else:
        banner = "<div class='banner real'>Every result below ran on Apple's MPS backend.</div>"
    pipelines = "".join(
        f"<tr><td>{_e(row['pipeline'])}</td><td>{_badge(row)}</td>"
        f"<td class='num'>{row['passed']}/{row['checks']}</td>"
        f"<td>{_e(', '.join(row['targets']))}</td><td>{_e(row['verdict'])}</td></tr>"
        for row in report["pipelines"]
    )
    failed = totals["failed"]
    header = (
        "<thead><tr><th data-sort='index' data-type='num' aria-sort='ascending'>#</th>"
        "<th data-sort='outcome'>outcome</th><th data-sort='pipeline'>pipeline</th>"
        "<th data-sort='check'>check</th><th data-sort='target'>target</th>"
        "<th data-sort='maxabs' data-type='num'>max |diff|</th>"
        "<th data-sort='cosine' data-type='num'>cosine distance</th>"
        "<th data-sort='test'>test</th></tr></thead>"
    )
    bodies = "".join(_check_body(i, c) for i, c in enumerate(checks))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_e(policy)}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>pytest-mps report: {totals['passed']} of {totals['checks']} checks passed</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>pytest-mps report</h1><div class='muted'>{totals['passed']} of {totals['checks']} checks "
        f"passed, {failed} failed · {_e(report.get('generator'))} · {_e(report.get('created'))}</div>"
        f"{banner}<ul>{''.join(_source_item(s) for s in report['sources'])}</ul>"
        "<h2>Pipelines</h2><table><thead><tr><th>pipeline</th><th>MPS</th><th>passed</th><th>targets</th>"
        f"<th>verdict</th></tr></thead><tbody>{pipelines}</tbody></table>"
        "<h2>Checks</h2><div class='controls'>"
        f"<button type='button' data-filter='all' class='on'>all ({len(checks)})</button>"
        f"<button type='button' data-filter='failed'>failed ({failed})</button>"
        f"<button type='button' data-filter='passed'>passed ({totals['passed']})</button>"
        "<input id='search' type='search' placeholder='filter by pipeline, check, test...'></div>"
        f"<table id='checks'>{header}{bodies}</table>"
        f"<script>{_JS}</script></body></html>\n"
    )


def write_html(report: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``folder/index.html`` (images must already be in place: :func:`place_images`)."""
    return atomic_write(Path(folder) / "index.html", render_html(report))


def single_file(path: str | Path) -> bool:
    """Whether an HTML report path names one file (``report.html``) rather than a folder."""
    return Path(path).suffix.lower() in (".html", ".htm")


def embedded(
    report: Mapping[str, Any], images: Mapping[int, tuple[dict[str, bytes], dict[str, float]]]
) -> dict:
    """A copy of ``report`` whose checks carry their PNGs inline (``data:`` URIs): one self-contained
    page, for a CI artifact or an e-mail. The report given is left as it is."""
    import base64
    import copy

    from pytest_mps.reports.validate import safe_image_name

    out = copy.deepcopy(dict(report))
    for index, check in enumerate(out["checks"]):
        encoded = images.get(index)
        if not encoded:
            continue
        pngs, info = encoded
        entry: dict[str, Any] = {}
        for name, data in pngs.items():
            if safe_image_name(name) and bytes(data[:8]) == b"\x89PNG\r\n\x1a\n":
                entry[name] = "data:image/png;base64," + base64.b64encode(bytes(data)).decode("ascii")
        entry.update({k: v for k, v in info.items() if safe_image_name(k)})
        check["images"] = entry
    return out


def write_html_report(
    report: dict[str, Any], path: str | Path, images: Mapping[int, tuple[dict[str, bytes], dict[str, float]]]
) -> Path:
    """Write the HTML report at ``path``: one self-contained file with the images inline when ``path``
    ends in ``.html`` (the default layout), else ``path/index.html`` with the PNGs in ``path/images/``
    (the folder layout, whose image paths the JSON report records for ``pytest-mps merge``)."""
    if single_file(path):
        return atomic_write(Path(path), render_html(embedded(report, images)))
    place_images(report, path, images)
    return write_html(report, path)
