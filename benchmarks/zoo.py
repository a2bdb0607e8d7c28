"""The zoo table: the emulated pre-check status of every Diffusers pipeline family, for the installed
torch and Diffusers (not a test; CI does not run it).

Each entry of the zoo (``tests/zoo``: one tiny, randomly initialised pipeline per family, built from
fixed seeds, nothing downloaded) is saved to a folder with safetensors weights and checked by
``python -m pytest_mps check --device emulated FOLDER`` in its own process. The table (pipeline |
verdict | seconds) is printed and written to ``docs/diffusers-status.md``; the verdict column says
whether the outcome is the one the zoo expects.

    python benchmarks/zoo.py                        # every entry; writes docs/diffusers-status.md
    python benchmarks/zoo.py sd wan --out -         # some entries, print only
    python benchmarks/zoo.py --save /tmp/zoo        # only save the folders (pytest-mps check /tmp/zoo/sd)
    python benchmarks/zoo.py --float16 [--float16-targets cpu,emulated,cuda] [--json f16.json]

``--float16`` instead measures float16 against float32 for each entry, as the float16 check does
(weights converted on the target, noise drawn in float32 and cast, output against the float32 CPU
run): cosine distance, max |diff| and whether the float16 output is finite, per target.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# tests/ first: it holds the zoo package (`zoo`), which this script's own name would shadow.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import zoo  # noqa: E402
from zoo.checking import CheckRunError, check_statuses, failed_checks, run_check  # noqa: E402

DOC = ROOT / "docs" / "diffusers-status.md"


@dataclass
class Row:
    """One zoo entry's outcome."""

    entry: zoo.ZooEntry
    failed: dict[str, list[str]]
    seconds: float
    error: str = ""
    said: str = ""  # pytest-mps's own verdict (pytest_mps.verdict.pipeline_verdict) from the report
    statuses: dict[str, str] | None = None  # check -> result status, from the report

    @property
    def as_expected(self) -> bool:
        """The failed checks are the ones the zoo expects today, for the recorded causes, with the
        statuses the zoo's verdict means."""
        return not self.error and not self.entry.judge(self.failed, self.statuses)

    @property
    def verdict(self) -> str:
        """pytest-mps's verdict, with the first failure's first line."""
        if self.error:
            return f"not checked: {self.error}"
        if not self.failed:
            return self.said or "passes"
        first = next((lines[0] for lines in self.failed.values() if lines), "failed")
        return f"{self.said or 'fails ' + ', '.join(self.failed)}: {first.splitlines()[0]}"

    @property
    def label(self) -> str:
        """What the outcome means: the zoo's verdict for the entry, with today's harness failures."""
        entry = self.entry
        text = entry.verdict
        if entry.why:
            text += f": {entry.why}"
        for check, _ in entry.harness:
            text += f"; {check}: harness"
        return text


def run_entry(entry: zoo.ZooEntry, workdir: Path) -> Row:
    """Save ``entry`` under ``workdir`` and check it in a fresh process; the seconds are the check's
    wall time (start-up of the checking process included)."""
    missing = zoo.missing_modules(entry)
    if missing:
        return Row(entry, {}, 0.0, f"needs {', '.join(missing)} (pip install {' '.join(missing)})")
    folder = zoo.save(entry.name, workdir / entry.name)
    start = time.perf_counter()
    try:
        report = run_check(folder, workdir / f"{entry.name}.json")
    except CheckRunError as exc:
        return Row(entry, {}, time.perf_counter() - start, str(exc))
    said = next((r["verdict"] for r in report.get("pipelines", ()) if r.get("pipeline") == entry.name), "")
    return Row(
        entry,
        failed_checks(report, entry.name),
        time.perf_counter() - start,
        said=said,
        statuses=check_statuses(report, entry.name),
    )


def _versions() -> str:
    names = ("torch", "diffusers", "transformers", "accelerate")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found) + f"; Python {platform.python_version()}, {platform.machine()}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row]) -> list[str]:
    """The zoo table as Markdown lines."""
    lines = [
        "| pipeline | zoo entry | makes | verdict (emulated) | what it means | as expected | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        entry = row.entry
        problems = entry.judge(row.failed, row.statuses) or [row.error]
        mark = "yes" if row.as_expected else "**NO**: " + "; ".join(problems)
        lines.append(
            f"| `{entry.pipeline}` | {entry.name} | {entry.kind} | {_cell(row.verdict)} | "
            f"{_cell(row.label)} | {_cell(mark)} | {row.seconds:.1f} |"
        )
    return lines


def document(rows: list[Row]) -> str:
    """``docs/diffusers-status.md``."""
    passed = sum(1 for r in rows if not r.failed and not r.error)
    matched = sum(1 for r in rows if r.as_expected)
    head = f"""# Diffusers pipeline families on the emulated MPS target

The emulated pre-check status of every Diffusers pipeline family, for the versions below. Each row is
one tiny, randomly initialised pipeline of that family (`tests/zoo`, built from fixed seeds like
Diffusers' own `get_dummy_components`), saved with safetensors weights and checked with
`pytest-mps check --device emulated`. **This is a pre-check on a stand-in, not an MPS verdict**: the
emulated target applies MPS's rules (no float64 or complex128, kernels MPS lacks, buffer and rank
limits) to CPU arithmetic. Only a run on Apple silicon can earn the MPS badge.

- versions: {_versions()}
- regenerate: `python benchmarks/zoo.py` (seconds: the whole check of one pipeline, process start-up
  included, on the machine that wrote this file)
- {passed} of {len(rows)} pipelines pass every check; {matched} of {len(rows)} outcomes are the ones the
  zoo expects. "verdict" is pytest-mps's own (the one verdict function: a failure that also happens on
  the CPU is labelled so and never counted against MPS); "what it means": `passes`; `MPS hazard`, a
  failure MPS itself causes; `fails on the CPU too`, a Diffusers problem that is not MPS's

"""
    notes = """
## Reading the failures

- **MPS hazard**: the pipeline does something MPS cannot, and the emulated target caught it. Fix it in
  the pipeline (for a float64 table: build it in float32, or keep it on the CPU).
- **fails on the CPU too**: the same failure happens without MPS; it says nothing about MPS. Known
  ones: Allegro's VAE decodes only with `pipe.vae.enable_tiling()`, which a saved pipeline does not
  remember; Latte's batched call differs from single calls even for equal prompts; AudioLDM 2 pads the
  shorter prompt of a batch, which changes the conditioning it generates.
"""
    return head + "\n".join(table(rows)) + "\n" + notes


def save_all(names: list[str], folder: Path) -> None:
    """Save the named entries to ``folder/<name>``."""
    for name in names:
        print(zoo.save(name, folder / name), flush=True)


# --- float16 ----------------------------------------------------------------------------------------


def float16_figures(entry: zoo.ZooEntry, targets: list[str]) -> dict[str, Any]:
    """float16 on each target against float32 on the CPU, as the float16 check measures it."""
    import numpy as np
    import torch

    from pytest_mps.emulated_target import cpu_arithmetic
    from pytest_mps.emulation import EmulatedMPS
    from pytest_mps.inputs import default_inputs
    from pytest_mps.metrics import compare
    from pytest_mps.running import moved, noise_in_float32, run_pipeline

    figures: dict[str, Any] = {}
    with EmulatedMPS():  # built as on a Mac (construction-time MPS branches)
        pipe = entry.build()
        inputs = default_inputs(pipe)
        try:
            with cpu_arithmetic():
                reference = run_pipeline(pipe, inputs)
        except Exception as exc:
            return {"error": f"float32 CPU run raised {type(exc).__name__}"}
        for target in targets:
            device = {"emulated": "mps", "cpu": "cpu", "cuda": "cuda"}[target]
            scope = cpu_arithmetic() if target != "emulated" else _nothing()
            try:
                with scope, moved(pipe, device, torch.float16), noise_in_float32():
                    half = run_pipeline(pipe, inputs)
            except Exception as exc:
                figures[target] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
                continue
            finite = bool(np.isfinite(half.array).all())
            c = compare(half.array, reference.array) if finite else None
            figures[target] = {
                "finite": finite,
                "cosine_distance": None if c is None else c.cosine_distance,
                "max_abs": None if c is None else c.max_abs,
                "seconds": half.seconds,
            }
    return figures


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def float16_table(results: dict[str, dict[str, Any]], targets: list[str]) -> list[str]:
    """float16 figures as Markdown lines."""
    head = "| zoo entry | " + " | ".join(f"{t}: cos / max\\|diff\\|" for t in targets) + " |"
    lines = [head, "|---|" + "---|" * len(targets)]
    for name, figures in results.items():
        cells = []
        for target in targets:
            f = figures.get(target) or {"error": figures.get("error", "not run")}
            if "error" in f:
                cells.append(_cell(f["error"]))
            elif not f["finite"]:
                cells.append("NaN/Inf")
            else:
                cells.append(f"{f['cosine_distance']:.2e} / {f['max_abs']:.2e}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"zoo entries (default all: {', '.join(zoo.ZOO)})")
    parser.add_argument(
        "--out",
        default=None,
        help=f"Markdown file to write ('-': none; default {DOC} when every entry runs, none otherwise)",
    )
    parser.add_argument("--save", type=Path, default=None, help="only save the entries to this folder")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the saved folders and reports here")
    parser.add_argument("--float16", action="store_true", help="measure float16 against float32 instead")
    parser.add_argument("--float16-targets", default="cpu,emulated", help="targets of --float16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for --float16 (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="write the table from an earlier run's --json, running nothing",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in zoo.ZOO]
    if unknown:
        parser.error(f"unknown zoo entries {', '.join(unknown)}; choose from {', '.join(zoo.ZOO)}")
    names = args.names or list(zoo.ZOO)
    if args.save is not None:
        save_all(names, args.save)
        return 0
    if args.float16:
        import torch

        torch.set_num_threads(args.threads)
        targets = [t.strip() for t in args.float16_targets.split(",") if t.strip()]
        results = {}
        for name in names:
            results[name] = float16_figures(zoo.ZOO[name], targets)
            print(name, json.dumps(results[name]), flush=True)
        print("\n".join(float16_table(results, targets)))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    rows = []
    if args.from_json is not None:
        saved = {item["name"]: item for item in json.loads(args.from_json.read_text())}
        rows = [
            Row(zoo.ZOO[name], saved[name]["failed"], saved[name]["seconds"], saved[name]["error"])
            for name in names
            if name in saved
        ]
    with tempfile.TemporaryDirectory(prefix="pytest-mps-zoo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names if args.from_json is None else ():
            row = run_entry(zoo.ZOO[name], workdir)
            rows.append(row)
            print(
                f"{name:22s} {row.seconds:7.1f}s  {'ok ' if row.as_expected else 'NO '} {row.verdict}",
                flush=True,
            )
    print("\n".join(table(rows)))
    out = args.out if args.out is not None else (str(DOC) if not args.names else "-")
    if out != "-":
        Path(out).write_text(document(rows))
        print(f"wrote {out}")
    if args.json and args.from_json is None:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "name": r.entry.name,
                        "failed": r.failed,
                        "seconds": r.seconds,
                        "error": r.error,
                        "as_expected": r.as_expected,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
    return 0 if all(r.as_expected for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
