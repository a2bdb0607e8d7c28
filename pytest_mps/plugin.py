"""pytest-mps's pytest entry point: options, ini keys, markers, the header line and fixtures.

This module is imported at every pytest start-up, so it imports nothing heavy: torch, diffusers and
numpy are imported inside the fixtures and checks that need them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.context import CheckContext, using_context
from pytest_mps.environment import MPSEnvironment, detect_environment
from pytest_mps.gating import decide
from pytest_mps.markers import MARKER_LINES, MarkerError, MpsTolerance, Parsed, parse_marker
from pytest_mps.target import (
    ENV_VARIABLE,
    TARGET_CHOICES,
    Target,
    TargetError,
    requested_from,
    resolve_target,
)

if TYPE_CHECKING:
    import torch

    from pytest_mps.pipelines import PipelineCache
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult

__all__ = ["MPSSession", "session_of"]

# The compatibility suite (pytest-mps check, crash isolation) and the reports/reference store are
# plugins of their own, loaded with this one; both are import-light.
pytest_plugins = ["pytest_mps.check_plugin", "pytest_mps.report_plugin"]


class MPSSession:
    """The plugin's per-session state: the requested target, resolved on first need, and the
    environment. Lives in ``config.stash``; nothing is kept in module globals."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.requested = requested_from(config.getoption("mps_device"), config.getini("mps_device"))
        self._target: Target | None = None
        self._environment: MPSEnvironment | None = None
        self.ini_tolerance = _ini_tolerance(config)
        self.results: list[CheckResult] = []
        self._pipelines: PipelineCache | None = None
        self._references: ReferenceCache | None = None
        self._emulation: Any = None

    def start(self) -> None:
        """Enter the emulated device when it is the target: emulated tensors must never meet torch's
        C++ kernels outside it, so it spans the whole session."""
        if self._target is not None and self._target.name == "emulated" and self._emulation is None:
            from pytest_mps.emulated_target import start_emulation

            self._emulation = start_emulation()

    @property
    def emulation(self) -> Any:
        """The session's active ``EmulatedMPS``, or None."""
        return self._emulation

    def emulation_notes(self) -> list[str]:
        """Warnings and CPU fallbacks the emulated device recorded (they do not raise on a Mac
        either, but cost speed or portability), one line each, repeats folded."""
        if self._emulation is None:
            return []
        lines: dict[str, int] = {}
        for finding in self._emulation.findings:
            if finding.severity in ("warning", "fallback"):
                where = " in ".join(p for p in (finding.module, finding.source) if p) or "unknown location"
                line = f"{finding.severity}: {finding.kind} {finding.op} at {where}"
                lines[line] = lines.get(line, 0) + getattr(finding, "count", 1)
        return [f"{line} (x{count})" if count > 1 else line for line, count in lines.items()]

    def stop(self) -> None:
        """Drop cached pipelines and leave the emulated device, restoring torch as it was."""
        if self._pipelines is not None:
            self._pipelines.clear()
        if self._emulation is not None:
            emulation, self._emulation = self._emulation, None
            emulation.__exit__(None, None, None)

    @property
    def pipelines(self) -> PipelineCache:
        """Pipelines loaded by ``mps_pipeline``, shared across the session."""
        if self._pipelines is None:
            from pytest_mps.pipelines import PipelineCache

            self._pipelines = PipelineCache()
        return self._pipelines

    @property
    def references(self) -> ReferenceCache:
        """CPU references shared by the session's checks."""
        if self._references is None:
            from pytest_mps.references import ReferenceCache

            self._references = ReferenceCache()
        return self._references

    def record(self, item: pytest.Item | None, result: CheckResult) -> None:
        """Keep a check's result for the session table and put its figures in the test's report
        properties (JUnit XML, pytest-xdist)."""
        self.results.append(result)
        if item is not None:
            for name, value in _result_properties(result):
                item.user_properties.append((name, value))

    def validate(self) -> None:
        """Reject bad target names at once; resolve explicit targets eagerly so their errors are
        usage errors rather than failures deep inside a test."""
        if self.requested.strip().lower() not in TARGET_CHOICES:
            resolve_target(self.requested)  # raises TargetError with the list of choices
        if self.requested.strip().lower() not in ("auto", "cpu"):
            self.target  # noqa: B018 - resolving is the point: it raises TargetError early

    @property
    def environment(self) -> MPSEnvironment:
        """The full environment (imports torch on macOS to ask MPS)."""
        if self._environment is None or not self._environment.probed:
            self._environment = detect_environment(probe_torch=True)
        return self._environment

    def cheap_environment(self) -> MPSEnvironment:
        """The environment without importing torch (for the header)."""
        return self._environment or detect_environment()

    @property
    def target(self) -> Target:
        """The resolved target (``auto`` is resolved here, on first need)."""
        if self._target is None:
            self._target = resolve_target(self.requested, environment=lambda: self.environment)
        return self._target

    def target_if_cheap(self) -> Target | None:
        """The target, unless resolving it now would import torch for nothing but the header."""
        if self._target is not None:
            return self._target
        env = self.cheap_environment()
        if self.requested == "cpu" or env.probed:
            return self.target
        return None


def _ini_tolerance(config: pytest.Config) -> dict[str, float]:
    from pytest_mps.tolerances import INI_KEYS

    values = {}
    for key, name in INI_KEYS.items():
        raw = str(config.getini(key) or "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise pytest.UsageError(f"ini {key} = {raw!r} is not a number; write e.g. {key} = 1e-3") from None
        if not math.isfinite(value) or value < 0:
            raise pytest.UsageError(f"ini {key} = {raw!r} must be a finite, non-negative number")
        values[name] = value
    return values


def _result_properties(result: CheckResult) -> list[tuple[str, object]]:
    import json

    prefix = f"mps:{result.check}"
    props: list[tuple[str, object]] = [
        (f"{prefix}:outcome", result.outcome),
        (f"{prefix}:target", result.target),
    ]
    for label, comparison in result.comparisons.items():
        tag = label.replace(" ", "_")
        props.append((f"{prefix}:{tag}:max_abs", comparison.max_abs))
        props.append((f"{prefix}:{tag}:cosine_distance", comparison.cosine_distance))
    props.append(("pytest_mps_result", json.dumps(result.to_dict(), default=str)))
    return props


_SESSION_KEY = pytest.StashKey[MPSSession]()
_PARSED_KEY = pytest.StashKey[tuple[Parsed, ...]]()


def session_of(config: pytest.Config) -> MPSSession:
    """The :class:`MPSSession` of a pytest run (for other pytest-mps modules and conftest files)."""
    return config.stash[_SESSION_KEY]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mps", "pytest-mps: Diffusers pipelines on Apple's MPS backend")
    group.addoption(
        "--mps-device",
        dest="mps_device",
        default=None,
        choices=TARGET_CHOICES,
        metavar="TARGET",
        help=(
            "target device: auto (default: mps where available, else none), mps, emulated, cuda, xpu "
            f"or cpu. Anything but mps is a stand-in. Also ini mps_device and ${ENV_VARIABLE}."
        ),
    )
    parser.addini("mps_device", "default target device for --mps-device", default="")
    parser.addini("mps_atol", "default absolute tolerance of the parity checks", default="")
    parser.addini("mps_rtol", "default relative tolerance of the parity checks", default="")
    parser.addini("mps_max_cosine_distance", "default cosine-distance limit of the parity checks", default="")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKER_LINES.values():
        config.addinivalue_line("markers", line)
    try:
        session = MPSSession(config)
        session.validate()
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SESSION_KEY] = session


def pytest_sessionstart(session: pytest.Session) -> None:
    session_of(session.config).start()


def pytest_unconfigure(config: pytest.Config) -> None:
    mps_session = config.stash.get(_SESSION_KEY, None)
    if mps_session is not None:
        mps_session.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """An emulated Metal abort (a buffer of 2**32 bytes or more) is a crash on a Mac: say so."""
    report = yield
    if call.excinfo is not None and call.excinfo.type.__name__ == "MPSAbortError":
        text = str(call.excinfo.value).strip().splitlines()[0]
        report.sections.append(
            ("pytest-mps crash", f"CRASH: on a Mac this aborts the whole process (SIGABRT): {text}")
        )
        report.user_properties.append(("mps:crash", text))
    return report


def pytest_report_header(config: pytest.Config) -> str:
    session = session_of(config)
    target = session.target_if_cheap()
    if target is None:
        target_text = f"target {session.requested} (resolved on first use)"
    elif target.available:
        target_text = f"target {target.label}"
    else:
        target_text = "target none"
    return f"mps: {target_text} | {session.cheap_environment().summary()}"


def _parse_item_markers(item: pytest.Item) -> tuple[Parsed, ...]:
    parsed: list[Parsed] = []
    for mark in item.iter_markers():
        if mark.name in MARKER_LINES:
            parsed.append(parse_marker(mark.name, mark.args, mark.kwargs))
    return tuple(parsed)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Parse every collected test's pytest-mps markers here, so a malformed marker is a collection
    error that names the test, not a failure at run time."""
    report = yield
    if report.passed and report.result:
        problems = []
        for node in report.result:
            if isinstance(node, pytest.Item):
                try:
                    node.stash[_PARSED_KEY] = _parse_item_markers(node)
                except MarkerError as exc:
                    problems.append(f"{node.nodeid}: {exc}")
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    parsed = item.stash.get(_PARSED_KEY, None)
    if parsed is None:  # items made outside normal collection
        parsed = _parse_item_markers(item)
    if not parsed:
        return
    session = session_of(item.config)
    decision = decide(parsed, session.target, session.environment)
    if decision.skip_reason:
        # A skip mark (evaluated by pytest's own skipping plugin right after this hook) reports the
        # test's location, not this file's.
        item.add_marker(pytest.mark.skip(reason=decision.skip_reason))
        return
    if decision.xfail is not None:
        mark = decision.xfail
        reason = mark.reason or f"expected to fail on {session.target.label}"
        kwargs: dict[str, Any] = {"reason": f"[xfail_mps] {reason}", "strict": mark.strict}
        if mark.raises is not None:
            kwargs["raises"] = mark.raises
        item.add_marker(pytest.mark.xfail(**kwargs))


@pytest.fixture(scope="session")
def mps_environment(request: pytest.FixtureRequest) -> MPSEnvironment:
    """This machine's MPS facts (:class:`pytest_mps.MPSEnvironment`): versions, memory, and why MPS
    is unusable when it is."""
    return session_of(request.config).environment


@pytest.fixture(scope="session")
def mps_target(request: pytest.FixtureRequest) -> Target:
    """The session's resolved target device (:class:`pytest_mps.Target`); may be ``none``."""
    return session_of(request.config).target


@pytest.fixture
def mps_device(mps_target: Target) -> Iterator[torch.device]:
    """A ``torch.device`` for the target; skips the test (with the reason) when there is none."""
    if not mps_target.available:
        pytest.skip(f"needs an MPS target: {mps_target.reason}")
    yield mps_target.torch_device()


def _context_for(item: pytest.Item) -> CheckContext:
    session = session_of(item.config)
    parsed = item.stash.get(_PARSED_KEY, ())
    marker = next((m.values for m in parsed if isinstance(m, MpsTolerance)), {})
    return CheckContext(
        target=session.target,
        marker_tolerance=marker,
        ini_tolerance=session.ini_tolerance,
        references=session.references,
        record=lambda result: session.record(item, result),
        nodeid=item.nodeid,
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Checks called by the test see its target, tolerances and the session's references."""
    with using_context(lambda: _context_for(item)):
        return (yield)


_SLICING_CHOICES = ("auto", "on", "off")


@pytest.fixture
def mps_pipeline(request: pytest.FixtureRequest, mps_target: Target) -> Iterator[Any]:
    """A factory: ``mps_pipeline(source, *, pipeline_cls=None, torch_dtype=None,
    attention_slicing="auto", warmup="auto", **from_pretrained_kwargs)`` returns the pipeline on the
    target, in eval mode, without progress bars.

    ``source`` is a local pipeline folder, a hub id already in the local cache, a ``DiffusionPipeline``
    or a zero-argument callable. ``attention_slicing="auto"`` enables slicing on real MPS with under
    64 GB of memory and ``warmup="auto"`` runs a 1-step pass on torch < 2.0 with real MPS (the Diffusers
    MPS guide's advice); both take "on"/"off". Loading happens once per session for the same
    arguments; each test gets the pipeline restored to its loaded state, and a test that changes its
    weights (dtype, device) makes the next one load afresh. Teardown frees target memory.
    """
    session = session_of(request.config)
    used: list[Any] = []

    def factory(
        source: Any,
        *,
        pipeline_cls: Any = None,
        torch_dtype: Any = None,
        attention_slicing: str = "auto",
        warmup: str = "auto",
        **from_pretrained_kwargs: Any,
    ) -> Any:
        from pytest_mps.fixture_pipeline import build_key, load_for_target

        if not mps_target.available:
            pytest.skip(f"needs an MPS target: {mps_target.reason}")
        for name, value in (("attention_slicing", attention_slicing), ("warmup", warmup)):
            if value not in _SLICING_CHOICES:
                raise ValueError(
                    f"mps_pipeline({name}={value!r}): choose one of {', '.join(_SLICING_CHOICES)}"
                )
        key = build_key(source, pipeline_cls, torch_dtype, attention_slicing, warmup, from_pretrained_kwargs)
        pipe = session.pipelines.checkout(
            key,
            lambda: load_for_target(
                source,
                target=mps_target,
                environment=session.environment,
                pipeline_cls=pipeline_cls,
                torch_dtype=torch_dtype,
                attention_slicing=attention_slicing,
                warmup=warmup,
                **from_pretrained_kwargs,
            ),
        )
        used.append(key)
        if session.emulation is not None:  # findings then name "unet.down_blocks.0..." paths
            session.emulation.name_modules(pipe.components)
        return pipe

    yield factory
    kept = [session.pipelines.checkin(key) for key in used]
    if used:
        # A dropped pipeline leaves garbage worth collecting; a kept one only cached blocks.
        mps_target.empty_cache(collect=not all(kept))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is None:
        return
    notes = session.emulation_notes()
    # The bundled suite's results get their own verdict table (check_plugin).
    results = [r for r in session.results if "suite_check" not in r.details]
    if not results and not notes:
        return
    from pytest_mps.summary import summary_lines

    terminalreporter.section("pytest-mps")
    if results:
        for line in summary_lines(results, session.target):
            terminalreporter.write_line(line)
    if notes:
        terminalreporter.write_line("emulated-MPS notes (no error on a Mac, but slower or less portable):")
        for line in notes:
            terminalreporter.write_line(f"  {line}")
