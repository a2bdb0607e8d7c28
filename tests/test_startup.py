"""pytest start-up stays cheap: the plugin imports no torch, diffusers or numpy until a test needs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

HEAVY = ("torch", "diffusers", "numpy", "transformers")

PROBE = """
import json, sys
import pytest
from _pytest.config import PytestPluginManager

scans = []
load = PytestPluginManager.load_setuptools_entrypoints

def counted(self, group, name=None):
    scans.append(name)
    return load(self, group, name)

PytestPluginManager.load_setuptools_entrypoints = counted

def ours(hook):
    return sorted(
        impl.plugin_name for impl in hook.get_hookimpls()
        if getattr(impl.function, "__module__", "").startswith("pytest_mps")
    )

class Probe:
    def pytest_sessionfinish(self, session):
        heavy = {heavy!r}
        out = {{name: name in sys.modules for name in heavy}}
        out["mps_loaded"] = session.config.pluginmanager.has_plugin("mps")
        out["entry_point_scans"] = len(scans)
        hook = session.config.hook
        out["per_test_hooks"] = {{
            name: ours(getattr(hook, name))
            for name in ("pytest_runtest_logreport", "pytest_runtest_protocol", "pytest_runtest_setup")
        }}
        print("\\nPROBE " + json.dumps(out))

code = pytest.main({args!r}, plugins=[Probe()])
print("\\nMODULES " + json.dumps(sorted(m for m in sys.modules if m.startswith("pytest_mps"))))
sys.exit(code)
"""


def _run(tmp_path: Path, test_source: str, *args: str) -> dict:
    (tmp_path / "test_x.py").write_text(test_source)
    script = PROBE.format(heavy=HEAVY, args=["-q", "-p", "no:cacheprovider", *args, str(tmp_path)])
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")), None)
    modules = next((ln for ln in out.stdout.splitlines() if ln.startswith("MODULES ")), None)
    assert line and modules, out.stdout + out.stderr
    return {**json.loads(line[len("PROBE ") :]), "modules": json.loads(modules[len("MODULES ") :])}


#: What a run of plain tests imports of pytest-mps, from start to end: the hooks, the options, the
#: run's state, the markers and the fixtures (each module pytest's assertion-rewriting importer loads
#: costs start-up time; the rest loads when a test involves pytest-mps: ``plugin/activation.py``).
DORMANT_MODULES = {
    "pytest_mps",
    "pytest_mps.options",
    "pytest_mps.plugin",
    "pytest_mps.plugin.activation",
    "pytest_mps.plugin.fixtures",
    "pytest_mps.plugin.hookspecs",
    "pytest_mps.plugin.markers",
    "pytest_mps.plugin.options",
    "pytest_mps.plugin.session",
}
#: The machinery a run loads when it wakes.
MACHINERY = {"pytest_mps.plugin.references", "pytest_mps.plugin.reports", "pytest_mps.reports.collect"}


def test_plain_run_imports_nothing_heavy(tmp_path: Path) -> None:
    seen = _run(
        tmp_path, "import pytest\n\n@pytest.mark.mps\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n"
    )
    assert seen["mps_loaded"]
    assert not any(seen[name] for name in HEAVY), seen


def test_cpu_target_and_markers_import_nothing_heavy(tmp_path: Path) -> None:
    seen = _run(
        tmp_path,
        "import pytest\n\n@pytest.mark.skip_mps\n@pytest.mark.mps_requires(torch='>=2')\n"
        "def test_a():\n    pass\n",
        "--mps-device",
        "cpu",
    )
    assert not any(seen[name] for name in HEAVY), seen


def test_device_fixture_imports_torch(tmp_path: Path) -> None:
    seen = _run(
        tmp_path, "def test_a(mps_device):\n    assert mps_device.type == 'cpu'\n", "--mps-device", "cpu"
    )
    assert seen["torch"]


def test_the_plugin_costs_pytest_no_extra_entry_point_scan(tmp_path: Path) -> None:
    """The plugin's parts are registered by the plugin itself: listed in ``pytest_plugins``, pytest would
    scan every installed distribution's entry points once per part (six scans, more than the rest of the
    plugin's start-up)."""
    with_plugin = _run(tmp_path, "def test_a():\n    pass\n")
    without = _run(tmp_path, "def test_a():\n    pass\n", "-p", "no:mps")
    assert with_plugin["mps_loaded"] and not without["mps_loaded"]
    assert with_plugin["entry_point_scans"] == without["entry_point_scans"], (with_plugin, without)


def test_plain_tests_pay_for_no_per_test_hook(tmp_path: Path) -> None:
    """A run of plain tests reads no test report, isolates nothing and notes no running test (a check
    such a test calls finds it by what pytest says is running)."""
    seen = _run(tmp_path, "def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    assert seen["per_test_hooks"] == {
        "pytest_runtest_logreport": [],
        "pytest_runtest_protocol": [],
        "pytest_runtest_setup": [],
    }, seen


@pytest.mark.parametrize(
    ("source", "args"),
    [
        ("import pytest\n\n@pytest.mark.skip_mps\ndef test_a():\n    pass\n", ()),
        ("def test_a(mps_target):\n    pass\n", ("--mps-device", "cpu")),
        ("def test_a():\n    pass\n", ("--mps-report-json", "out.json")),
        ("from pytest_mps.emulation import EmulatedMPS\n\ndef test_a():\n    pass\n", ()),
    ],
    ids=["a-marker", "a-fixture", "a-report", "the-emulated-device"],
)
def test_a_run_that_involves_the_plugin_reads_every_test_report(
    tmp_path: Path, source: str, args: tuple[str, ...]
) -> None:
    seen = _run(tmp_path, source, *args)
    assert seen["per_test_hooks"]["pytest_runtest_logreport"] == ["pytest-mps-test-reports"], seen
    assert seen["per_test_hooks"]["pytest_runtest_setup"] == ["pytest-mps-test-setup"], seen
    assert seen["per_test_hooks"]["pytest_runtest_protocol"] == [], seen


def test_isolation_adds_its_per_test_hook(tmp_path: Path) -> None:
    seen = _run(tmp_path, "def test_a():\n    pass\n", "--mps-isolate", "--mps-device", "cpu")
    assert seen["per_test_hooks"]["pytest_runtest_protocol"] == ["pytest-mps-isolation-protocol"], seen


def test_a_plain_test_that_calls_a_check_still_records_its_result(pytester: pytest.Pytester) -> None:
    """No marker, no fixture, nothing of pytest-mps imported at collection: the run is dormant until
    the check asks for its test's context, finds the test by what pytest says is running, and wakes;
    both results reach the session table (a plain test before them is not listed). In a fresh process:
    this one imported the emulated device, which would wake the run at collection."""
    pytester.makepyfile(
        f"""
        def _check():
            from diffusers import DDPMPipeline
            from pytest_mps import assert_cpu_parity

            assert_cpu_parity(DDPMPipeline.from_pretrained({str(FIXTURES / "tiny-ddpm")!r}))

        def test_plain():
            pass

        def test_calls_a_check():
            _check()

        def test_calls_it_again():
            _check()
        """
    )
    result = pytester.runpytest_subprocess("--mps-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    table = result.stdout.str().split("= pytest-mps =")[-1]
    assert table.count("cpu_parity") == 2, result.stdout.str()


def test_a_plain_run_imports_only_the_start_up_modules(tmp_path: Path) -> None:
    """No report, no reference, no terminal table, no suite, no isolation, no pytest-xdist part: a run
    of plain tests (pytest-xdist installed, not used) loads pytest-mps's start-up modules and no more,
    to its end (the verbose header included)."""
    seen = _run(tmp_path, "def test_a():\n    pass\n", "-v")
    assert set(seen["modules"]) == DORMANT_MODULES, seen["modules"]


@pytest.mark.parametrize(
    ("source", "args", "when"),
    [
        ("def test_a():\n    pass\n", ("--mps-report-json", "out.json"), "start"),
        ("def test_a():\n    pass\n", ("--mps-references", "refs"), "start"),
        ("import pytest\n\n@pytest.mark.mps\ndef test_a():\n    pass\n", (), "collection"),
        ("def test_a(mps_target):\n    pass\n", ("--mps-device", "cpu"), "collection"),
    ],
)
def test_a_run_that_involves_the_plugin_loads_its_machinery(
    tmp_path: Path, source: str, args: tuple[str, ...], when: str
) -> None:
    seen = _run(tmp_path, source, *args)
    assert set(seen["modules"]) >= MACHINERY, (when, seen["modules"])
    assert seen["per_test_hooks"]["pytest_runtest_logreport"] == ["pytest-mps-test-reports"], seen


def test_the_suite_part_is_registered_only_where_the_suite_runs(tmp_path: Path) -> None:
    """The bundled suite's hooks and fixtures join when pytest collects its module (here without
    pipelines: every check is a skip with the reason), not in a project's own run."""
    plain = _run(tmp_path, "def test_a():\n    pass\n")
    assert "pytest_mps.plugin.suite" not in plain["modules"]
    (tmp_path / "test_x.py").unlink()
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--pyargs"]
    out = subprocess.run(
        [*command, "pytest_mps.suite"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert "no pipelines to check: pass --mps-pipelines PATH" in out.stdout, out.stdout + out.stderr
    assert " skipped" in out.stdout and "error" not in out.stdout.lower(), out.stdout


def test_pytest_xdist_options_that_distribute_nothing_leave_the_run_dormant(tmp_path: Path) -> None:
    """``--dist`` without ``-n`` (an ``addopts`` habit) sends no test anywhere: pytest-xdist's own rule."""
    seen = _run(tmp_path, "def test_a():\n    pass\n", "--dist", "loadgroup")
    assert set(seen["modules"]) == DORMANT_MODULES, seen["modules"]


def test_a_run_that_wakes_inside_a_pytester_test_ends_cleanly(pytester: pytest.Pytester) -> None:
    """pytester restores ``sys.modules`` when its test ends, so the modules a run first imported in
    that test are imported afresh at the session's end: their state must still be found there."""
    pytester.makeconftest('pytest_plugins = ["pytester"]\n')
    pytester.makepyfile(
        """
        from pytest_mps.context import current_context
        from pytest_mps.results import CheckResult

        def test_records_inside(pytester):
            current_context().record(CheckResult(check="cpu_parity", pipeline="p", target="cpu"))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str(), result.stdout.str()
    result.assert_outcomes(passed=1)
    assert result.ret == 0
