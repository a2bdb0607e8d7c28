"""The worker process of crash isolation for a project's own tests (``--mps-isolate``):
``python -m pytest_mps.isolation.session_worker``, started by :mod:`pytest_mps.plugin.isolation` with
spawn semantics (a fresh interpreter, never a fork).

It is a pytest session of its own: it collects what the parent collected (the parent's arguments,
working folder, ini file and environment), then serves one request at a time instead of running the
tests itself: run test X (the next test this worker will run is Y, so fixtures Y shares stay up). A test
runs through pytest's full protocol here (``pytest_runtest_protocol``: fixtures, markers, plugins), and
its reports go back as they are made, so a crash in the middle of a test loses nothing that was already
reported. The session-scoped state (pytest-mps's pipeline cache, session fixtures) stays warm from one
test to the next until the worker dies.

The parent's arguments are replayed, with what must not happen twice turned off here: crash isolation
itself, pytest-xdist, the debugger, ``-x``/``--maxfail``, ``--setup-show``, JUnit XML and pytest-mps's
reports and receipt (the parent writes them), pytest's last-failed and step-wise caches (the parent
keeps them), and pytest's terminal reporter (no one reads it here).
Output is captured with ``tee-sys``, so what a test writes to ``sys.stderr`` also reaches the real
stderr that the parent keeps and quotes when the process dies (native writes, such as a Metal
assertion, always do).

Protocol (one JSON object per line; requests on stdin, messages on the original stdout):

- on start, after collection and the imports the parent asked for (``torch``, ``diffusers``: so that
  ``--mps-timeout`` times tests, not first imports): ``{"event": "ready", "pid", "seconds",
  "collected", "errors"}``;
- ``{"op": "run", "nodeid": X, "next": Y or null}`` -> ``{"event": "report", "data": ...}`` per report
  (``pytest_report_to_serializable``), ``{"event": "warning", ...}`` per warning, ``{"event":
  "properties", "data": ...}`` after each pytest-mps result is recorded, then ``{"done": true,
  "references": ..., "images": ...}`` (or ``{"error": ...}`` when X was not collected here);
- ``{"op": "exit"}``: the session ends (remaining fixtures are torn down) and the process exits.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import pytest

__all__ = ["SPEC_VARIABLE", "WORKER_PLUGIN", "main"]

#: The environment variable that carries the worker's start-up spec (JSON) from the parent.
SPEC_VARIABLE = "PYTEST_MPS_ISOLATED_SPEC"
#: The name the serving plugin is registered under: ``config.pluginmanager.has_plugin(WORKER_PLUGIN)``
#: tells a conftest file that it runs in such a worker.
WORKER_PLUGIN = "pytest-mps-isolated-worker"
#: Options set here whatever the parent's arguments say (those a plugin does not add are left alone).
_OVERRIDES: dict[str, Any] = {
    "mps_isolate": False,  # no isolation inside isolation
    "usepdb": False,  # stdin carries the protocol: no debugger
    "trace": False,
    "maxfail": 0,  # the parent decides when the session stops
    "cacheclear": False,  # it would empty the cache folder the parent uses
    "dist": "no",  # pytest-xdist
    "numprocesses": None,
    "maxprocesses": None,
    "looponfail": False,
    "setupshow": False,  # it writes to the terminal
    "xmlpath": None,  # report files are the parent's: JUnit XML, pytest-html, pytest-reportlog,
    "htmlpath": None,  # pytest-json-report
    "report_log": None,
    "json_report": False,
}
#: pytest plugins whose work is the parent's: cache entries written at the end of a session, and the
#: terminal (no one reads it here; its end-of-run summary hooks would cost seconds for nothing).
_BLOCKED = ("lfplugin", "nfplugin", "stepwiseplugin", "terminalreporter")


class ServePlugin:
    """The worker's pytest plugin: option overrides, then a run loop that serves the parent."""

    def __init__(self, channel: IO[str], requests: IO[bytes], spec: dict[str, Any]) -> None:
        self.__name__ = WORKER_PLUGIN
        self.channel = channel
        self.requests = requests
        self.spec = spec
        self.started = time.perf_counter()
        self.known: dict[str, Any] = {}
        self.errors: list[str] = []
        self.current: str | None = None
        self.config: pytest.Config | None = None

    def send(self, message: dict[str, Any]) -> None:
        from pytest_mps.worker import send

        send(self.channel, message)

    # -- configuration ------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> None:
        """Turn off what must happen once, in the parent (see the module docstring)."""
        option = config.option
        overrides = {**_OVERRIDES, "basetemp": self.spec.get("basetemp")}
        for name, value in overrides.items():
            if hasattr(option, name):
                setattr(option, name, value)
        for name in _BLOCKED:
            config.pluginmanager.set_blocked(name)

    @pytest.hookimpl(trylast=True)  # after pytest-mps's own
    def pytest_configure(self, config: pytest.Config) -> None:
        """pytest-mps's reports and receipt are the parent's to write."""
        from pytest_mps.plugin.session import SESSION_KEY

        self.config = config
        if getattr(config.option, "capture", "fd") == "no":
            sys.stdout = sys.stderr  # -s: tests' output goes where the parent echoes it
        session = config.stash.get(SESSION_KEY, None)
        if session is not None:
            session.settings = session.settings._replace(
                report_json=None, report_md=None, report_html=None, receipt=None
            )

    # -- collection ---------------------------------------------------------------------------------

    def pytest_deselected(self, items: Sequence[Any]) -> None:
        for item in items:  # the parent may still ask for them (its selection decides)
            self.known.setdefault(item.nodeid, item)

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            text = [line for line in str(report.longrepr or "").splitlines() if line.strip()]
            self.errors.append(f"{report.nodeid or '<session>'}: {text[-1].strip() if text else 'error'}")

    def pytest_collection_finish(self, session: Any) -> None:
        for item in session.items:
            self.known[item.nodeid] = item

    # -- serving ------------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        """Serve the parent's requests until it says ``exit`` (or goes away)."""
        _preload(self.spec.get("preload") or ())
        self.send(
            {
                "event": "ready",
                "pid": os.getpid(),
                "seconds": time.perf_counter() - self.started,
                "collected": len(self.known),
                "errors": self.errors[:20],
            }
        )
        for line in self.requests:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                self.send({"error": f"not a JSON request: {line[:200]!r}"})
                continue
            if request.get("op") == "exit":
                break
            self.send(self.run(session, request))
        return True

    def run(self, session: pytest.Session, request: dict[str, Any]) -> dict[str, Any]:
        """Run one test through pytest's protocol (its reports are sent as they are made)."""
        from pytest_mps.plugin.session import SESSION_KEY

        nodeid = str(request.get("nodeid"))
        item = self.known.get(nodeid)
        if item is None:
            why = f"; collection errors here: {'; '.join(self.errors[:3])}" if self.errors else ""
            return {"error": f"the isolated worker did not collect {nodeid}{why}"}
        mps = session.config.stash.get(SESSION_KEY, None)
        before = len(mps.results) if mps is not None else 0
        self.current = nodeid
        try:
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=self.known.get(request.get("next")))
        finally:
            self.current = None
        answer: dict[str, Any] = {"done": True, "references": _store_stats(session.config)}
        if mps is not None:  # the worker's emulated device's notes so far (fallbacks, warnings)
            answer["emulation_notes"] = mps.emulation_note_counts()
        if mps is not None and self.spec.get("images") and len(mps.results) > before:
            answer["images"] = _encoded_images(mps.results[before:])
        return answer

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        config = self.config
        assert config is not None
        data = config.hook.pytest_report_to_serializable(config=config, report=report)
        self.send({"event": "report", "data": data})

    def pytest_warning_recorded(self, warning_message: Any, when: str, nodeid: str, location: Any) -> None:
        if when != "runtest" or self.current is None:
            return
        category = warning_message.category
        self.send(
            {
                "event": "warning",
                "nodeid": nodeid,
                "message": str(warning_message.message),
                "category": f"{category.__module__}.{category.__qualname__}",
                "filename": warning_message.filename,
                "lineno": warning_message.lineno,
            }
        )

    def pytest_mps_check_started(
        self, config: Any, item: Any, check: str, pipeline: str, pipeline_class: str
    ) -> None:
        """Say which check starts, so that a crash in it becomes that check's ``crashed`` result."""
        self.send(
            {
                "event": "started",
                "nodeid": item.nodeid,
                "check": check,
                "pipeline": pipeline,
                "pipeline_class": pipeline_class,
            }
        )

    def pytest_mps_result_recorded(self, config: Any, item: Any, result: Any) -> None:
        """Send the test's properties after each result, so that a crash later in the same test keeps
        the results recorded before it."""
        if item is not None:
            self.send({"event": "properties", "nodeid": item.nodeid, "data": list(item.user_properties)})


def _preload(names: Sequence[str]) -> None:
    """Import what the tests will need before saying ready (a failure is reported by the test that
    needs the module, with its own message)."""
    import importlib
    import traceback

    for name in names:
        try:
            module = importlib.import_module(str(name))
            if name == "diffusers":
                module.DiffusionPipeline  # noqa: B018 - the lazy import is the point
        except Exception:
            traceback.print_exc()


def _store_stats(config: Any) -> dict[str, Any] | None:
    """This worker's reference-store counts so far (the parent adds them to the session's)."""
    from pytest_mps.plugin.references import reference_setup

    try:
        store = reference_setup(config).store
    except KeyError:
        return None
    return store.stats() if store is not None else None


def _encoded_images(results: Sequence[Any]) -> dict[str, Any]:
    """The images of ``results`` for the parent's HTML report (PNG bytes as base64)."""
    from pytest_mps.reports.collect import image_sets

    return {
        key: [{name: base64.b64encode(data).decode("ascii") for name, data in pngs.items()}, facts]
        for key, (pngs, facts) in image_sets(results).items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Start the worker's pytest session (its spec comes from ``$PYTEST_MPS_ISOLATED_SPEC``)."""
    from pytest_mps.worker import start_worker_side

    spec = json.loads(os.environ.pop(SPEC_VARIABLE, "") or "{}")
    channel = start_worker_side()
    # Requests arrive on a private copy of stdin; a test that reads stdin gets an empty file.
    requests = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # pytest's terminal output has no reader here; what tests write is captured (tee-sys) or reaches
    # stderr, which the parent keeps.
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the whole process
    args = [str(a) for a in spec.get("args", [])]
    plugin = ServePlugin(channel, requests, spec)
    code = pytest.main(args, plugins=[plugin])
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
