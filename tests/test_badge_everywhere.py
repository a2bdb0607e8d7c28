"""The MPS badge is decided once (pytest_mps.verdict.pipeline_verdict): a real-MPS run in which only some
checks ran never earns it in the terminal tables either (the reports and merge are tested with them)."""

from __future__ import annotations

import pytest
from test_reports import full_run, result

from pytest_mps.tables import session_table, verdict_table


def _table(results) -> list[str]:
    return verdict_table(["p"], {"p": [r.to_dict() for r in results]}, heading="target: mps: an MPS verdict")


def test_the_suite_table_awards_the_badge_only_for_a_full_pass() -> None:
    assert _table(full_run("p"))[3].endswith("earns the MPS badge (2.00x faster than the CPU)")
    partial = _table(full_run("p", drop=("schedulers", "speed")))[3]
    assert "badge (" not in partial
    assert partial.endswith(
        "no badge yet: schedulers, speed not run on MPS (the badge needs every required check)"
    )


def test_the_session_table_never_awards_a_badge_to_a_partial_real_mps_run() -> None:
    lines = session_table([result(real_mps=True, pipeline="p").to_dict()], heading="target: mps")
    assert lines[-1].startswith("  p: no badge yet: load, inference, batch")
    assert not any("earns the MPS badge" in line for line in lines)


def test_a_real_mps_session_that_only_checked_parity_prints_no_badge(pytester: pytest.Pytester) -> None:
    """A Mac test session (faked: results recorded as real MPS would record them) that called only the
    parity check: the terminal says which checks the badge still needs."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def record(request):
            from pytest_mps.plugin import session_of
            from pytest_mps.results import CheckResult

            def add(check):
                result = CheckResult(check=check, target="mps", real_mps=True, pipeline="sd", summary="ok")
                session_of(request.config).record(request.node, result)

            return add
        """
    )
    pytester.makepyfile("def test_parity(record):\n    record('cpu_parity')\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["target: mps: an MPS verdict", "verdicts:", "  sd: no badge yet: load, *"])
    assert "earns the MPS badge" not in result.stdout.str()


def test_names_of_0_1_still_work_for_one_release_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    from pytest_mps.results import CheckResult
    from pytest_mps.verdict import Status

    with pytest.warns(DeprecationWarning, match="passed="):
        old = CheckResult("cpu_parity", passed=False)
    assert old.status is Status.FAILED
    for name in ("pytest_mps.report_plugin", "pytest_mps.summary"):
        sys.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match="deprecated"):
            module = importlib.import_module(name)
        assert module.__all__
