"""The README's downstream test file runs as shown."""

from __future__ import annotations

import re

import pytest

from conftest import FIXTURES, REPO


def test_readme_first_test_runs(pytester: pytest.Pytester) -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# tests/test_my_pipeline_mps.py.*?)```", readme, re.S)
    assert code, "the README lost its first-test example"
    source = code.group(1).replace(
        'Path(__file__).parent.parent / "fixtures" / "tiny-sd"', repr(str(FIXTURES / "tiny-sd"))
    )
    assert repr(str(FIXTURES / "tiny-sd")) in source, "the README's first test no longer names its pipeline"
    pytester.makepyfile(test_my_pipeline_mps=source)
    result = pytester.runpytest("--mps-device", "cpu", "--strict-markers", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["target: cpu (stand-in*: a pre-check on a stand-in, not an MPS verdict*"])
    # The session table the README shows is this run's (differences below 1e-4, and so which batch item
    # is the worse, follow the number of threads).
    table = re.search(r"```\n=+ pytest-mps =+\n(.*?)```", readme, re.S)
    assert table, "the README lost its session-table example"
    shown = table.group(1).strip().splitlines()
    out = result.stdout.lines
    start = out.index(shown[0])

    def masked(line: str) -> str:
        return re.sub(r"worst item \(\d\)", "worst item (i)", re.sub(r"\d\.\d+e-0[5-9]", "<1e-4", line))

    assert [masked(line) for line in out[start : start + len(shown)]] == [masked(line) for line in shown]
    pytester.runpytest().assert_outcomes(skipped=2)  # no MPS here: skipped, with the reason
