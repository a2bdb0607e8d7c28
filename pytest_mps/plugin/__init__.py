"""pytest-mps's pytest plugin (the ``pytest11`` entry point ``mps``): thin hooks that delegate.

- :mod:`~pytest_mps.plugin.options`: every ``--mps-*`` option and ini key (declared in
  :mod:`pytest_mps.options`), read once into frozen settings;
- :mod:`~pytest_mps.plugin.session`: the run's state (target, environment, pipelines, references);
- :mod:`~pytest_mps.plugin.markers`: markers, gating, and each test's check context;
- :mod:`~pytest_mps.plugin.fixtures`: ``mps_pipeline``, ``mps_device``, ``mps_target``...;
- :mod:`~pytest_mps.plugin.suite`: the bundled suite (``pytest-mps check``);
- :mod:`~pytest_mps.plugin.references`, :mod:`~pytest_mps.plugin.reports`: stored references and reports;
- :mod:`~pytest_mps.plugin.xdist`: pytest-xdist (only when it is installed);
- :mod:`~pytest_mps.plugin.isolation`: crash isolation of a project's device tests (``--mps-isolate``);
- :mod:`~pytest_mps.plugin.terminal`: the header and the end-of-run tables;
- :mod:`~pytest_mps.plugin.hookspecs`: pytest-mps's own hooks.

Imported at every pytest start-up: nothing here imports torch, diffusers or numpy.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from pytest_mps.plugin import options, reports, terminal
from pytest_mps.plugin.session import SESSION_KEY, MPSSession, session_of

__all__ = ["MPSSession", "session_of"]

#: The modules whose fixtures and hooks are part of the plugin, registered with this one. Not listed in
#: ``pytest_plugins``: pytest looks each name listed there up among every installed distribution's
#: entry points first, a scan that cost more than the rest of the plugin's start-up put together.
PARTS = (
    "pytest_mps.plugin.markers",
    "pytest_mps.plugin.fixtures",
    "pytest_mps.plugin.suite",
    "pytest_mps.plugin.references",
    "pytest_mps.plugin.xdist",
    "pytest_mps.plugin.isolation",
)


@functools.cache
def plugin_fixtures() -> frozenset[str]:
    """The names of the plugin's fixtures (``mps_pipeline``, ``mps_device``...: every one is named
    ``mps_*``), read from its parts."""
    import importlib

    return frozenset(
        name
        for part in PARTS
        for name, value in vars(importlib.import_module(part)).items()
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
    from pytest_mps.plugin import markers, references, suite, xdist

    markers.register(config)
    session = MPSSession(config, options.read_settings(config))
    config.stash[SESSION_KEY] = session
    session.validate()
    suite.install(config)
    references.install(config)
    reports.install(config)
    xdist.install_worker_lock(config, session)
    if config.pluginmanager.hasplugin("xdist") and not xdist.is_worker(config):
        hooks = xdist.XdistHooks(session)
        config.stash[xdist.XDIST_KEY] = hooks
        config.pluginmanager.register(hooks, "pytest-mps-xdist")


def pytest_sessionstart(session: pytest.Session) -> None:
    session_of(session.config).start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reports.finish(session.config, session, exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    from pytest_mps.plugin import markers, suite

    markers.unregister(config)
    mps_session = config.stash.get(SESSION_KEY, None)
    if mps_session is not None:
        suite.close(config)
        mps_session.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return terminal.header_lines(config)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminal.summary(terminalreporter, config)
