"""``pytest-mps init-ci``: write a GitHub Actions workflow that pre-checks on Linux and gates on MPS.

Two jobs:

- ``precheck`` (``ubuntu-latest``, the CPU build of torch): the emulated target (MPS's rules, CPU
  arithmetic; a pre-check, never an MPS verdict) through ``pytest-mps check --device emulated`` on the
  given pipeline folders and/or the project's own tests with ``--mps-device emulated``; the CPU
  references those runs compute are stored as an artifact, and the torch and Diffusers versions are
  handed on so the Mac installs the same ones (references are keyed by them).
- ``mps`` (Apple silicon, ``macos-latest`` by default): checks that the runner's MPS device works,
  fetches the references, runs the same checks on real MPS, writes the Markdown report to the job
  summary (``$GITHUB_STEP_SUMMARY``) and uploads the HTML and JSON reports even when a check failed;
  a failed check fails the job.

GitHub documents that its hosted arm64 macOS runners, being virtual machines, do not support MPS
(actions/runner-images#9918: allocations fail or results differ): the preflight step says so where
that bites. ``--runner self-hosted`` targets a self-hosted Apple silicon runner instead; projects
without one can use signed receipts (``pytest-mps verify-receipt``).

The workflow is a template rendered with every user value validated and shell-quoted; the tests
validate it against GitHub's workflow schema (``check-jsonschema --builtin-schema
vendor.github-workflows``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pytest_mps.command_line import CommandParser, UsageProblem

__all__ = ["DEFAULT_OUTPUT", "main", "render_workflow"]

_PROG = "pytest-mps init-ci"
DEFAULT_OUTPUT = ".github/workflows/mps.yml"
DEFAULT_PYTHON = "3.11"
DEFAULT_RUNNER = "macos-latest"
DEFAULT_ALLOWED_SIGNERS = ".github/allowed_signers"
#: ``--runner self-hosted`` means a self-hosted runner labelled as Apple silicon macOS.
_SELF_HOSTED = "[self-hosted, macOS, ARM64]"
_DEFAULT_INSTALL = "python -m pip install -e . pytest-mps"
_CPU_TORCH = "python -m pip install torch --index-url https://download.pytorch.org/whl/cpu"
#: Folders the workflow writes, relative to the checkout.
REFERENCES = "mps-references"
PRECHECK_REPORTS = "mps-precheck"
MPS_REPORTS = "mps-report"

_PYTHON_RE = re.compile(r"^3\.\d{1,2}(\.\d{1,2})?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_PREFLIGHT = """\
python - <<'EOF'
import sys
import torch
hint = ("GitHub-hosted arm64 macOS runners are virtual machines without MPS support "
        "(actions/runner-images#9918): use a self-hosted Apple silicon runner "
        "(pytest-mps init-ci --runner self-hosted) or signed receipts (pytest-mps verify-receipt)")
if not torch.backends.mps.is_available():
    print(f"::error::MPS is not available on this runner. {hint}")
    sys.exit(1)
try:
    a = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    on_mps = (a.to("mps") @ a.to("mps")).cpu()
except RuntimeError as exc:
    print(f"::error::MPS is unusable on this runner ({str(exc).splitlines()[0]}). {hint}")
    sys.exit(1)
if not torch.allclose(on_mps, a @ a, rtol=1e-3):
    print(f"::error::MPS computed a wrong 8x8 product on this runner. {hint}")
    sys.exit(1)
print(f"MPS works: torch {torch.__version__}")
EOF"""

_VERSIONS = (
    'python -c "import importlib.metadata as m; '
    "print('torch=' + m.version('torch').split('+')[0]); "
    "print('diffusers=' + m.version('diffusers'))\" >> \"$GITHUB_OUTPUT\""
)


class _BadInput(UsageProblem):
    """One line for the user; exit status 2."""


def _block(command: str, indent: int) -> str:
    """``command`` as the body of a YAML ``run: |`` block at ``indent`` spaces."""
    pad = " " * indent
    return "\n".join(pad + line if line else "" for line in command.splitlines())


def _lines(*parts: str) -> str:
    """A shell command split over lines with backslashes (one option per line reads best in a log)."""
    return " \\\n  ".join(parts)


def _check_command(device: str, pipelines: Sequence[str], reports: str, html: bool) -> str:
    # pytest options travel through `pytest-mps check` as --option=value (never "--option value").
    parts = [f"pytest-mps check --device {device} " + " ".join(shlex.quote(p) for p in pipelines)]
    if device == "emulated":
        # The emulated target raises MPS's aborts as exceptions, so no crash-isolating worker is needed,
        # and checks run in this process store their CPU references (isolated workers do not).
        parts.append("--no-isolate")
    parts.append(f"--mps-references={REFERENCES}")
    parts.append(f"--mps-report-json={reports}/check.json")
    if html:
        parts.append(f"--mps-report-html={reports}/check.html")
    parts.append('--mps-report-md="$GITHUB_STEP_SUMMARY"')
    return _lines(*parts)


def _pytest_command(device: str, reports: str, html: bool) -> str:
    parts = [f"python -m pytest --mps-device={device}", f"--mps-references={REFERENCES}"]
    parts.append(f"--mps-report-json={reports}/pytest.json")
    if html:
        parts.append(f"--mps-report-html={reports}/pytest.html")
    parts.append('--mps-report-md="$GITHUB_STEP_SUMMARY"')
    return _lines(*parts)


def _steps(commands: list[tuple[str, str]], after: str) -> str:
    """Test steps. The first runs when every step before it succeeded; later ones also run after an
    earlier test step failed, as long as step ``after`` succeeded, so one failing command does not
    hide the other's results. Any failed step fails the job."""
    out = []
    for index, (name, command) in enumerate(commands):
        condition = (
            ""
            if index == 0
            else f"        if: ${{{{ !cancelled() && steps.{after}.outcome == 'success' }}}}\n"
        )
        out.append(f"      - name: {name}\n{condition}        run: |\n{_block(command, 10)}")
    return "\n".join(out)


_MPS_HEADER = """\
# precheck (Linux, CPU build of torch): MPS's rules on the emulated target. A pre-check on a stand-in,
#   never an MPS verdict. It stores the CPU references it computed for the Apple silicon job.
# mps (Apple silicon): the same checks on real MPS with those references. The Markdown report goes to
#   the job summary, the HTML and JSON reports are uploaded as the "mps-report" artifact, and a failed
#   check fails the job.
#
# GitHub-hosted arm64 macOS runners are virtual machines that GitHub documents as not supporting MPS
# (actions/runner-images#9918); the preflight step stops with that message where MPS does not work.
# Then use a self-hosted Apple silicon runner (pytest-mps init-ci --runner self-hosted), or signed
# receipts from a contributor's Mac (pytest-mps init-ci --receipt FILE)."""

_RECEIPT_HEADER = """\
# precheck (Linux, CPU build of torch): MPS's rules on the emulated target. A pre-check on a stand-in,
#   never an MPS verdict.
# receipt (Linux, no torch needed): the MPS verdict comes from a receipt signed on a contributor's Mac
#   (pytest-mps check --device mps ... --receipt FILE). It verifies only if a key in the allowed-signers
#   file signed it, the checked-out code and pipeline folders are byte for byte the ones checked, and
#   every pipeline earned the MPS badge on real MPS. Change the code, and the receipt must be signed
#   again. This is signer attestation: it says who vouches for the run, not that hardware proved it."""


def _precheck_job(
    linux: list[tuple[str, str]], checkout: str, setup: str, install: str, *, references: bool
) -> str:
    stored = f"""
      - name: Store the CPU references
        if: ${{{{ !cancelled() }}}}
        uses: actions/upload-artifact@v4
        with:
          name: mps-cpu-references
          path: {REFERENCES}/
          if-no-files-found: warn"""
    return f"""\
  precheck:
    name: Emulated MPS pre-check (Linux)
    runs-on: ubuntu-latest
    timeout-minutes: 60
    outputs:
      torch: ${{{{ steps.versions.outputs.torch }}}}
      diffusers: ${{{{ steps.versions.outputs.diffusers }}}}
    steps:
{checkout}
{setup}
      - name: Install the CPU build of torch, then the project
        id: install
        run: |
          python -m pip install --upgrade pip
          {_CPU_TORCH}
          {install}
      - name: Record the torch and Diffusers versions
        id: versions
        run: |
{_block(_VERSIONS, 10)}
{_steps(linux, after="versions")}{stored if references else ""}
      - name: Upload the pre-check reports
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: mps-precheck-report
          path: {PRECHECK_REPORTS}/
          if-no-files-found: ignore
"""


def _mps_job(mac: list[tuple[str, str]], checkout: str, setup: str, install: str, runs_on: str) -> str:
    return f"""\
  mps:
    name: Real MPS (Apple silicon)
    needs: precheck
    runs-on: {runs_on}
    timeout-minutes: 60
    env:
      TORCH_VERSION: ${{{{ needs.precheck.outputs.torch }}}}
      DIFFUSERS_VERSION: ${{{{ needs.precheck.outputs.diffusers }}}}
    steps:
{checkout}
{setup}
      - name: Install the pre-check's torch and Diffusers, then the project
        run: |
          python -m pip install --upgrade pip
          python -m pip install "torch==$TORCH_VERSION" "diffusers==$DIFFUSERS_VERSION"
          {install}
      - name: Check that this runner's MPS device works
        id: preflight
        run: |
{_block(_PREFLIGHT, 10)}
      - name: Fetch the pre-check's CPU references
        # None stored (no parity check ran) is fine: the CPU references are then computed here.
        continue-on-error: true
        uses: actions/download-artifact@v4
        with:
          name: mps-cpu-references
          path: {REFERENCES}
{_steps(mac, after="preflight")}
      - name: Upload the MPS reports (HTML and JSON)
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: mps-report
          path: {MPS_REPORTS}/
          if-no-files-found: warn
"""


def _receipt_job(receipt: str, allowed_signers: str, setup: str, *, lfs: bool) -> str:
    lfs_line = "\n          lfs: true" if lfs else ""
    verify = _lines(
        f"pytest-mps verify-receipt {shlex.quote(receipt)}",
        f"--allowed-signers {shlex.quote(allowed_signers)}",
        "--source .",
    )
    return f"""\
  receipt:
    name: Signed MPS receipt
    runs-on: ubuntu-latest
    timeout-minutes: 15
    steps:
      # The code the contributor checked and signed is the pull request's head, not GitHub's merge of it
      # with the base branch (which changes whenever the base moves).
      - uses: actions/checkout@v4
        with:
          ref: ${{{{ github.event.pull_request.head.sha || github.sha }}}}{lfs_line}
{setup}
      - name: Install pytest-mps (verifying needs neither torch nor Diffusers)
        run: python -m pip install --no-deps pytest-mps
      - name: Verify the receipt (signature, fingerprint of this checkout, real-MPS badge verdict)
        run: |
{_block(verify, 10)}
"""


def render_workflow(
    *,
    pipelines: Sequence[str] = (),
    python: str = DEFAULT_PYTHON,
    runner: str = DEFAULT_RUNNER,
    pytest: bool = True,
    install: str = _DEFAULT_INSTALL,
    lfs: bool = False,
    receipt: str | None = None,
    allowed_signers: str = DEFAULT_ALLOWED_SIGNERS,
) -> str:
    """The workflow's YAML text. ``pipelines``: folders (relative to the repository root) for
    ``pytest-mps check``; ``pytest``: also run the project's own tests; ``install``: the command that
    installs the project and pytest-mps (after torch); ``lfs``: check out Git LFS files; ``receipt``:
    instead of an Apple silicon job, verify this signed receipt against ``allowed_signers``."""
    from pytest_mps import __version__

    if not pipelines and not pytest:
        raise ValueError("nothing to run: give --pipelines or leave the project's tests on")
    runs_on = _SELF_HOSTED if runner == "self-hosted" else runner
    checkout = "      - uses: actions/checkout@v4" + ("\n        with:\n          lfs: true" if lfs else "")
    setup = f'      - uses: actions/setup-python@v5\n        with:\n          python-version: "{python}"'
    linux: list[tuple[str, str]] = []
    mac: list[tuple[str, str]] = []
    if pipelines:
        linux.append(
            (
                "pytest-mps check, emulated target (a pre-check, not an MPS verdict)",
                _check_command("emulated", pipelines, PRECHECK_REPORTS, html=False),
            )
        )
        mac.append(("pytest-mps check on real MPS", _check_command("mps", pipelines, MPS_REPORTS, html=True)))
    if pytest:
        linux.append(
            (
                "The project's tests, emulated target (a pre-check)",
                _pytest_command("emulated", PRECHECK_REPORTS, False),
            )
        )
        mac.append(("The project's tests on real MPS", _pytest_command("mps", MPS_REPORTS, True)))
    if receipt is None:
        header = _MPS_HEADER
        jobs = (
            _precheck_job(linux, checkout, setup, install, references=True)
            + "\n"
            + _mps_job(mac, checkout, setup, install, runs_on)
        )
    else:
        header = _RECEIPT_HEADER
        jobs = (
            _precheck_job(linux, checkout, setup, install, references=False)
            + "\n"
            + _receipt_job(receipt, allowed_signers, setup, lfs=lfs)
        )
    return f"""\
# Generated by `pytest-mps init-ci` (pytest-mps {__version__}); edit freely, or regenerate with --force.
#
{header}
name: MPS

on:
  push:
    branches: [main]
  pull_request:
  workflow_dispatch:

permissions:
  contents: read

jobs:
{jobs}"""


def _repository_path(option: str, text: str) -> str:
    """A path as the workflow names it: relative to the repository root, POSIX, inside it."""
    if not text.strip() or any(c in text for c in "\n\r\0"):
        raise _BadInput(f"{option} {text!r}: give a path")
    path = Path(text)
    posix = PurePosixPath(path.as_posix())
    if path.is_absolute() or ".." in posix.parts:
        raise _BadInput(
            f"{option} {text}: give a path inside the repository, relative to its root "
            "(the workflow runs in a fresh checkout)"
        )
    return posix.as_posix()


def _pipeline_path(text: str) -> str:
    """A pipeline folder as the workflow names it: relative to the repository root, POSIX, existing."""
    from pytest_mps.pipelines import PipelineLoadError, check_folder

    posix = _repository_path("--pipelines", text)
    path = Path(text)
    try:
        check_folder(path, allow_pickle=False)
    except PipelineLoadError as exc:
        raise _BadInput(f"{exc} (run pytest-mps init-ci from the repository root)") from None
    return posix


def _uses_lfs(root: Path) -> bool:
    try:
        return "filter=lfs" in (root / ".gitattributes").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``pytest-mps init-ci [--output FILE] [--pipelines PATH ...] [--python X.Y] [--runner LABEL]
    [--no-pytest] [--install CMD] [--receipt FILE [--allowed-signers FILE]] [--force]``; exit status 0
    written, 2 bad input or a file in the way."""
    parser = CommandParser(
        "init-ci",
        description="Write a GitHub Actions workflow: an emulated-MPS pre-check on Linux that stores the CPU "
        "references, then the same checks on real MPS on Apple silicon, with the Markdown report in the job "
        "summary and the HTML report as an artifact. Run it from the repository root.",
        exits="0 written, 2 bad input or a file in the way (--force overwrites).",
        epilog="example: pytest-mps init-ci --pipelines fixtures/tiny-sd fixtures/tiny-ddpm",
        error=_BadInput,
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="FILE", help=f"default {DEFAULT_OUTPUT}")
    parser.add_argument(
        "--pipelines",
        nargs="+",
        default=[],
        metavar="PATH",
        help="pipeline folders (relative to the repository root) for pytest-mps check",
    )
    parser.add_argument(
        "--python", default=DEFAULT_PYTHON, metavar="X.Y", help=f"Python version (default {DEFAULT_PYTHON})"
    )
    parser.add_argument(
        "--runner",
        default=DEFAULT_RUNNER,
        metavar="LABEL",
        help=f"the Apple silicon runner: a runs-on label (default {DEFAULT_RUNNER}), or self-hosted for "
        f"{_SELF_HOSTED}",
    )
    parser.add_argument(
        "--pytest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the project's own tests (python -m pytest) on both targets (default on)",
    )
    parser.add_argument(
        "--install",
        default=_DEFAULT_INSTALL,
        metavar="CMD",
        help="the command that installs the project and pytest-mps, after torch "
        f"(default: {_DEFAULT_INSTALL})",
    )
    parser.add_argument(
        "--receipt",
        metavar="FILE",
        help="no Apple silicon job: verify this signed receipt (pytest-mps check --receipt FILE, committed "
        "with its FILE.sig) in a Linux job instead",
    )
    parser.add_argument(
        "--allowed-signers",
        default=DEFAULT_ALLOWED_SIGNERS,
        metavar="FILE",
        help="with --receipt: the OpenSSH allowed-signers file of trusted keys "
        f"(default {DEFAULT_ALLOWED_SIGNERS})",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if not _PYTHON_RE.match(args.python):
            raise _BadInput(f"--python {args.python!r}: give a Python 3 version such as 3.11")
        if args.runner != "self-hosted" and not _LABEL_RE.match(args.runner):
            raise _BadInput(
                f"--runner {args.runner!r}: give one runner label such as macos-14, or self-hosted"
            )
        if not args.install.strip() or any(c in args.install for c in "\n\r"):
            raise _BadInput("--install: give one shell command line")
        if not args.pipelines and not args.pytest:
            raise _BadInput("nothing to run: give --pipelines PATH ..., or drop --no-pytest")
        pipelines = [_pipeline_path(p) for p in args.pipelines]
        receipt = _repository_path("--receipt", args.receipt) if args.receipt is not None else None
        allowed = _repository_path("--allowed-signers", args.allowed_signers)
        output = Path(args.output)
        if output.is_dir():
            raise _BadInput(f"{output} is a folder; give the workflow file's path with --output")
        if output.exists() and not args.force:
            raise _BadInput(f"{output} exists; pass --force to overwrite it")
        text = render_workflow(
            pipelines=pipelines,
            python=args.python,
            runner=args.runner,
            pytest=args.pytest,
            install=args.install.strip(),
            lfs=_uses_lfs(Path.cwd()),
            receipt=receipt,
            allowed_signers=allowed,
        )
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except _BadInput as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    from pytest_mps.reports.atomic import atomic_write

    try:
        atomic_write(output, text)
    except OSError as exc:
        print(f"{_PROG}: error: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    jobs = " and ".join(
        filter(None, ["pytest-mps check" if pipelines else "", "your tests" if args.pytest else ""])
    )
    if receipt is None:
        print(
            f"wrote {output}: {jobs} on the emulated target (Linux), then on real MPS ({args.runner}). "
            "GitHub-hosted macOS runners may lack working MPS: see the note at the top of the file."
        )
    else:
        print(
            f"wrote {output}: {jobs} on the emulated target (Linux), and a job that verifies {receipt} "
            f"against {allowed}; commit {allowed} with one 'principal ssh-ed25519 AAAA...' line per "
            "trusted key"
        )
    return 0
