"""Two pipelines of one class are told apart everywhere: results name a pipeline by its source (folder
name, hub id, factory) as well as its class, in the session table, the messages and the reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_mps.identity import label_for_source, name_pipeline, pipeline_label

from conftest import FIXTURES


class _Pipe:
    """A stand-in pipeline object (anything with ``components``)."""

    components: dict = {}  # noqa: RUF012 - a fake


def test_a_source_keeps_its_name_and_a_namesake_gets_a_suffix(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "model", tmp_path / "b" / "model"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    p1, p2, p3 = _Pipe(), _Pipe(), _Pipe()
    assert name_pipeline(p1, first) == "model"
    assert name_pipeline(p2, second) == "model-2"
    assert name_pipeline(p3, first) == "model"  # the same folder, loaded again
    assert pipeline_label(p2) == "model-2"


def test_unnamed_pipelines_of_one_class_alive_at_once_are_numbered() -> None:
    a, b = _Pipe(), _Pipe()
    assert pipeline_label(a) == "_Pipe"
    assert pipeline_label(b) == "_Pipe-2"
    assert pipeline_label(a) == "_Pipe"


def test_labels_of_sources() -> None:
    assert label_for_source(FIXTURES / "tiny-sd") == "tiny-sd"
    assert label_for_source("org/model-id") == "org/model-id"

    def make_pipe() -> None: ...

    assert label_for_source(make_pipe).endswith("make_pipe")


def test_two_folders_of_one_class_are_told_apart_in_the_table_and_reports(pytester: pytest.Pytester) -> None:
    other = pytester.path / "other-ddpm"
    shutil.copytree(FIXTURES / "tiny-ddpm", other)
    pytester.makepyfile(
        f"""
        from pytest_mps import assert_cpu_parity

        def test_first(mps_pipeline):
            assert_cpu_parity(mps_pipeline({str(FIXTURES / "tiny-ddpm")!r}))

        def test_second(mps_pipeline):
            assert_cpu_parity(mps_pipeline({str(other)!r}))
        """
    )
    result = pytester.runpytest("--mps-device", "cpu", "--mps-report-json", "r.json", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "tiny-ddpm (DDPMPipeline)   cpu_parity  passed*",
            "other-ddpm (DDPMPipeline)  cpu_parity  passed*",
            "verdicts:",
            "  tiny-ddpm: pre-check passed (cpu stand-in)*",
            "  other-ddpm: pre-check passed (cpu stand-in)*",
        ]
    )
    report = json.loads((pytester.path / "r.json").read_text())
    rows = {row["pipeline"]: row["classes"] for row in report["pipelines"]}
    assert rows == {"tiny-ddpm": ["DDPMPipeline"], "other-ddpm": ["DDPMPipeline"]}


def test_a_project_can_listen_to_results(pytester: pytest.Pytester) -> None:
    """``pytest_mps_result_recorded`` gives a conftest each final result."""
    pytester.makeconftest(
        """
        seen = []

        def pytest_mps_result_recorded(config, item, result):
            seen.append((item.name, result.check, result.status.value, result.pipeline))

        def pytest_terminal_summary(terminalreporter):
            terminalreporter.write_line(f"SEEN {seen}")
        """
    )
    pytester.makepyfile(
        f"""
        from pytest_mps import check_cpu_parity

        def test_a(mps_pipeline):
            check_cpu_parity(mps_pipeline({str(FIXTURES / "tiny-ddpm")!r}))
        """
    )
    result = pytester.runpytest("--mps-device", "cpu")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["SEEN [[]('test_a', 'cpu_parity', 'passed', 'tiny-ddpm')]"])


def test_a_pipeline_loaded_from_a_folder_is_the_same_source_as_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    loaded = _Pipe()
    loaded.name_or_path = str(tmp_path / "." / "model")  # type: ignore[attr-defined]
    named_by_path = _Pipe()
    assert name_pipeline(named_by_path, folder) == "model"
    assert pipeline_label(loaded) == "model"  # not "model-2": one source, spelt two ways


def test_names_are_unique_within_a_session_not_across_sessions(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A namesake still alive from an earlier session in this process (a cache, a traceback) does not
    push this session's pipeline to a ``-2`` suffix."""
    elsewhere = tmp_path / "elsewhere" / "tiny-ddpm"
    elsewhere.mkdir(parents=True)
    survivor = _Pipe()
    assert name_pipeline(survivor, elsewhere) in {"tiny-ddpm", "tiny-ddpm-2"}
    pytester.makepyfile(
        f"""
        from pytest_mps import check_cpu_parity

        def test_a(mps_pipeline):
            assert check_cpu_parity(mps_pipeline({str(FIXTURES / "tiny-ddpm")!r})).pipeline == "tiny-ddpm"
        """
    )
    result = pytester.runpytest("--mps-device", "cpu")
    result.assert_outcomes(passed=1)
    assert survivor is not None
