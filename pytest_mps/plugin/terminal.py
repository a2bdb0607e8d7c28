"""What pytest-mps prints: the header line (target and environment, without importing torch), and at
the end the bundled suite's verdict table, the session table of a project's own checks, the
emulated-MPS notes, the references summary and where the reports went."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_mps.plugin.session import session_of

__all__ = ["header_lines", "summary"]


def header_lines(config: pytest.Config) -> list[str]:
    """pytest's header: the target and the environment in one line; the suite's plan when it runs."""
    session = session_of(config)
    target = session.target_if_cheap()
    if target is None:
        target_text = f"target {session.requested} (resolved on first use)"
    elif target.available:
        target_text = f"target {target.label}"
    else:
        target_text = "target none"
    lines = [f"mps: {target_text} | {session.cheap_environment().summary()}"]
    from pytest_mps.plugin.activation import SUITE_PART

    suite = config.pluginmanager.get_plugin(SUITE_PART)  # registered only where the suite runs
    if suite is not None:
        lines += suite.suite_header(config)
    return lines


def _suite_rows(config: pytest.Config) -> tuple[list[str], dict[str, list[dict[str, Any]]], dict, dict]:
    from pytest_mps.plugin.reports import collector_of
    from pytest_mps.plugin.suite import SUITE_PROPERTY

    collector = collector_of(config)
    results: dict[str, list[dict[str, Any]]] = {}
    skips: dict[str, dict[str, str]] = {}
    errors: dict[str, dict[str, str]] = {}
    labels: list[str] = []
    suite_tests: set[str] = set()
    for nodeid in collector.nodeids():
        key = collector.properties.get(nodeid, {}).get(SUITE_PROPERTY)
        if not key:
            continue
        suite_tests.add(nodeid)
        label, check = key.split("::", 1)
        if label not in labels:
            labels.append(label)
        if nodeid in collector.skip_reasons:
            skips.setdefault(label, {})[check] = collector.skip_reasons[nodeid]
        elif nodeid in collector.errors:
            errors.setdefault(label, {})[check] = collector.errors[nodeid]
    for nodeid, _, data in collector.records():
        if nodeid in suite_tests:
            results.setdefault(str(data.get("pipeline")), []).append(data)
    return labels, results, skips, errors


def _emulation_notes(config: pytest.Config, session: Any, collector: Any) -> list[str]:
    """The emulated device's notes of the whole run: the session's device, the devices suite checks
    entered for themselves (isolated workers; carried in their results), and the devices of the
    workers that ran a project's isolated tests or, under pytest-xdist, a share of the tests."""
    from pytest_mps.plugin.isolation import worker_emulation_notes
    from pytest_mps.plugin.xdist import xdist_hooks

    hooks = xdist_hooks(config)
    sources = [session.emulation_note_counts(), *worker_emulation_notes(config)]
    sources += hooks.emulation_notes() if hooks is not None else []
    records = collector.records()
    if records:  # (the emulation's module is imported only when something may carry notes)
        from pytest_mps.emulated_target import EMULATION_NOTES

        sources += [(data.get("details") or {}).get(EMULATION_NOTES) for _, _, data in records]
    counts: dict[str, int] = {}
    for carried in sources:
        if isinstance(carried, dict):
            for line, count in carried.items():
                counts[str(line)] = counts.get(str(line), 0) + (count if isinstance(count, int) else 1)
    if not counts:
        return []
    from pytest_mps.emulated_target import note_lines

    return note_lines(counts)


def summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Everything pytest-mps prints at the end of the run."""
    from pytest_mps.plugin.activation import is_worker
    from pytest_mps.plugin.references import reference_lines
    from pytest_mps.plugin.reports import collector_of, facts_of
    from pytest_mps.plugin.suite import SUITE_PROPERTY

    if is_worker(config):
        return
    session = session_of(config)
    collector = collector_of(config)
    labels, suite_results, skips, errors = _suite_rows(config)
    suite_ids = {n for n in collector.nodeids() if SUITE_PROPERTY in collector.properties.get(n, {})}
    own = [data for nodeid, _, data in collector.records() if nodeid not in suite_ids]
    if labels or own:  # the tables (and the registry they read) are imported only when there is one
        from pytest_mps.tables import session_table, target_heading, verdict_table
    if labels and (suite_results or skips or errors):
        target = session.target_if_cheap()
        every = [r for group in suite_results.values() for r in group]
        if target is not None and not target.available:
            heading = target_heading([], real_mps=False, available=False, reason=target.reason or "")
        else:
            shown = [str(r.get("target")) for r in every] or ([target.label] if target else [])
            heading = target_heading(shown, real_mps=bool(every) and all(r.get("real_mps") for r in every))
        name = target.name if target is not None and target.available else None
        terminalreporter.section("pytest-mps verdict")
        for line in verdict_table(
            labels, suite_results, skips=skips, errors=errors, heading=heading, target_name=name
        ):
            terminalreporter.write_line(line)
        if (
            every
            and not all(r.get("real_mps") for r in every)
            and any(str(r.get("check")) == "speed" for r in every)
        ):
            terminalreporter.write_line(
                "speed is information only on a stand-in: only real MPS is judged against the CPU"
            )
    notes = _emulation_notes(config, session, collector)
    if session.library_warnings:
        terminalreporter.section("pytest-mps: warnings raised inside libraries during checks")
        terminalreporter.write_line("(not failures, whatever -W says; each shown once)")
        for line, places in session.library_warnings.items():
            shown = ", ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else "")
            terminalreporter.write_line(f"  {line} ({shown})")
    if own or notes:
        terminalreporter.section("pytest-mps")
        if own:
            real = all(r.get("real_mps") for r in own)
            heading = target_heading([str(r.get("target")) for r in own], real_mps=real)
            for line in session_table(own, heading=heading):
                terminalreporter.write_line(line)
        if notes:
            terminalreporter.write_line(
                "emulated-MPS notes (no error on a Mac, but slower or less portable):"
            )
            for line in notes:
                terminalreporter.write_line(f"  {line}")
    lines = reference_lines(config, verbose=config.getoption("verbose", 0) > 0) + facts_of(config).messages
    if lines:
        terminalreporter.section("pytest-mps references and reports")
        for line in lines:
            terminalreporter.write_line(line)
