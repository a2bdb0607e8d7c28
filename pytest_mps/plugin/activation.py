"""When pytest-mps's machinery loads. A run that asks nothing of pytest-mps stays *dormant*: pytest
imports the plugin's hooks, markers and fixtures, and nothing else. The run *wakes* (:func:`wake`):

- at start-up, when it asks for something (:func:`wakes_at_start`): a report, a receipt, a reference
  folder, crash isolation or pipelines for the bundled suite, or pytest-xdist distributes it;
- when collection finishes, if a collected test involves pytest-mps (:func:`involves_mps`);
- at the first use of the machinery: a check's CPU reference, a recorded result, the reference setup or
  the run's facts (each asks :func:`wake` first).

Awake, the run registers the per-test setup hook (:mod:`.markers`), sets up its reference store,
collects its facts and results (:mod:`.reports`) and, under pytest-xdist, its worker hooks
(:mod:`.xdist`). The bundled suite's part (:mod:`.suite`) is registered
when pipelines are named or when pytest collects the suite's module; crash isolation's part
(:mod:`.isolation`) only with ``--mps-isolate``. A leaf of the start-up: it imports the rest on waking.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_mps.plugin.session import session_of

__all__ = [
    "awake",
    "collected_item",
    "distributes",
    "involves_mps",
    "is_worker",
    "register_part",
    "target_line_at_start",
    "wake",
    "wakes_at_start",
]

SUITE_PART = "pytest_mps.plugin.suite"
ISOLATION_PART = "pytest_mps.plugin.isolation"
#: the folder of the bundled suite's test module (``pytest_mps/suite``)
_SUITE_FOLDER = Path(__file__).resolve().parent.parent / "suite"

_AWAKE_KEY = pytest.StashKey[bool]()
_ITEMS_KEY = pytest.StashKey["list[pytest.Item]"]()
_BY_ID_KEY = pytest.StashKey["tuple[list[pytest.Item], dict[str, pytest.Item]]"]()

# The keys of the woken run's state, defined here, in a module every run imports at start-up: a module
# first imported during a test can be imported afresh later (pytester's fixture restores ``sys.modules``
# at its teardown), and a key made by the new copy would not find what the first one stored.
FACTS_KEY = pytest.StashKey["RunFacts"]()  # plugin/reports.py
REFERENCES_KEY = pytest.StashKey["ReferenceSetup"]()  # plugin/references.py
SUITE_KEY = pytest.StashKey["SuiteState"]()  # plugin/suite.py
ISOLATION_KEY = pytest.StashKey["ProjectIsolation"]()  # plugin/isolation.py
XDIST_KEY = pytest.StashKey["XdistHooks"]()  # plugin/xdist.py
LOCK_KEY = pytest.StashKey["DeviceLock"]()  # plugin/xdist.py
CONTEXT_KEY = pytest.StashKey["CheckContext"]()  # plugin/running_test.py (on each item)


def is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker."""
    return hasattr(config, "workerinput")


def distributes(config: pytest.Config) -> bool:
    """True in a pytest-xdist controller that hands the tests to workers: pytest-xdist's own rule (a
    distribution mode and somewhere to send tests, ``-n`` or ``--tx``), not when only collecting."""
    if not config.pluginmanager.hasplugin("xdist") or is_worker(config):
        return False
    option = config.option
    if getattr(option, "collectonly", False):
        return False
    return getattr(option, "dist", "no") not in (None, "no") and bool(getattr(option, "tx", None))


def wakes_at_start(config: pytest.Config) -> bool:
    """Whether the run asks pytest-mps for something before any test is collected."""
    settings = session_of(config).settings
    return (
        settings.writes_report
        or settings.references is not None
        or bool(settings.isolate or settings.pipelines)
        or is_worker(config)
        or distributes(config)
    )


def target_line_at_start(config: pytest.Config) -> bool:
    """Whether pytest's header shows the target and environment line: in a run that asks for
    pytest-mps at start-up or names a target. Otherwise the line follows collection in a run that woke
    by then, and a dormant run shows none (finding the environment costs more than the rest of the
    plugin's start-up)."""
    return wakes_at_start(config) or session_of(config).requested != "auto"


def awake(config: pytest.Config) -> bool:
    """Whether the run's machinery is loaded."""
    return config.stash.get(_AWAKE_KEY, False)


def wake(config: pytest.Config) -> None:
    """Load the run's machinery (once; each later call does nothing): the reference store, the run's
    facts and, under pytest-xdist, its hooks. Woken after collection, the results take its order."""
    if awake(config):
        return
    config.stash[_AWAKE_KEY] = True  # first: installing reads the facts and the references again
    from pytest_mps.plugin import markers, references, reports

    try:
        markers.install_setup_hook(config)
        references.install(config)
        reports.install(config)
        if is_worker(config) or distributes(config):
            from pytest_mps.plugin import xdist

            xdist.install(config, session_of(config))
    except BaseException:
        config.stash[_AWAKE_KEY] = False  # (a usage error: a folder that is a file, no receipt key)
        raise
    _take_order(config)


def _take_order(config: pytest.Config) -> None:
    """Results follow the collection's order (once collection finished and the run is awake)."""
    items = config.stash.get(_ITEMS_KEY, None)
    if items is not None and awake(config):
        from pytest_mps.plugin import reports

        reports.collector_of(config).set_order([item.nodeid for item in items])


def collected_item(config: pytest.Config, nodeid: str) -> pytest.Item | None:
    """The collected test with this node id (None before collection finishes, or for none)."""
    items = config.stash.get(_ITEMS_KEY, None)
    if not items:
        return None
    by_id = config.stash.get(_BY_ID_KEY, None)
    if by_id is None or by_id[0] is not items:
        by_id = config.stash[_BY_ID_KEY] = (items, {item.nodeid: item for item in items})
    return by_id[1].get(nodeid)


def register_part(config: pytest.Config, name: str) -> ModuleType | None:
    """Register one of the plugin's parts that only some runs need (its ``pytest_configure`` runs at
    once); None when ``-p no:NAME`` blocks it."""
    manager = config.pluginmanager
    part = manager.get_plugin(name)
    if part is None and not manager.is_blocked(name):
        import importlib

        part = importlib.import_module(name)
        manager.register(part, name)
    return part


def involves_mps(config: pytest.Config, items: list[pytest.Item]) -> bool:
    """Whether the collected tests involve pytest-mps: the emulated device spans the session, or the
    test modules imported it (an emulated Metal abort in any test is noted in its report), or a test
    carries one of the plugin's markers, uses one of its fixtures or is a bundled-suite test (whose
    fixture is the plugin's)."""
    from pytest_mps.plugin import plugin_fixtures
    from pytest_mps.plugin.markers import MARKED_KEY

    if session_of(config).emulation is not None or "pytest_mps.emulation" in sys.modules:
        return True
    if config.stash.get(MARKED_KEY, False):
        return True
    fixtures = plugin_fixtures(config)
    return any(not fixtures.isdisjoint(getattr(item, "fixturenames", ())) for item in items)


# --- hooks ---------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # a first-result hook: before any plugin that makes the module
def pytest_pycollect_makemodule(module_path: Path, parent: Any) -> None:
    """The bundled suite's module is about to be collected: its part must be there first."""
    folder = module_path.parent
    if folder.name == _SUITE_FOLDER.name and folder.resolve() == _SUITE_FOLDER:
        register_part(parent.config, SUITE_PART)


@pytest.hookimpl(tryfirst=True)  # before the terminal asks for the lines that follow collection
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    config.stash[_ITEMS_KEY] = session.items
    _take_order(config)
    if involves_mps(config, session.items):
        from pytest_mps.plugin.reports import read_test_reports

        read_test_reports(config)
