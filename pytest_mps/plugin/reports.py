"""Collecting the run's results and writing the reports (``--mps-report-json PATH``,
``--mps-report-md PATH``, ``--mps-report-html DIR`` and their ini keys), once, at the end, by the
controller. Results are read from test reports' ``user_properties`` (serial runs and pytest-xdist
workers alike), in collection order, so a ``-n N`` run gives the same report as a serial one."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from pytest_mps.plugin.activation import FACTS_KEY, distributes, is_worker, wake
from pytest_mps.plugin.session import session_of
from pytest_mps.reports.collect import ResultCollector

__all__ = ["RunFacts", "collector_of", "facts_of"]


@dataclass
class RunFacts:
    """What the run's end needs to know: the results as they arrived, and whether the whole suite ran."""

    collector: ResultCollector = field(default_factory=ResultCollector)
    started: float = field(default_factory=time.time)
    deselected: int = 0
    collection_errors: int = 0
    messages: list[str] = field(default_factory=list)
    receipt_failed: bool = False


def facts_of(config: pytest.Config) -> RunFacts:
    """The run's :class:`RunFacts` (asking for them wakes a dormant run: see :mod:`.activation`)."""
    facts = config.stash.get(FACTS_KEY, None)
    if facts is None:
        wake(config)
        facts = config.stash[FACTS_KEY]
    return facts


def collector_of(config: pytest.Config) -> ResultCollector:
    """The run's result collector."""
    return facts_of(config).collector


def install(config: pytest.Config) -> None:
    """Start collecting for this run (and refuse a receipt that could not be signed); done once, by
    :func:`~pytest_mps.plugin.activation.wake`."""
    check_receipt_key(config)
    config.stash[FACTS_KEY] = RunFacts()
    config.pluginmanager.register(CollectingHooks(config), "pytest-mps-collecting")
    if reads_reports_from_the_start(config):
        read_test_reports(config)


def reads_reports_from_the_start(config: pytest.Config) -> bool:
    """Whether the run needs every test's reports whatever its tests are: it writes a report or a
    receipt, keeps references in a folder (their unused ones are listed only after a whole run), or
    is a pytest-xdist controller (its workers' results arrive as reports). Any other run starts
    reading reports when a collected test involves pytest-mps or a result is recorded
    (:func:`~pytest_mps.plugin.activation.involves_mps`, :meth:`MPSSession.record
    <pytest_mps.plugin.session.MPSSession.record>`): a run of plain tests pays nothing per test."""
    from pytest_mps.plugin.references import reference_setup

    settings = session_of(config).settings
    if settings.writes_report:
        return True
    if reference_setup(config).mode == "folder":
        return True
    return distributes(config)


def read_test_reports(config: pytest.Config) -> None:
    """From now on, take every test report (once per run; each later call does nothing); a dormant run
    wakes."""
    wake(config)
    if not reads_test_reports(config):
        config.pluginmanager.register(ReportHooks(config), _READING)


def reads_test_reports(config: pytest.Config) -> bool:
    """Whether the run takes every test report now."""
    return config.pluginmanager.get_plugin(_READING) is not None


_READING = "pytest-mps-test-reports"


class CollectingHooks:
    """The hooks that gather the run's facts, bound to one run's config (some hooks get none); none
    runs once per test. (The collection's order and whether it involves pytest-mps are
    :mod:`.activation`'s.)"""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.facts = facts_of(config)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.facts.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.facts.collection_errors += 1


class ReportHooks:
    """The per-test hook: each test report's results and facts go to the run's collector (registered
    when the run needs them: :func:`reads_reports_from_the_start`,
    :func:`~pytest_mps.plugin.activation.involves_mps`)."""

    def __init__(self, config: pytest.Config) -> None:
        self.collector = facts_of(config).collector
        self.session = session_of(config)

    @pytest.hookimpl(tryfirst=True)  # before JUnit XML and pytest-xdist read the report
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        when = report.when
        if when == "teardown":
            self.session.current_item = None
        elif when == "call" and report.outcome == "failed":
            from pytest_mps.plugin.running_test import note_crash

            note_crash(report)
        self.collector.add_report(report)


def whole_suite(config: pytest.Config, session: pytest.Session, exitstatus: int) -> str:
    """Why this run does not cover the whole suite ("" when it does)."""
    from pytest_mps.plugin.xdist import xdist_hooks

    facts = facts_of(config)
    hooks = xdist_hooks(config)
    outputs = hooks.worker_outputs if hooks is not None else []
    deselected = facts.deselected + sum(o.get("deselected", 0) for o in outputs)
    if deselected:
        return f"{deselected} tests deselected"
    if facts.collection_errors:
        return "collection errors"
    if session.shouldfail or session.shouldstop or int(exitstatus) not in (0, 1):
        return "the run stopped early"
    not_run = facts.collector.not_run()
    if not_run:
        return f"{len(not_run)} collected tests did not run"
    if config.getoption("lf", False):
        return "--lf"
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        testpaths = [str(p) for p in config.getini("testpaths") or []]
        if not testpaths or sorted(config.args) != sorted(testpaths):
            return "tests were named on the command line"
    return ""


def _worker_field(config: pytest.Config, name: str) -> Any:
    from pytest_mps.plugin.xdist import xdist_hooks

    hooks = xdist_hooks(config)
    for output in hooks.worker_outputs if hooks is not None else []:
        if output.get(name):
            return output[name]
    return None


def _environment(config: pytest.Config) -> dict[str, Any]:
    session = session_of(config)
    from_worker = _worker_field(config, "environment")
    if from_worker:
        return dict(from_worker)
    env = session.environment if "torch" in sys.modules else session.cheap_environment()
    return env.to_dict()


def _target(config: pytest.Config, checks: list[dict[str, Any]]) -> dict[str, Any]:
    session = session_of(config)
    from_worker = _worker_field(config, "target")
    if from_worker:
        return dict(from_worker)
    target = session.target_if_cheap()
    if target is not None:
        return {"label": target.label, "real_mps": target.is_real_mps}
    if checks:
        return {"label": str(checks[0].get("target")), "real_mps": bool(checks[0].get("real_mps"))}
    return {"label": f"{session.requested} (not resolved: no check ran)", "real_mps": False}


def write_reports(config: pytest.Config, exitstatus: int) -> None:
    """Write the reports the settings ask for, from every result of the run."""
    settings = session_of(config).settings
    if not settings.writes_report:
        return  # before the imports: a run that writes no report does not pay for them
    from pytest_mps.plugin.references import reference_summary
    from pytest_mps.plugin.xdist import xdist_hooks
    from pytest_mps.reports.collect import image_key
    from pytest_mps.reports.html import single_file, write_html_report
    from pytest_mps.reports.json_report import write_json
    from pytest_mps.reports.markdown import write_markdown
    from pytest_mps.reports.model import build_report

    facts = facts_of(config)
    checks, images = [], {}
    for index, (nodeid, ordinal, data) in enumerate(facts.collector.records()):
        checks.append({**data, "source": 0, "images": None})
        encoded = facts.collector.images.get(image_key(nodeid, ordinal))
        if encoded is not None:
            images[index] = encoded
    hooks = xdist_hooks(config)
    source = {
        "name": "session",
        "created": datetime.fromtimestamp(facts.started, timezone.utc).isoformat(timespec="seconds"),
        "duration": round(time.time() - facts.started, 3),
        "exitstatus": int(exitstatus),
        "target": _target(config, checks),
        "environment": _environment(config),
        "xdist_workers": hooks.workers if hooks is not None else 0,
        "references": reference_summary(config),
    }
    report = build_report(checks, [source])
    html = settings.report_html
    if html is not None:
        facts.messages.append(f"HTML report: {write_html_report(report, html, images)}")
    if settings.report_json is not None:
        root = html if html is not None and not single_file(html) else None
        facts.messages.append(f"JSON report: {write_json(report, settings.report_json, images_root=root)}")
    if settings.report_md is not None:
        facts.messages.append(f"Markdown report: {write_markdown(report, settings.report_md)}")
    if settings.receipt is not None:
        sign_receipt(config, report)


def check_receipt_key(config: pytest.Config) -> None:
    """With ``--mps-receipt``: a usage error at once, before anything runs, when there is no key to sign
    with."""
    settings = session_of(config).settings
    if settings.receipt is None:
        return
    from pytest_mps.receipts import default_signing_key

    key = settings.receipt_key
    if key is not None and not key.expanduser().exists():
        raise pytest.UsageError(f"--mps-receipt-key {key}: no such file; give the SSH key to sign with")
    if key is None and default_signing_key() is None:
        raise pytest.UsageError(
            "--mps-receipt: no SSH key to sign with: pass --mps-receipt-key ~/.ssh/id_ed25519 "
            "(make one with ssh-keygen -t ed25519)"
        )


def sign_receipt(config: pytest.Config, report: dict[str, Any]) -> None:
    """Sign the run's verdict and figures into the receipt the settings ask for; a failure is a line
    in the summary and the run's exit status 4 (the receipt was asked for and is missing)."""
    from pytest_mps.receipts import ReceiptError, describe_written, write_receipt

    settings = session_of(config).settings
    facts = facts_of(config)
    outputs = [p for p in (settings.report_json, settings.report_md, settings.report_html) if p is not None]
    try:
        files = write_receipt(
            report, settings.receipt, pipelines=settings.pipelines, key=settings.receipt_key, exclude=outputs
        )
    except ReceiptError as exc:
        facts.messages.append(f"receipt not written: {exc}")
        facts.receipt_failed = True
        return
    facts.messages.append(describe_written(files))


def send_to_controller(config: pytest.Config) -> None:
    """In a pytest-xdist worker: what the controller needs besides the test reports."""
    from pytest_mps.plugin.references import reference_setup
    from pytest_mps.plugin.xdist import WORKER_KEY
    from pytest_mps.reports.collect import image_sets

    session = session_of(config)
    store = reference_setup(config).built_store
    output: dict[str, Any] = {
        "deselected": facts_of(config).deselected,
        "references": store.stats() if store is not None else None,
        "images": image_sets(session.results) if session.settings.report_html is not None else {},
        "library_warnings": session.library_warnings,
        "emulation_notes": session.emulation_note_counts(),
    }
    if session.results:
        output["environment"] = session.environment.to_dict()
        output["target"] = {"label": session.target.label, "real_mps": session.target.is_real_mps}
    config.workeroutput[WORKER_KEY] = output  # type: ignore[attr-defined]


def finish(config: pytest.Config, session: pytest.Session, exitstatus: int) -> None:
    """The end of the run: a worker sends its part to the controller; the controller (or a serial run)
    lists unused references and writes the reports."""
    from pytest_mps.plugin.references import find_unused, reference_setup
    from pytest_mps.plugin.xdist import xdist_hooks

    if is_worker(config):
        send_to_controller(config)
        return
    from pytest_mps.plugin import isolation, suite

    setup = reference_setup(config)
    hooks = xdist_hooks(config)
    setup.worker_stats = suite.worker_reference_stats(config) + isolation.worker_reference_stats(config)
    if hooks is not None:
        setup.worker_stats += [o["references"] for o in hooks.worker_outputs if o.get("references")]
    if setup.mode == "folder" and setup.folder is not None:
        from pytest_mps.reports.atomic import remove_stale_temporaries

        remove_stale_temporaries(setup.folder)
        find_unused(config, whole_suite(config, session, exitstatus))
    mps = session_of(config)
    if mps.results and mps.settings.report_html is not None:
        from pytest_mps.reports.collect import image_sets

        facts_of(config).collector.images.update(image_sets(mps.results))
    write_reports(config, exitstatus)
    if facts_of(config).receipt_failed:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
