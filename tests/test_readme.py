"""The README's downstream test file runs as shown."""

from __future__ import annotations

import re

import pytest

from conftest import FIXTURES, REPO


def test_readme_first_test_runs(pytester: pytest.Pytester) -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# tests/test_my_pipeline_mps.py.*?)```", readme, re.S)
    assert code, "the README lost its first-test example"
    source = code.group(1).replace('"fixtures/tiny-sd"', repr(str(FIXTURES / "tiny-sd")))
    pytester.makepyfile(test_my_pipeline_mps=source)
    result = pytester.runpytest("--mps-device", "cpu", "--strict-markers")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["target: cpu (stand-in*: a pre-check on a stand-in, not an MPS verdict*"])
    pytester.runpytest().assert_outcomes(skipped=2)  # no MPS here: skipped, with the reason
