"""The markers' outcomes and reasons, in real pytest runs, without MPS and on a faked Mac."""

from __future__ import annotations

import pytest

MARKED_TESTS = """
import pytest

@pytest.mark.mps
def test_needs_target():
    pass

@pytest.mark.skip_mps(reason="kernel bug pytorch#133520")
def test_not_on_mps():
    pass

@pytest.mark.mps_requires(macos=">=15")
def test_new_macos():
    pass

@pytest.mark.mps_requires(torch=">=99")
def test_future_torch():
    pass

@pytest.mark.mps_requires(memory_gb=64)
def test_big_memory():
    pass

@pytest.mark.xfail_mps(reason="float64 in scheduler")
def test_fails_on_mps():
    assert False

def test_plain():
    pass
"""


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """test name -> outcome word, from `-rA`-less verbose output."""
    found = {}
    for line in result.outlines:
        if "::" in line and any(w in line for w in ("PASSED", "FAILED", "SKIPPED", "XFAIL", "XPASS")):
            name, _, rest = line.partition(" ")
            if "::" in name and rest:
                found[name.split("::")[-1]] = rest.split()[0]
    return found


def test_without_mps_marked_tests_skip_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MARKED_TESTS)
    result = pytester.runpytest("-v", "-rs", "--strict-markers")
    assert outcomes(result) == {
        "test_needs_target": "SKIPPED",
        "test_not_on_mps": "PASSED",
        "test_new_macos": "SKIPPED",
        "test_future_torch": "SKIPPED",
        "test_big_memory": "SKIPPED",
        "test_fails_on_mps": "FAILED",  # no MPS target: xfail_mps does not apply
        "test_plain": "PASSED",
    }
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]*] test_*.py:*: needs an MPS target: no MPS device (MPS needs macOS on Apple silicon;"
            " this is Linux); pass --mps-device emulated, cuda or cpu for a stand-in run"
        ]
    )


def test_on_a_fake_mac(pytester: pytest.Pytester, fake_mac) -> None:
    fake_mac(macos="14.5", memory_gb=32)
    pytester.makepyfile(MARKED_TESTS)
    result = pytester.runpytest("-v", "-rsx", "--strict-markers")
    assert outcomes(result) == {
        "test_needs_target": "PASSED",
        "test_not_on_mps": "SKIPPED",
        "test_new_macos": "SKIPPED",
        "test_future_torch": "SKIPPED",
        "test_big_memory": "SKIPPED",
        "test_fails_on_mps": "XFAIL",
        "test_plain": "PASSED",
    }
    result.stdout.fnmatch_lines_random(
        [
            "*skipped on mps: kernel bug pytorch#133520",
            "*requires macOS>=15 (this is macOS 14.5) [[]mps_requires]",
            "*requires torch>=99 (installed: 2.*) [[]mps_requires]",
            "*requires 64 GB of memory (this machine: 32 GB) [[]mps_requires]",
            "XFAIL *test_fails_on_mps - [[]xfail_mps] float64 in scheduler",
        ]
    )


def test_header_on_a_fake_mac(pytester: pytest.Pytester, fake_mac) -> None:
    fake_mac(macos="14.5", memory_gb=32)
    pytester.makepyfile("import pytest\n\n@pytest.mark.mps\ndef test_a(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["mps: target mps | MPS available | macOS 14.5 arm64, Python *, torch 2.*"])


def test_macos_requirement_only_applies_to_real_mps(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MARKED_TESTS)
    result = pytester.runpytest("-v", "--mps-device", "cpu")
    seen = outcomes(result)
    assert seen["test_new_macos"] == "PASSED"  # cpu stand-in: there is no macOS to require
    assert seen["test_needs_target"] == "PASSED"
    assert seen["test_not_on_mps"] == "PASSED"
    assert seen["test_future_torch"] == "SKIPPED"


@pytest.mark.parametrize(
    ("marks", "macos", "expected"),
    [
        ('@pytest.mark.xfail_mps(macos="<15")', "14.5", "xfailed"),
        ('@pytest.mark.xfail_mps(macos="<14")', "14.5", "failed"),  # outside the range: a real failure
        ('@pytest.mark.xfail_mps(torch="<2.0")', "14.5", "failed"),
        ("@pytest.mark.xfail_mps(raises=ValueError)", "14.5", "failed"),  # AssertionError is not ValueError
        ("@pytest.mark.xfail_mps(raises=AssertionError)", "14.5", "xfailed"),
    ],
)
def test_xfail_mps_ranges(pytester: pytest.Pytester, fake_mac, marks: str, macos: str, expected: str) -> None:
    fake_mac(macos=macos)
    pytester.makepyfile(f"import pytest\n\n{marks}\ndef test_a():\n    assert False\n")
    pytester.runpytest().assert_outcomes(**{expected: 1})


def test_xfail_mps_is_strict_by_default(pytester: pytest.Pytester, fake_mac) -> None:
    fake_mac()
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.xfail_mps\ndef test_a():\n    pass\n\n"
        "@pytest.mark.xfail_mps(strict=False)\ndef test_b():\n    pass\n"
    )
    result = pytester.runpytest("-rX")
    result.assert_outcomes(failed=1, xpassed=1)
    result.stdout.fnmatch_lines(["*XPASS(strict)*"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("mps(1)", "@pytest.mark.mps: takes no positional arguments, got 1"),
        ("mps(device='cuda')", "@pytest.mark.mps: unknown argument 'device'; expected no arguments"),
        ("mps_requires(macOS='>=13')", "unknown argument 'macOS'; expected macos, torch, memory_gb"),
        ("mps_requires()", "needs at least one of macos=, torch=, memory_gb="),
        ("mps_requires(macos='thirteen')", "macos='thirteen' is not a valid version specifier"),
        ("mps_requires(torch=2.0)", "torch= must be a version specifier string such as '>=13', got 2.0"),
        ("mps_requires(memory_gb='64GB')", "memory_gb= must be a positive number of gigabytes, got '64GB'"),
        ("xfail_mps(strict='yes')", "strict= must be True or False, got 'yes'"),
        ("xfail_mps(raises='ValueError')", "raises= must be an exception class or a tuple of them"),
        ("skip_mps(reason=3)", "reason= must be a string, got int"),
        ("mps_tolerance(atol=-1)", "atol= must be a finite, non-negative number, got -1"),
        ("mps_tolerance(tol=1)", "unknown argument 'tol'"),
    ],
)
def test_malformed_markers_are_collection_errors(
    pytester: pytest.Pytester, marker: str, message: str
) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_a():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*test_a: *{message}*"])
    assert "Traceback" not in result.stdout.str()


def test_malformed_class_marker_names_each_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.skip_mps('a', 'b')\nclass TestX:\n"
        "    def test_a(self):\n        pass\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*TestX::test_a: @pytest.mark.skip_mps: takes no positional arguments, got 2*"]
    )


def test_strict_markers_accepts_all_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.mps
        @pytest.mark.skip_mps(reason="r")
        @pytest.mark.mps_requires(macos=">=13", torch=">=2.0", memory_gb=8)
        @pytest.mark.xfail_mps(reason="r", macos="<14", torch="<2.1", raises=ValueError, strict=True)
        @pytest.mark.mps_tolerance(atol=1e-3)
        def test_a():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", "--mps-device", "cpu")
    result.assert_outcomes(passed=1)
    listed = pytester.runpytest("--markers").stdout.str()
    for name in ("mps:", "skip_mps(", "mps_requires(", "xfail_mps(", "mps_tolerance("):
        assert f"@pytest.mark.{name}" in listed


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n\n@pytest.mark.mps\ndef test_a():\n    pass\n")
    # A subprocess: in-process runs share pytest's global mark registry with this session.
    result = pytester.runpytest_subprocess("-p", "no:mps", "--strict-markers")
    result.stdout.fnmatch_lines(["*'mps' not found in `markers` configuration option*"])
