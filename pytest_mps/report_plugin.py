"""pytest-mps's plugin for stored CPU references, session reports and pytest-xdist.

- **References**: the session's :class:`~pytest_mps.references.ReferenceCache` gets a
  :class:`~pytest_mps.reference_store.ReferenceStore` behind it: ``--mps-references DIR`` (ini
  ``mps_references``) for a folder the project commits, else pytest's cache folder, else (cache plugin
  off) memory only. ``--mps-update-references`` recomputes and rewrites every reference a test uses.
- **Reports**: ``--mps-report-json PATH``, ``--mps-report-md PATH``, ``--mps-report-html DIR`` (and
  ini keys of the same names), written once, at the end, by the controller.
- **pytest-xdist**: every worker's results reach the controller (test reports' ``user_properties``;
  images, reference counts and the environment through ``workeroutput``), which alone writes reports
  and lists unused references. Only one worker at a time uses the real MPS device
  (``--mps-xdist-workers N``, ini ``mps_xdist_workers``, to allow more; 0 for no limit).

References in a ``--mps-references`` folder that no test used are listed at the end (like syrupy's
unused snapshots), only when the whole suite ran: no test ids or paths on the command line (unless they
are the ini's ``testpaths``), nothing deselected (``-k``, ``-m``, ``--deselect``, ``--lf``, ``--sw``),
no collection error, no early stop (``-x``, ``--maxfail``, Ctrl-C, a crashed worker). A reference whose
writing test (recorded in the file) was skipped in this run is not listed: it may use it where it does
not skip. They are listed, never deleted. References in pytest's cache folder are not listed: the cache
is pytest's to clear (``--cache-clear``).

This module is imported at every pytest start-up: it imports nothing heavy at module level.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_mps.plugin import MPSSession
    from pytest_mps.reference_store import ReferenceStore
    from pytest_mps.reports.collect import ResultCollector

__all__ = ["DeviceLock", "device_lock", "mps_device_lock"]

_GROUP_DESCRIPTION = "pytest-mps: Diffusers pipelines on Apple's MPS backend"
_WORKER_KEY = "pytest_mps"
_REFERENCES_FOLDER = "pytest-mps-references"
_LOCK_FOLDER = "pytest-mps-locks"
#: Fixtures (and the marker) through which a test reaches the target device.
_DEVICE_FIXTURES = frozenset({"mps_pipeline", "mps_device", "mps_device_lock"})


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mps", _GROUP_DESCRIPTION)
    group.addoption(
        "--mps-references",
        dest="mps_references",
        metavar="DIR",
        default=None,
        help="store CPU references in DIR (commit it, so CI on a Mac never computes them); default: "
        "pytest's cache folder. Also ini mps_references.",
    )
    group.addoption(
        "--mps-update-references",
        dest="mps_update_references",
        action="store_true",
        default=False,
        help="recompute and rewrite every stored CPU reference a test uses (the checks still report "
        "their outcome).",
    )
    group.addoption(
        "--mps-report-json",
        dest="mps_report_json",
        metavar="PATH",
        default=None,
        help="write every check with its metrics, tolerances, timings and the environment as JSON "
        "(schema: pytest_mps/reports/schema.json). Also ini mps_report_json.",
    )
    group.addoption(
        "--mps-report-md",
        dest="mps_report_md",
        metavar="PATH",
        default=None,
        help="write a Markdown summary with MPS badges for a pull request or $GITHUB_STEP_SUMMARY "
        "(appended to when PATH is that file). Also ini mps_report_md.",
    )
    group.addoption(
        "--mps-report-html",
        dest="mps_report_html",
        metavar="DIR",
        default=None,
        help="write DIR/index.html: an offline page with CPU, target and difference images of each "
        "parity check. Also ini mps_report_html.",
    )
    group.addoption(
        "--mps-xdist-workers",
        dest="mps_xdist_workers",
        metavar="N",
        type=int,
        default=None,
        help="how many pytest-xdist workers may use the real MPS device at once (default 1; 0: no limit). "
        "Also ini mps_xdist_workers.",
    )
    parser.addini("mps_references", "folder of stored CPU references (relative to the ini file)", default="")
    parser.addini("mps_report_json", "default path of --mps-report-json", default="")
    parser.addini("mps_report_md", "default path of --mps-report-md", default="")
    parser.addini("mps_report_html", "default folder of --mps-report-html", default="")
    parser.addini("mps_xdist_workers", "pytest-xdist workers that may use real MPS at once", default="1")


# --- paths and settings ----------------------------------------------------------------------------


def _path_setting(config: pytest.Config, name: str) -> Path | None:
    """An option (relative to the invocation folder) or ini value (relative to the ini file)."""
    value = config.getoption(name, None)
    if value:
        return Path(config.invocation_params.dir, value)
    raw = str(config.getini(name) or "").strip()
    if raw:
        base = config.inipath.parent if config.inipath else config.rootpath
        return Path(base, raw)
    return None


def _device_slots(config: pytest.Config) -> int:
    value = config.getoption("mps_xdist_workers", None)
    if value is None:
        raw = str(config.getini("mps_xdist_workers") or "1").strip()
        try:
            value = int(raw)
        except ValueError:
            raise pytest.UsageError(f"ini mps_xdist_workers = {raw!r} is not a whole number") from None
    if value < 0:
        raise pytest.UsageError(f"--mps-xdist-workers {value}: must be 0 (no limit) or more")
    return value


def _has_cache(config: pytest.Config) -> bool:
    return getattr(config, "cache", None) is not None


def _lock_folder(config: pytest.Config) -> Path:
    if _has_cache(config):
        return Path(config.cache.mkdir(_LOCK_FOLDER))
    import hashlib

    tag = hashlib.blake2b(str(config.rootpath).encode(), digest_size=6).hexdigest()
    folder = Path(
        tempfile.gettempdir(), f"pytest-mps-locks-{os.getuid() if hasattr(os, 'getuid') else 0}-{tag}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- the device lock -------------------------------------------------------------------------------


class DeviceLock:
    """An inter-process lock with ``slots`` places, one lock file per place (``fcntl.flock``), re-entrant
    within a process. A pytest-xdist worker takes place ``worker index % slots``, so at most ``slots``
    workers use the device at once. Where ``fcntl`` is missing (Windows, which has no MPS) it does
    nothing."""

    def __init__(self, folder: Path, *, slots: int = 1, slot: int = 0) -> None:
        self.folder = folder
        self.slots = max(1, slots)
        self.slot = slot % self.slots
        self._depth = 0
        self._guard = threading.RLock()
        self._handle: Any = None

    @property
    def path(self) -> Path:
        """This process's lock file."""
        return self.folder / f"device-{self.slot}.lock"

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block (nested blocks in the same process do not wait)."""
        try:
            import fcntl
        except ImportError:  # no flock: no MPS either
            yield
            return
        with self._guard:
            if self._depth == 0:
                self.folder.mkdir(parents=True, exist_ok=True)
                handle = open(self.path, "a+b")  # noqa: SIM115 - held across the block, closed below
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                except BaseException:
                    handle.close()
                    raise
                self._handle = handle
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    handle, self._handle = self._handle, None
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                    finally:
                        handle.close()


def device_lock(config: pytest.Config) -> contextlib.AbstractContextManager[None]:
    """A context manager around work on the target device: in a pytest-xdist worker whose target is real
    MPS it waits for the device (``--mps-xdist-workers``); anywhere else it does nothing. Re-entrant:
    the plugin already holds it around every test that uses ``mps_pipeline``, ``mps_device`` or the
    ``mps`` marker, so a check calling it again inside such a test does not wait."""
    state = config.stash.get(_STATE, None)
    if state is None or state.lock is None:
        return contextlib.nullcontext()
    session = state.mps
    if not session.target.is_real_mps:
        return contextlib.nullcontext()
    return state.lock.hold()


@pytest.fixture
def mps_device_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold the device lock for the whole test (see :func:`device_lock`). Tests that use
    ``mps_pipeline``, ``mps_device`` or the ``mps`` marker hold it already; this is for tests that reach
    the device another way (their own pipeline fixture, say)."""
    with device_lock(request.config):
        yield


# --- per-session state -----------------------------------------------------------------------------


class _State:
    """What this plugin keeps for one pytest process (controller, worker or serial run)."""

    def __init__(self, config: pytest.Config, mps: MPSSession) -> None:
        from pytest_mps.reports.collect import ResultCollector

        self.config = config
        self.mps = mps
        self.started = time.time()
        self.worker_input: dict[str, Any] | None = (
            getattr(config, "workerinput", {}).get(_WORKER_KEY) if hasattr(config, "workerinput") else None
        )
        self.is_worker = hasattr(config, "workerinput")
        self.collector: ResultCollector = ResultCollector()
        self.worker_outputs: list[dict[str, Any]] = []
        self.xdist_workers = 0
        self.deselected = 0
        self.collection_errors = 0
        self.lock: DeviceLock | None = None
        self.messages: list[str] = []
        self.unused: list[tuple[str, str]] | None = None  # (file, note)
        self.unused_reason = ""
        self.references_mode, self.references_folder = self._references_setting()
        self.store: ReferenceStore | None = self._make_store()
        self.slots = (self.worker_input or {}).get("slots", None)
        if self.slots is None:
            self.slots = _device_slots(config)

    def _references_setting(self) -> tuple[str, Path | None]:
        if self.worker_input is not None:
            folder = self.worker_input.get("references")
            return self.worker_input["mode"], Path(folder) if folder else None
        folder = _path_setting(self.config, "mps_references")
        if folder is not None:
            if folder.exists() and not folder.is_dir():
                raise pytest.UsageError(
                    f"--mps-references {folder}: this is a file, not a folder; "
                    "give a folder to keep references in"
                )
            return "folder", folder
        if _has_cache(self.config):
            return "cache", None
        return "memory", None

    def _make_store(self) -> ReferenceStore | None:
        from pytest_mps.reference_store import ReferenceStore

        update = bool(self.config.getoption("mps_update_references", False))
        if self.references_mode == "folder" and self.references_folder is not None:
            return ReferenceStore(self.references_folder, update=update)
        if self.references_mode == "cache" and _has_cache(self.config):
            cache = self.config.cache
            return ReferenceStore(lambda: Path(cache.mkdir(_REFERENCES_FOLDER)), update=update)
        return None

    def report_paths(self) -> dict[str, Path | None]:
        return {name: _path_setting(self.config, f"mps_report_{name}") for name in ("json", "md", "html")}

    def uses_device(self, item: pytest.Item) -> bool:
        names = set(getattr(item, "fixturenames", ()))
        return bool(names & _DEVICE_FIXTURES) or item.get_closest_marker("mps") is not None


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State | None:
    return config.stash.get(_STATE, None)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    from pytest_mps.plugin import session_of

    try:
        mps = session_of(config)
    except KeyError:  # pytest-mps's main plugin is disabled (-p no:mps): nothing to do
        return
    state = _State(config, mps)
    config.stash[_STATE] = state
    if state.store is not None:
        mps.references.store = state.store
    if state.is_worker and state.slots:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        index = int("".join(ch for ch in worker if ch.isdigit()) or 0)
        folder = (state.worker_input or {}).get("locks")
        state.lock = DeviceLock(
            Path(folder) if folder else _lock_folder(config), slots=state.slots, slot=index
        )
    config.pluginmanager.register(_SessionHooks(state), "pytest-mps-reports")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(state), "pytest-mps-xdist")


class _SessionHooks:
    """The hooks of one pytest process, bound to its state (some hooks get no ``config``)."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.state.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.state.collection_errors += 1

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.state.collector.set_order([item.nodeid for item in session.items])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.state.collector.add_report(report)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        """Record which test writes a reference, and hold the device lock around tests that use the
        real MPS device in a pytest-xdist worker."""
        state = self.state
        if state.store is not None:
            state.store.current_nodeid = item.nodeid
        lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if state.lock is not None and state.uses_device(item) and state.mps.target.is_real_mps:
            lock = state.lock.hold()
        with lock:
            return (yield)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        state = self.state
        if state.is_worker:
            _send_to_controller(state)
            return
        if state.references_mode == "folder" and state.references_folder is not None:
            from pytest_mps.reports.atomic import remove_stale_temporaries

            remove_stale_temporaries(state.references_folder)
            _unused_references(state, session, exitstatus)
        if state.mps.results and state.report_paths()["html"] is not None:
            from pytest_mps.reports.collect import image_sets

            state.collector.images.update(image_sets(state.mps.results))
        _write_reports(state, exitstatus)

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        state = self.state
        if not state.mps.results and len(state.collector):
            # pytest-xdist controller: the main plugin's table is empty here; print it from the workers'.
            from pytest_mps.summary import summary_lines

            terminalreporter.section("pytest-mps")
            for line in summary_lines([data for _, _, data in state.collector.records()]):
                terminalreporter.write_line(line)
        lines = _reference_lines(state, verbose=config.getoption("verbose", 0) > 0)
        if lines or state.messages:
            terminalreporter.section("pytest-mps references and reports")
            for line in lines + state.messages:
                terminalreporter.write_line(line)


class _XdistHooks:
    """Hooks that exist only with pytest-xdist (registered only when it is installed)."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        """Controller: tell each worker where references and locks live, so all agree."""
        state = self.state
        folder = state.references_folder
        node.workerinput[_WORKER_KEY] = {
            "mode": state.references_mode,
            "references": str(folder) if folder else None,
            "locks": str(_lock_folder(state.config)),
            "slots": state.slots,
        }
        state.xdist_workers += 1

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.state.collector.set_order(ids)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
        if output:
            self.state.worker_outputs.append(output)
            self.state.collector.images.update(output.get("images") or {})


# --- the end of the session ------------------------------------------------------------------------


def _environment(state: _State) -> dict[str, Any] | None:
    for output in state.worker_outputs:
        if output.get("environment"):
            return output["environment"]
    env = state.mps.environment if "torch" in sys.modules else state.mps.cheap_environment()
    return env.to_dict()


def _target(state: _State, checks: list[dict[str, Any]]) -> dict[str, Any]:
    for output in state.worker_outputs:
        if output.get("target"):
            return output["target"]
    target = state.mps.target_if_cheap()
    if target is not None:
        return {"label": target.label, "real_mps": target.is_real_mps}
    if checks:
        return {"label": str(checks[0].get("target")), "real_mps": bool(checks[0].get("real_mps"))}
    return {"label": f"{state.mps.requested} (not resolved: no check ran)", "real_mps": False}


def _whole_suite(state: _State, session: pytest.Session, exitstatus: int) -> str:
    """Why this run does not cover the whole suite ("" when it does)."""
    config = state.config
    deselected = state.deselected + sum(o.get("deselected", 0) for o in state.worker_outputs)
    if deselected:
        return f"{deselected} tests deselected"
    if state.collection_errors:
        return "collection errors"
    if session.shouldfail or session.shouldstop or int(exitstatus) not in (0, 1):
        return "the run stopped early"
    not_run = state.collector.not_run()
    if not_run:
        return f"{len(not_run)} collected tests did not run"
    if config.getoption("lf", False):
        return "--lf"
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        testpaths = [str(p) for p in config.getini("testpaths") or []]
        if not testpaths or sorted(config.args) != sorted(testpaths):
            return "tests were named on the command line"
    return ""


def _unused_references(state: _State, session: pytest.Session, exitstatus: int) -> None:
    from pytest_mps.reference_store import entry_metadata, stored_entries

    store = state.store
    if store is None:
        return
    reason = _whole_suite(state, session, exitstatus)
    if reason:
        state.unused_reason = reason
        return
    used = set(store.used)
    for output in state.worker_outputs:
        used.update((output.get("references") or {}).get("used", ()))
    skipped, ran = state.collector.skipped, state.collector.ran
    unused = []
    for entry in stored_entries(store.folder):
        if entry.name in used:
            continue
        writer = (entry_metadata(entry) or {}).get("nodeid", "")
        if writer and writer in skipped:
            continue  # its test skipped here; it may use the reference where it runs
        note = (
            f" (written by {writer}{'' if writer in ran else ', which no longer exists'})" if writer else ""
        )
        unused.append((str(entry), note))
    state.unused = unused


def _reference_summary(state: _State) -> dict[str, Any] | None:
    store = state.store
    stats = [store.stats()] if store is not None else []
    stats += [o["references"] for o in state.worker_outputs if o.get("references")]
    if state.references_mode == "memory":
        return {
            "mode": "memory",
            "folder": None,
            "update": False,
            "loaded": 0,
            "saved": 0,
            "rewritten": 0,
            "corrupted": [],
            "unused": None,
        }
    folder = state.references_folder
    return {
        "mode": state.references_mode,
        "folder": str(folder) if folder else None,
        "update": bool(state.config.getoption("mps_update_references", False)),
        "loaded": sum(s["loaded"] for s in stats),
        "saved": sum(s["saved"] for s in stats),
        "rewritten": sum(s["rewritten"] for s in stats),
        "corrupted": [c for s in stats for c in s["corrupted"]],
        "write_errors": [c for s in stats for c in s.get("write_errors", [])],
        "unused": None if state.unused is None else [path for path, _ in state.unused],
    }


def _write_reports(state: _State, exitstatus: int) -> None:
    from pytest_mps.reports.collect import image_key
    from pytest_mps.reports.html import place_images, write_html
    from pytest_mps.reports.json_report import write_json
    from pytest_mps.reports.markdown import write_markdown
    from pytest_mps.reports.model import build_report

    paths = state.report_paths()
    if not any(paths.values()):
        return
    checks, images = [], {}
    for index, (nodeid, ordinal, data) in enumerate(state.collector.records()):
        checks.append({**data, "source": 0, "images": None})
        encoded = state.collector.images.get(image_key(nodeid, ordinal))
        if encoded is not None:
            images[index] = encoded
    source = {
        "name": "session",
        "created": datetime.fromtimestamp(state.started, timezone.utc).isoformat(timespec="seconds"),
        "duration": round(time.time() - state.started, 3),
        "exitstatus": int(exitstatus),
        "target": _target(state, checks),
        "environment": _environment(state),
        "xdist_workers": state.xdist_workers,
        "references": _reference_summary(state),
    }
    report = build_report(checks, [source])
    html_dir = paths["html"]
    if html_dir is not None:
        place_images(report, html_dir, images)
        state.messages.append(f"HTML report: {write_html(report, html_dir)}")
    if paths["json"] is not None:
        state.messages.append(f"JSON report: {write_json(report, paths['json'], images_root=html_dir)}")
    if paths["md"] is not None:
        state.messages.append(f"Markdown report: {write_markdown(report, paths['md'])}")


def _send_to_controller(state: _State) -> None:
    """Worker: what the controller needs besides the test reports."""
    from pytest_mps.reports.collect import image_sets

    mps = state.mps
    output: dict[str, Any] = {
        "deselected": state.deselected,
        "references": state.store.stats() if state.store is not None else None,
        "images": image_sets(mps.results) if state.report_paths()["html"] is not None else {},
    }
    if mps.results:
        output["environment"] = mps.environment.to_dict()
        target = mps.target
        output["target"] = {"label": target.label, "real_mps": target.is_real_mps}
    state.config.workeroutput[_WORKER_KEY] = output  # type: ignore[attr-defined]


def _reference_lines(state: _State, *, verbose: bool) -> list[str]:
    summary = _reference_summary(state)
    if summary is None or summary["mode"] == "memory":
        return []
    lines = []
    where = summary["folder"] or "pytest's cache folder"
    counts = f"{summary['loaded']} loaded, {summary['saved']} computed and stored"
    if summary["update"]:
        counts += f" ({summary['rewritten']} rewritten by --mps-update-references)"
    if verbose or summary["update"] or summary["corrupted"] or summary["unused"] or summary["write_errors"]:
        lines.append(f"CPU references in {where}: {counts}")
    for entry in summary["corrupted"]:
        lines.append(f"corrupted reference recomputed and rewritten: {entry['file']} ({entry['problem']})")
    for entry in summary["write_errors"]:
        lines.append(f"reference not stored: {entry['file']} ({entry['problem']})")
    if state.unused:
        lines.append(f"{len(state.unused)} unused references (no test used them in this full run):")
        lines += [f"  {path}{note}" for path, note in state.unused]
    elif verbose and state.unused_reason:
        lines.append(f"unused references not listed: {state.unused_reason}")
    return lines
