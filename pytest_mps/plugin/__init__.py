"""pytest-mps's pytest plugin (the ``pytest11`` entry point ``mps``): thin hooks that delegate.

- :mod:`~pytest_mps.plugin.options`: every ``--mps-*`` option and ini key (declared in
  :mod:`pytest_mps.options`), read once into frozen settings;
- :mod:`~pytest_mps.plugin.session`: the run's state (target, environment, pipelines, references);
- :mod:`~pytest_mps.plugin.activation`: when the rest loads (a run that asks nothing of pytest-mps
  loads only the hooks, markers and fixtures);
- :mod:`~pytest_mps.plugin.markers`: markers and gating (:mod:`~pytest_mps.plugin.running_test`: the
  running test's check context and crashes, loaded on first need);
- :mod:`~pytest_mps.plugin.fixtures`: ``mps_pipeline``, ``mps_device``, ``mps_target``...;
- :mod:`~pytest_mps.plugin.suite`: the bundled suite (``pytest-mps check``);
- :mod:`~pytest_mps.plugin.references`, :mod:`~pytest_mps.plugin.reports`: stored references and reports;
- :mod:`~pytest_mps.plugin.xdist`: pytest-xdist (only when it distributes the run);
- :mod:`~pytest_mps.plugin.isolation`: crash isolation of a project's device tests (``--mps-isolate``);
- :mod:`~pytest_mps.plugin.terminal`: the header and the end-of-run tables;
- :mod:`~pytest_mps.plugin.hookspecs`: pytest-mps's own hooks.

Imported at every pytest start-up: nothing here imports torch, diffusers or numpy.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_mps.plugin import activation, options
from pytest_mps.plugin.session import SESSION_KEY, MPSSession, session_of

__all__ = ["MPSSession", "session_of"]

#: The modules whose fixtures and hooks every run registers with this one. Not listed in
#: ``pytest_plugins``: pytest looks each name listed there up among every installed distribution's
#: entry points first, a scan that cost more than the rest of the plugin's start-up put together. The
#: bundled suite's part and crash isolation's are registered only by the runs that need them
#: (:mod:`.activation`).
PARTS = (
    "pytest_mps.plugin.activation",
    "pytest_mps.plugin.markers",
    "pytest_mps.plugin.fixtures",
)


def plugin_fixtures(config: pytest.Config) -> frozenset[str]:
    """The names of the fixtures of the plugin's registered parts (``mps_pipeline``, ``mps_device``...:
    every one is named ``mps_*``)."""
    manager = config.pluginmanager
    parts = [manager.get_plugin(name) for name in (*PARTS, activation.SUITE_PART)]
    return frozenset(
        name
        for part in parts
        if part is not None
        for name, value in vars(part).items()
        if name.startswith("mps_") and callable(value)
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest-mps's own hooks, then the plugin's parts (the first hook pytest calls on a plugin it
    registers)."""
    import importlib

    from pytest_mps.plugin import hookspecs

    pluginmanager.add_hookspecs(hookspecs)
    for name in PARTS:
        if pluginmanager.get_plugin(name) is None and not pluginmanager.is_blocked(name):
            pluginmanager.register(importlib.import_module(name), name)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_mps.plugin import markers

    markers.register(config)
    session = MPSSession(config, options.read_settings(config))
    config.stash[SESSION_KEY] = session
    session.validate()
    if session.settings.pipelines:  # checked now: a missing pipeline folder is a usage error
        activation.register_part(config, activation.SUITE_PART)
    if session.settings.isolate:
        activation.register_part(config, activation.ISOLATION_PART)
    if activation.wakes_at_start(config):
        activation.wake(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    session_of(session.config).start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if activation.awake(session.config):
        from pytest_mps.plugin import reports

        reports.finish(session.config, session, exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    from pytest_mps.plugin import markers

    markers.unregister(config)
    mps_session = config.stash.get(SESSION_KEY, None)
    if mps_session is not None:
        mps_session.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not activation.target_line_at_start(config):
        return []
    from pytest_mps.plugin import terminal

    return terminal.header_lines(config)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    """The target line of a run that woke at collection (it follows "collected N items", where pytest's
    header would show it: not with ``-q`` or ``--no-header``)."""
    if activation.target_line_at_start(config) or not activation.awake(config):
        return []
    if config.get_verbosity() < 0 or config.getoption("no_header", False):
        return []
    from pytest_mps.plugin import terminal

    return terminal.header_lines(config)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if activation.awake(config):  # a dormant run has nothing to say
        from pytest_mps.plugin import terminal

        terminal.summary(terminalreporter, config)
