"""--mps-device, its ini key and environment variable: validation and precedence."""

from __future__ import annotations

import pytest

from pytest_mps.target import Target, TargetError, resolve_target

SHOW_TARGET = "def test_t(mps_target):\n    print('TARGET', mps_target.name, mps_target.requested)\n"


def test_header_line_without_mps(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["mps: target none | MPS unavailable: MPS needs macOS on Apple silicon; this is Linux | Linux *"]
    )


def test_header_marks_a_standin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest("--mps-device", "cpu")
    result.stdout.fnmatch_lines(["mps: target cpu (stand-in for mps: CPU against CPU, a dry run) | *"])


def test_unknown_device_on_the_command_line(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--mps-device", "metal")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*argument --mps-device: unknown target device 'metal'; choose one of auto, mps, emulated, *"]
    )


def test_unknown_device_in_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmps_device = gpu\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini mps_device: unknown target device 'gpu'; choose one of auto, mps, emulated*"]
    )


def test_unknown_device_in_environment(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_MPS_DEVICE", "tpu")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: $PYTEST_MPS_DEVICE: unknown target device 'tpu'; choose one of auto*"]
    )


def test_mps_where_unavailable_is_a_usage_error_with_the_reason(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--mps-device", "mps")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --mps-device mps: MPS is unavailable: MPS needs macOS on Apple silicon; this is Linux;*"]
    )


def test_cuda_where_unavailable_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--mps-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --mps-device cuda: torch * sees no cuda device*"])


def test_precedence_cli_over_env_over_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(SHOW_TARGET)
    pytester.makeini("[pytest]\nmps_device = mps\n")  # would be a usage error here if it won
    monkeypatch.setenv("PYTEST_MPS_DEVICE", "cpu")
    pytester.runpytest("-rP").stdout.fnmatch_lines(["TARGET cpu cpu*"])
    monkeypatch.delenv("PYTEST_MPS_DEVICE")
    pytester.makeini("[pytest]\nmps_device = cpu\n")
    pytester.runpytest("-rP").stdout.fnmatch_lines(["TARGET cpu cpu*"])
    pytester.runpytest("-rP", "--mps-device", "auto").stdout.fnmatch_lines(["TARGET none auto*"])


def test_mps_device_fixture_skips_without_target(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(mps_device):\n    pass\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs an MPS target: no MPS device (MPS needs macOS*"])


def test_auto_on_a_fake_mac_picks_real_mps(pytester: pytest.Pytester, fake_mac) -> None:
    fake_mac()
    pytester.makepyfile(
        "def test_a(mps_device, mps_target, mps_environment):\n"
        "    assert mps_device.type == 'mps'\n"
        "    assert mps_target.is_real_mps and not mps_target.is_standin and mps_target.label == 'mps'\n"
        "    assert mps_environment.usable\n"
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_targets_label_stand_ins() -> None:
    for name in ("cpu", "cuda", "xpu", "emulated"):
        target = Target(name, name)
        assert target.is_standin and "stand-in" in target.label
    assert not Target("mps", "auto").is_standin
    assert Target("none", "auto", "why").label == "none"


def test_resolve_target_rejects_unknown_names() -> None:
    with pytest.raises(TargetError, match="unknown target device 'gpu'; choose one of auto, mps"):
        resolve_target("gpu")
