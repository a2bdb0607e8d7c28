"""The plugin's per-run state, :class:`MPSSession`: the settings, the target (resolved on first need),
the environment, the emulated device, the session's pipelines and CPU references, and the results the
checks recorded. It lives in ``config.stash``; nothing is kept in module globals."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_mps.environment import MPSEnvironment
    from pytest_mps.options import Settings
    from pytest_mps.pipelines import PipelineCache
    from pytest_mps.references import ReferenceCache
    from pytest_mps.results import CheckResult
    from pytest_mps.target import Target

__all__ = ["SESSION_KEY", "MPSSession", "session_of"]

#: The user property that carries one check's result as JSON in a test report.
RESULT_PROPERTY = "pytest_mps_result"


class MPSSession:
    """One pytest run's pytest-mps state (see the module docstring)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.requested = self._requested(settings)
        self._target: Target | None = None
        self._environment: MPSEnvironment | None = None
        self._cheap: MPSEnvironment | None = None
        #: Builds the run's reference store when a check first needs a CPU reference.
        self.store_factory: Callable[[], Any] | None = None
        self.results: list[CheckResult] = []
        self._pipelines: PipelineCache | None = None
        self._references: ReferenceCache | None = None
        self._emulation: Any = None
        #: warnings libraries raised during checks (not failures): "Category: message" -> where
        self.library_warnings: dict[str, list[str]] = {}
        #: The test running now (from its setup to its teardown report), whose checks record with it.
        self.current_item: pytest.Item | None = None

    @staticmethod
    def _requested(settings: Settings) -> str:
        """The target asked for. Naming pipelines for the bundled suite on the command line with no
        target in mind picks the suite's default (mps, else emulated, else cpu) instead of ``auto``,
        which would skip every check where there is no MPS; pipelines from ini alone leave a project's
        target as it is."""
        if (
            settings.sources.get("pipelines") == "command line"
            and settings.sources.get("device") == "default"
        ):
            from pytest_mps.suite.settings import default_target_name

            return default_target_name()
        return settings.device

    def validate(self) -> None:
        """Resolve an explicit target now, so an unusable one is a usage error rather than a failure
        deep inside a test (``auto`` and ``cpu`` are resolved on first need: no torch at start-up)."""
        if self.requested not in ("auto", "cpu"):
            from pytest_mps.target import TargetError

            try:
                self.target  # noqa: B018 - resolving is the point: it raises TargetError early
            except TargetError as exc:
                raise pytest.UsageError(str(exc)) from None

    # --- the target and the environment -----------------------------------------------------------

    @property
    def environment(self) -> MPSEnvironment:
        """The full environment (imports torch on macOS to ask MPS)."""
        if self._environment is None and self._cheap is not None and self._cheap.probed:
            self._environment = self._cheap  # off macOS, the cheap look is the full one
        if self._environment is None or not self._environment.probed:
            from pytest_mps.environment import detect_environment

            self._environment = detect_environment(probe_torch=True)
        return self._environment

    def cheap_environment(self) -> MPSEnvironment:
        """The environment without importing torch (for the header)."""
        if self._environment is not None:
            return self._environment
        if self._cheap is None:
            from pytest_mps.environment import detect_environment

            self._cheap = detect_environment()
        return self._cheap

    @property
    def target(self) -> Target:
        """The resolved target (``auto`` is resolved here, on first need)."""
        if self._target is None:
            from pytest_mps.target import resolve_target

            self._target = resolve_target(self.requested, environment=lambda: self.environment)
        return self._target

    def target_if_cheap(self) -> Target | None:
        """The target, unless resolving it now would import torch for nothing but the header."""
        if self._target is not None:
            return self._target
        if self.requested == "cpu" or self.cheap_environment().probed:
            return self.target
        return None

    # --- the emulated device ----------------------------------------------------------------------

    def start(self) -> None:
        """Enter the emulated device when it is the target: emulated tensors must never meet torch's
        C++ kernels outside it, so it spans the whole session. Pipeline names start afresh: a name is
        unique within one session."""
        if "pytest_mps.identity" in sys.modules:  # nothing was named yet otherwise (a cheap start-up)
            sys.modules["pytest_mps.identity"].new_naming_scope()
        if (
            self._target is not None
            and self._target.name == "emulated"
            and self._emulation is None
            and not self._only_isolated_suite()
        ):
            from pytest_mps.emulated_target import start_emulation
            from pytest_mps.target import TargetError

            try:
                self._emulation = start_emulation()
            except TargetError as exc:
                raise pytest.UsageError(str(exc)) from None

    def _only_isolated_suite(self) -> bool:
        """Whether this session runs nothing but the bundled suite, in worker processes (``pytest-mps
        check``'s default): each worker enters the emulated device around its own work (the suite
        runner's ``target_scope``), so this process needs none, and imports no torch."""
        if not self.settings.isolate or not self.config.args:
            return False
        import pytest_mps.suite

        suite = Path(pytest_mps.suite.__file__).resolve().parent
        rootpath = self.config.invocation_params.dir
        for arg in self.config.args:
            path = Path(arg.split("::", 1)[0])
            path = (path if path.is_absolute() else rootpath / path).resolve()
            if path != suite and suite not in path.parents:
                return False
        return True

    @property
    def emulation(self) -> Any:
        """The session's active ``EmulatedMPS``, or None."""
        return self._emulation

    def emulation_note_counts(self) -> dict[str, int]:
        """Warnings and CPU fallbacks the session's emulated device recorded (see
        :func:`pytest_mps.emulated_target.note_counts`)."""
        if self._emulation is None:
            return {}
        from pytest_mps.emulated_target import note_counts

        return note_counts(self._emulation.findings)

    def stop(self) -> None:
        """Drop cached pipelines and leave the emulated device, restoring torch as it was."""
        if self._pipelines is not None:
            self._pipelines.clear()
        if self._emulation is not None:
            emulation, self._emulation = self._emulation, None
            emulation.__exit__(None, None, None)

    def check_started(self, item: pytest.Item, check: str, pipe: Any) -> None:
        """Announce that a check starts (``pytest_mps_check_started``)."""
        from pytest_mps.identity import pipeline_label

        self.config.hook.pytest_mps_check_started(
            config=self.config,
            item=item,
            check=check,
            pipeline=pipeline_label(pipe),
            pipeline_class=type(pipe).__name__,
        )

    def note_library_warning(self, caught: dict[str, Any]) -> None:
        """Keep a warning a library raised during a check, for one line at the end of the run."""
        from pathlib import Path

        name = str(caught.get("category", "")).rsplit(".", 1)[-1]
        where = f"{Path(str(caught.get('filename', '?'))).name}:{caught.get('lineno', 0)}"
        text = " ".join(str(caught.get("message", "")).split())
        places = self.library_warnings.setdefault(
            f"{name}: {text[:160]}{'...' if len(text) > 160 else ''}", []
        )
        if where not in places:
            places.append(where)

    # --- what the checks share --------------------------------------------------------------------

    @property
    def pipelines(self) -> PipelineCache:
        """Pipelines loaded by ``mps_pipeline``, shared across the session."""
        if self._pipelines is None:
            from pytest_mps.pipelines import PipelineCache

            self._pipelines = PipelineCache()
        return self._pipelines

    @property
    def references(self) -> ReferenceCache:
        """CPU references shared by the session's checks (the first use wakes a dormant run, which
        sets up the reference store: see :mod:`pytest_mps.plugin.activation`)."""
        if self._references is None:
            from pytest_mps.plugin.activation import wake
            from pytest_mps.references import ReferenceCache

            wake(self.config)

            self._references = ReferenceCache()
            if self.store_factory is not None:
                self._references.defer_store(self.store_factory)
        return self._references

    def record(self, item: pytest.Item | None, result: CheckResult) -> None:
        """Keep a check's result (for the images of the HTML report), put it in the test's report
        properties (the tables, reports, JUnit XML and pytest-xdist read it there) and announce it
        (``pytest_mps_result_recorded``)."""
        import json

        self.results.append(result)
        if item is not None:
            from pytest_mps.plugin.reports import read_test_reports

            read_test_reports(self.config)  # (a run of plain tests so far did not read their reports)
            data = result.to_dict()
            prefix = f"mps:{result.check}"
            item.user_properties.append((f"{prefix}:outcome", result.status.value))
            item.user_properties.append((f"{prefix}:target", result.target))
            for label, comparison in result.comparisons.items():
                tag = label.replace(" ", "_")
                item.user_properties.append((f"{prefix}:{tag}:max_abs", comparison.max_abs))
                item.user_properties.append((f"{prefix}:{tag}:cosine_distance", comparison.cosine_distance))
            item.user_properties.append((RESULT_PROPERTY, json.dumps(data)))
        self.config.hook.pytest_mps_result_recorded(config=self.config, item=item, result=result)


SESSION_KEY = pytest.StashKey[MPSSession]()


def session_of(config: pytest.Config) -> MPSSession:
    """The :class:`MPSSession` of a pytest run (for pytest-mps's modules and conftest files)."""
    return config.stash[SESSION_KEY]
