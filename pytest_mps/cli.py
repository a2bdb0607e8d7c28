"""The ``pytest-mps`` command line (also ``python -m pytest_mps``).

- ``pytest-mps check PATH [PATH ...] [options] [-- pytest options]``: run the bundled compatibility
  suite on each pipeline folder and print the verdict table. The suite is pytest underneath, so
  pytest's own options (``-k``, ``-x``, ``--junitxml=FILE``) pass through.
- ``pytest-mps merge ...``: handled by ``pytest_mps.merge``.

Bad input (a missing folder, a folder that is no Diffusers pipeline, an unknown device, check or
scheduler) is one line on stderr and exit status 2, never a traceback. Otherwise the exit status is
pytest's: 0 only when every pipeline passed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

USAGE_ERROR = 2

_TOP_HELP = """\
usage: pytest-mps COMMAND ...

Tell whether Diffusers pipelines work on Apple's MPS backend.

commands:
  check PATH [PATH ...]   run the compatibility suite on pipeline folders and print the verdict table
  merge ...               merge pytest-mps results (see pytest-mps merge --help)

Try it on the bundled tiny pipelines:
  pytest-mps check fixtures/tiny-sd fixtures/tiny-ddpm fixtures/tiny-dit

options:
  -h, --help     show this help
  --version      show pytest-mps's version
"""

_CHECK_EPILOG = """\
pytest options pass through: write them as --option=value (--junitxml=report.xml, -kparity), or put
them after --: pytest-mps check fixtures/tiny-sd -- -k parity -x. Flags such as -x, -q, -v also work
as they are. Exit status: 0 when every pipeline passed, 1 when a check failed, 2 for bad input.

Only a real MPS target can earn the MPS badge; cpu, cuda, xpu and emulated runs are pre-checks and
say so everywhere.
"""

#: Our options that take a value, and those that do not.
_VALUED = ("--device", "--steps", "--size", "--schedulers", "--checks", "--timeout")
_FLAGS = ("--isolate", "--no-isolate", "--allow-pickle", "-h", "--help")
#: pytest options that take their value as the next word (anything else is taken for a flag).
_PYTEST_VALUED = frozenset(
    (
        "-k",
        "-m",
        "-p",
        "-c",
        "-o",
        "-W",
        "-r",
        "-n",
        "--tb",
        "--junitxml",
        "--junit-xml",
        "--junit-prefix",
        "--maxfail",
        "--durations",
        "--basetemp",
        "--rootdir",
        "--confcutdir",
        "--deselect",
        "--ignore",
        "--log-level",
        "--log-file",
        "--capture",
        "--color",
        "--dist",
        "--override-ini",
        "--config-file",
        "--mps-atol",
        "--mps-rtol",
    )
)


class _BadInput(Exception):
    """One line for the user; exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) through :class:`_BadInput`."""

    def error(self, message: str) -> NoReturn:
        raise _BadInput(message)


def _split(tokens: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Separate our options, the pipeline folders and the words meant for pytest."""
    ours: list[str] = []
    paths: list[str] = []
    passthrough: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name = token.split("=", 1)[0]
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token == "--":
            passthrough += tokens[i + 1 :]
            break
        if name in _VALUED:
            ours.append(token)
            if "=" not in token and following is not None:
                ours.append(following)
                i += 1
        elif token in _FLAGS:
            ours.append(token)
        elif token.startswith("-") and token != "-":
            passthrough.append(token)
            if "=" not in token and name in _PYTEST_VALUED and following is not None:
                passthrough.append(following)
                i += 1
        else:
            paths.append(token)
        i += 1
    return ours, paths, passthrough


def _check_parser() -> _Parser:
    from pytest_mps.suite import CHECKS, DEFAULT_TIMEOUT_S
    from pytest_mps.target import TARGET_CHOICES

    parser = _Parser(
        prog="pytest-mps check",
        usage="pytest-mps check PATH [PATH ...] [options] [-- pytest options]",
        description="Run the MPS compatibility suite on Diffusers pipeline folders and print the verdict.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device",
        default="auto",
        metavar="TARGET",
        help=f"target: {', '.join(TARGET_CHOICES)} (default auto: mps where available, else emulated where "
        "available, else cpu; anything but mps is a stand-in)",
    )
    parser.add_argument(
        "--steps", type=int, default=2, metavar="N", help="inference steps per call (default 2)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="PX",
        help="output side in pixels (default: the smallest valid; the speed check uses the pipeline's own)",
    )
    parser.add_argument(
        "--schedulers",
        default="compatible",
        metavar="LIST",
        help="schedulers to sweep: 'compatible' (default) or comma-separated class names",
    )
    parser.add_argument(
        "--checks",
        default=None,
        metavar="LIST",
        help=f"comma-separated checks (default all: {', '.join(CHECKS)})",
    )
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each pipeline's checks in a worker process, so a crash or a hang fails one check "
        "(default on)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="kill a check that runs longer, as hung "
        f"(isolation only; default {DEFAULT_TIMEOUT_S:g}; 0: none)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickled .bin weights too (unpickling can run code: only for folders you trust)",
    )
    return parser


def _resolve_device(requested: str) -> str:
    from pytest_mps.suite import default_target_name
    from pytest_mps.target import TARGET_CHOICES, TargetError, resolve_target

    value = requested.strip().lower()
    if value not in TARGET_CHOICES:
        raise _BadInput(f"unknown device {requested!r}; choose one of {', '.join(TARGET_CHOICES)}")
    if value == "auto":
        return default_target_name()
    try:
        return resolve_target(value).name
    except TargetError as exc:
        raise _BadInput(str(exc).replace("--mps-device", "--device")) from None


def _validate(options: argparse.Namespace, paths: list[str], passthrough: list[str]) -> None:
    from pytest_mps.pipelines import PipelineLoadError, check_folder
    from pytest_mps.suite import CHECKS, split_list, unknown_checks, validate_schedulers

    if not paths:
        raise _BadInput("give at least one pipeline folder, e.g. pytest-mps check fixtures/tiny-sd")
    for path in paths:
        try:
            check_folder(
                Path(path).expanduser(), allow_pickle=options.allow_pickle, verify_safetensors=True, deep=True
            )
        except PipelineLoadError as exc:
            hint = ""
            if passthrough and not Path(path).exists():
                hint = " (if it is the value of a pytest option, write --option=value or put it after --)"
            raise _BadInput(f"{exc}{hint}") from None
    unknown = unknown_checks(split_list(options.checks))
    if unknown:
        raise _BadInput(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    if options.steps < 1:
        raise _BadInput(f"--steps {options.steps}: needs at least 1 step")
    if options.size is not None and options.size < 8:
        raise _BadInput(f"--size {options.size}: give a side of at least 8 pixels")
    if options.timeout < 0:
        raise _BadInput(f"--timeout {options.timeout:g}: give seconds, or 0 for no limit")
    if options.schedulers.strip() != "compatible":
        try:
            validate_schedulers(split_list(options.schedulers))
        except ValueError as exc:
            raise _BadInput(str(exc)) from None


def pytest_arguments(options: argparse.Namespace, paths: Sequence[str], device: str) -> list[str]:
    """The pytest command line that runs the bundled suite for these options."""
    import pytest_mps.suite

    suite = Path(pytest_mps.suite.__file__).resolve().parent
    args = [
        str(suite / "test_compat.py"),
        "-p",
        "pytest_mps.check_plugin",
        # The suite runs the same everywhere: no project ini, conftest or cache; short test ids.
        "-c",
        os.devnull,
        "--rootdir",
        str(suite),
        "-p",
        "no:cacheprovider",
        # Libraries' own deprecations are not the pipeline's MPS story; UserWarnings (MPS fallbacks) stay.
        "-W",
        "ignore::DeprecationWarning",
        "-W",
        "ignore::PendingDeprecationWarning",
        "-v",
        "--mps-pipelines",
        *(str(Path(p).expanduser().resolve()) for p in paths),
        "--mps-device",
        device,
        "--mps-steps",
        str(options.steps),
        "--mps-schedulers",
        options.schedulers,
        "--mps-timeout",
        f"{options.timeout:g}",
        "--mps-isolate" if options.isolate else "--no-mps-isolate",
    ]
    if options.size is not None:
        args += ["--mps-size", str(options.size)]
    if options.checks:
        args += ["--mps-checks", options.checks]
    if options.allow_pickle:
        args.append("--mps-allow-pickle")
    return args


def check(argv: Sequence[str]) -> int:
    """``pytest-mps check``: validate, then run the suite through pytest; returns the exit status."""
    ours, paths, passthrough = _split(argv)
    parser = _check_parser()
    try:
        try:
            options = parser.parse_args(ours)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        _validate(options, paths, passthrough)
        device = _resolve_device(options.device)
    except _BadInput as exc:
        print(f"pytest-mps check: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    import pytest

    return int(pytest.main([*pytest_arguments(options, paths, device), *passthrough]))


def merge(argv: Sequence[str]) -> int:
    """``pytest-mps merge``: delegated to ``pytest_mps.merge.main``."""
    import importlib.util

    if importlib.util.find_spec("pytest_mps.merge") is None:
        print(
            "pytest-mps merge: error: this installation has no pytest_mps.merge module; upgrade pytest-mps",
            file=sys.stderr,
        )
        return USAGE_ERROR
    from pytest_mps import merge as merge_module

    return int(merge_module.main(list(argv)) or 0)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pytest-mps`` command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_TOP_HELP, end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else USAGE_ERROR
    if args[0] == "--version":
        from pytest_mps import __version__

        print(f"pytest-mps {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "check":
        return check(rest)
    if command == "merge":
        return merge(rest)
    print(
        f"pytest-mps: error: unknown command {command!r}; choose check or merge (pytest-mps --help)",
        file=sys.stderr,
    )
    return USAGE_ERROR
