"""The ``pytest-mps`` command line (also ``python -m pytest_mps``).

- ``pytest-mps check PATH [PATH ...] [options] [-- pytest options]``: run the bundled compatibility
  suite on each pipeline folder and print the verdict table. The suite is pytest underneath, so
  pytest's own options (``-k``, ``-x``, ``--junitxml=FILE``) pass through. Its options are the plugin's
  (:data:`pytest_mps.options.OPTIONS`), under shorter names, with the same rules.
- ``pytest-mps merge ...``: :mod:`pytest_mps.merge`.

Bad input (a missing folder, a folder that is no Diffusers pipeline, an unknown device, check or
scheduler, a value that breaks an option's rule) is one line on stderr and exit status 2, never a
traceback. Otherwise the exit status is pytest's: 0 only when no check failed on the target.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_mps.command_line import CommandParser, UsageProblem
from pytest_mps.options import OPTIONS, Option

__all__ = ["main"]

USAGE_ERROR = 2

_TOP_HELP = """\
usage: pytest-mps COMMAND ...

Tell whether Diffusers pipelines work on Apple's MPS backend.

commands:
  check PATH [PATH ...]        run the compatibility suite on pipeline folders and print the verdict table
  merge REPORT.json ...        join JSON reports of CI shards or runners into one report
  plan PATH                    the largest sizes under MPS's 2**32-byte buffer limit, and peak memory per Mac
  init-ci                      write a GitHub Actions workflow: emulated pre-check on Linux, real MPS on a Mac
  sign-receipt REPORT.json     sign a run's verdict with your SSH key (MPS evidence from your Mac)
  verify-receipt RECEIPT.json  check a signed receipt in CI: only an unchanged real-MPS badge run passes

Try it on the bundled tiny pipelines:
  pytest-mps check fixtures/tiny-sd fixtures/tiny-ddpm fixtures/tiny-dit

options:
  -h, --help     show this help
  --version      show pytest-mps's version

Each command has its own help: pytest-mps COMMAND --help
"""

_CHECK_EPILOG = """\
pytest options pass through: write them as --option=value (--junitxml=report.xml, -kparity), or put
them after --: pytest-mps check fixtures/tiny-sd -- -k parity -x. Flags such as -x, -q, -v also work
as they are.

Only a real MPS target can earn the MPS badge; cpu, cuda, xpu and emulated runs are pre-checks and
say so everywhere."""

#: pytest options that take their value as the next word (anything else is taken for a flag).
_PYTEST_VALUED = frozenset(
    (
        "-k", "-m", "-p", "-c", "-o", "-W", "-r", "-n", "--tb", "--junitxml", "--junit-xml", "--junit-prefix",
        "--maxfail", "--durations", "--basetemp", "--rootdir", "--confcutdir", "--deselect", "--ignore",
        "--log-level", "--log-file", "--capture", "--color", "--dist", "--override-ini", "--config-file",
    )
)  # fmt: skip


class _BadInput(UsageProblem):
    """One line for the user; exit status 2."""


def _check_options() -> list[Option]:
    return [opt for opt in OPTIONS if opt.cli]


def _valued_flags() -> tuple[str, ...]:
    return tuple(opt.cli for opt in _check_options() if opt.kind != "flag" and opt.cli)


def _flags() -> tuple[str, ...]:
    names = ["-h", "--help"]
    for opt in _check_options():
        if opt.kind == "flag" and opt.cli:
            names.append(opt.cli)
            if opt.negatable:
                names.append("--no-" + opt.cli[2:])
    return tuple(names)


def _pytest_valued() -> frozenset[str]:
    """pytest options (its own and pytest-mps's ``--mps-*``) that take their value as the next word."""
    return _PYTEST_VALUED | {opt.flag for opt in OPTIONS if opt.kind != "flag"}


def _split(tokens: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Separate our options, the pipeline folders and the words meant for pytest."""
    valued, flags, pytest_valued = _valued_flags(), _flags(), _pytest_valued()
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
        if name in valued:
            ours.append(token)
            if "=" not in token and following is not None:
                ours.append(following)
                i += 1
        elif token in flags:
            ours.append(token)
        elif token.startswith("-") and token != "-":
            passthrough.append(token)
            if "=" not in token and name in pytest_valued and following is not None:
                passthrough.append(following)
                i += 1
        else:
            paths.append(token)
        i += 1
    return ours, paths, passthrough


#: ``check`` defaults that differ from a plain pytest run's.
_CHECK_DEFAULTS = {"isolate": True}


def _check_parser() -> CommandParser:
    parser = CommandParser(
        "check",
        usage="pytest-mps check PATH [PATH ...] [options] [-- pytest options]",
        description="Run the MPS compatibility suite on Diffusers pipeline folders and print the verdict.",
        epilog=_CHECK_EPILOG,
        exits="0 when no check failed on the target, 1 when one did, 2 for bad input.",
        error=_BadInput,
    )
    for opt in _check_options():
        assert opt.cli is not None
        default = _CHECK_DEFAULTS.get(opt.name, opt.default)
        if opt.kind == "flag":
            action: type[argparse.Action] | str = (
                argparse.BooleanOptionalAction if opt.negatable else "store_true"
            )
            parser.add_argument(opt.cli, dest=opt.name, action=action, default=default, help=opt.help)
        else:
            help_text = opt.help
            if opt.name == "device":
                help_text = (
                    "target: auto, mps, emulated, cuda, xpu or cpu (default auto: mps where available, else "
                    "emulated where available, else cpu; anything but mps is a stand-in)"
                )
            parser.add_argument(
                opt.cli, dest=opt.name, type=opt.type, default=default, metavar=opt.metavar, help=help_text
            )
    return parser


def _resolve_device(requested: str) -> str:
    from pytest_mps.suite.settings import default_target_name
    from pytest_mps.target import TargetError, resolve_target

    if requested == "auto":
        return default_target_name()
    try:
        return resolve_target(requested).name
    except TargetError as exc:
        raise _BadInput(str(exc).replace("--mps-device", "--device")) from None


def _checked_by_worker(folder: Path, allow_pickle: bool, timeout: float | None) -> bool:
    """Run the deep check of ``folder`` in the early worker (it imports torch and Diffusers anyway; this
    process then never does): True when it answered valid; raises the one-line error when it answered
    invalid; False when there is no worker or it could not answer (the check then runs here)."""
    if "pytest_mps.isolation.worker_process" not in sys.modules:
        return False
    from pytest_mps.isolation.worker_process import early_worker
    from pytest_mps.pipelines import PipelineLoadError

    worker = early_worker()
    if worker is None:
        return False
    got = worker.request(
        {"op": "validate", "path": str(folder), "allow_pickle": allow_pickle},
        timeout=timeout,
        doing="validate",
    )
    if isinstance(got, dict) and isinstance(got.get("invalid"), str):
        raise PipelineLoadError(got["invalid"])
    return isinstance(got, dict) and got.get("valid") is True


def _validate_paths(
    options: argparse.Namespace, paths: list[str], passthrough: list[str], *, deep: bool
) -> None:
    """Refuse a folder that cannot be a safe, loadable pipeline: the quick checks (files, formats,
    safetensors only), or with ``deep`` the deep one (every class resolved, every model built on the
    meta device against its weights), in the early worker when there is one."""
    from pytest_mps.pipelines import PipelineLoadError, check_folder

    if not paths:
        raise _BadInput("give at least one pipeline folder, e.g. pytest-mps check fixtures/tiny-sd")
    timeout = options.timeout or None
    for path in paths:
        folder = Path(path).expanduser()
        try:
            if not deep:
                check_folder(folder, allow_pickle=options.allow_pickle)
            elif not _checked_by_worker(folder, options.allow_pickle, timeout):
                check_folder(folder, allow_pickle=options.allow_pickle, verify_safetensors=True, deep=True)
        except PipelineLoadError as exc:
            hint = ""
            if passthrough and not Path(path).exists():
                hint = " (if it is the value of a pytest option, write --option=value or put it after --)"
            raise _BadInput(f"{exc}{hint}") from None


def plugin_arguments() -> list[str]:
    """What makes pytest load the plugin where it would not by itself: ``-p pytest_mps.plugin`` when
    pytest-mps runs from a checkout (``PYTHONPATH``) without its installed ``mps`` entry point, ``-p mps``
    when ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` is set; nothing otherwise."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        points = distribution("pytest-mps").entry_points
    except PackageNotFoundError:
        points = ()
    if not any(ep.group == "pytest11" and ep.name == "mps" for ep in points):
        return ["-p", "pytest_mps.plugin"]
    return ["-p", "mps"] if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") else []


def pytest_arguments(options: argparse.Namespace, paths: Sequence[str], device: str) -> list[str]:
    """The pytest command line that runs the bundled suite for these options: each option's plugin
    flag with the value ``check`` parsed."""
    import pytest_mps.suite

    suite = Path(pytest_mps.suite.__file__).resolve().parent
    args = [
        str(suite / "test_compat.py"),
        # The suite runs the same everywhere: no project ini, conftest or cache; short test ids. This
        # command prints its own header (pytest's would name the empty config file and the suite folder).
        "-c",
        os.devnull,
        "--rootdir",
        str(suite),
        "--no-header",
        # Libraries' own deprecations are not the pipeline's MPS story; UserWarnings (MPS fallbacks) stay.
        "-W",
        "ignore::DeprecationWarning",
        "-W",
        "ignore::PendingDeprecationWarning",
        # This command imported pytest_mps before pytest could mark the plugin for assertion rewriting.
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        "-v",
        *plugin_arguments(),
        "--mps-pipelines",
        *(str(Path(p).expanduser().resolve()) for p in paths),
    ]
    if options.explore:
        # Hypothesis's example database lives in pytest's cache, here in the working folder: a failing
        # input found once replays first next time.
        args += ["-o", f"cache_dir={Path.cwd() / '.pytest_cache'}"]
    else:
        args += ["-p", "no:cacheprovider"]
    for opt in _check_options():
        value = device if opt.name == "device" else getattr(options, opt.name)
        if opt.kind == "flag":
            if value:
                args.append(opt.flag)
            elif opt.negatable:
                args.append("--no-" + opt.flag[2:])
        elif value is not None:
            args += [opt.flag, _as_text(value)]
    return args


def _as_text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _print_plan(options: argparse.Namespace, paths: Sequence[str], device: str) -> None:
    """The run's header: the environment, then what the suite will check and how."""
    from pytest_mps.environment import detect_environment
    from pytest_mps.options import Settings
    from pytest_mps.plugin.suite import plan_lines
    from pytest_mps.suite.settings import pipeline_specs
    from pytest_mps.target import resolve_target

    settings = Settings(
        **{opt.name: getattr(options, opt.name) for opt in _check_options() if opt.name != "device"}
    )
    labels = [spec.label for spec in pipeline_specs(paths)]
    print(f"mps: {detect_environment().summary()}")
    for line in plan_lines(labels, resolve_target(device), settings):
        print(line)
    sys.stdout.flush()


def _discard_early_worker() -> None:
    if "pytest_mps.isolation.worker_process" in sys.modules:
        from pytest_mps.isolation.worker_process import discard_early_pool

        discard_early_pool()


def check(argv: Sequence[str]) -> int:
    """``pytest-mps check``: validate, then run the suite through pytest; returns the exit status."""
    ours, paths, passthrough = _split(argv)
    parser = _check_parser()
    try:
        try:
            options = parser.parse_args(ours)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if options.isolate and paths:  # its imports overlap the validation's
            from pytest_mps.isolation.worker_process import start_early_worker

            start_early_worker()
        _validate_paths(options, paths, passthrough, deep=False)
        # Before the deep check, which waits for the worker's imports: this process's own import of
        # torch, where the device needs one (cuda, xpu), overlaps them.
        device = _resolve_device(options.device)
        _validate_paths(options, paths, passthrough, deep=True)
    except _BadInput as exc:
        _discard_early_worker()
        print(f"pytest-mps check: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    _print_plan(options, paths, device)
    import pytest

    try:
        status = int(pytest.main([*pytest_arguments(options, paths, device), *passthrough]))
    finally:
        _discard_early_worker()  # a run that never needed it
    # pytest's usage error (a bad option it parsed, a receipt that could not be signed) is bad input here.
    return USAGE_ERROR if status == int(pytest.ExitCode.USAGE_ERROR) else status


def _delegate(module: str) -> Callable[[Sequence[str]], int]:
    """A command whose ``main(argv)`` lives in ``module`` (imported when the command runs)."""

    def run(argv: Sequence[str]) -> int:
        import importlib

        return int(importlib.import_module(module).main(list(argv)) or 0)

    return run


#: The commands: name -> what runs it.
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "check": check,
    "merge": _delegate("pytest_mps.merge"),
    "plan": _delegate("pytest_mps.plan_cli"),
    "init-ci": _delegate("pytest_mps.ci_workflow"),
    "sign-receipt": _delegate("pytest_mps.receipts.sign"),
    "verify-receipt": _delegate("pytest_mps.receipts.verify"),
}


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
    command = COMMANDS.get(args[0])
    if command is None:
        print(
            f"pytest-mps: error: unknown command {args[0]!r}; choose {', '.join(COMMANDS)} "
            "(pytest-mps --help)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    return command(args[1:])
