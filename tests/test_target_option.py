"""--mps-device, its ini key and environment variable: validation and precedence."""

from __future__ import annotations

import pytest

from pytest_mps.target import Target, TargetError, resolve_target

SHOW_TARGET = "def test_t(mps_target):\n    print('TARGET', mps_target.name, mps_target.requested)\n"


def test_target_line_without_mps(pytester: pytest.Pytester) -> None:
    """A run whose tests involve pytest-mps shows the target and environment line after collection."""
    pytester.makepyfile("import pytest\n\n@pytest.mark.mps\ndef test_a(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "collected 1 item",
            "mps: target none | MPS unavailable: MPS needs macOS on Apple silicon; this is Linux | Linux *",
        ]
    )


def test_a_run_of_plain_tests_shows_no_target_line(pytester: pytest.Pytester) -> None:
    """Nothing involves pytest-mps: no line (finding the environment would cost start-up time), and
    ``-q`` hides it where it would follow collection, as it hides pytest's header."""
    pytester.makepyfile("def test_a(): pass")
    # (in a fresh process: this one imported the emulated device, which involves pytest-mps)
    assert "mps:" not in pytester.runpytest_subprocess().stdout.str()
    pytester.makepyfile("import pytest\n\n@pytest.mark.mps\ndef test_a(): pass")
    assert "mps:" not in pytester.runpytest("-q").stdout.str()


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


def test_settings_are_frozen_records_of_the_options_with_their_defaults() -> None:
    """Settings has one field per option (and ``sources``); a field left out takes the option's
    default, the one place defaults live; no field can change after the run resolved it."""
    from pytest_mps.options import OPTIONS, Settings

    settings = Settings(steps=5, sources={"steps": "ini"})
    assert set(Settings.__annotations__) - {"sources"} == {opt.name for opt in OPTIONS}
    assert {opt.name: getattr(settings, opt.name) for opt in OPTIONS if opt.name != "steps"} == {
        opt.name: opt.default for opt in OPTIONS if opt.name != "steps"
    }
    assert (settings.steps, dict(settings.sources)) == (5, {"steps": "ini"})
    with pytest.raises(AttributeError, match="frozen"):
        settings.steps = 3  # type: ignore[misc]
    changed = settings._replace(device="cpu")
    assert (changed.device, changed.steps, settings.device) == ("cpu", 5, "auto")
    assert changed == Settings(device="cpu", steps=5, sources={"steps": "ini"}) != settings
    with pytest.raises(TypeError, match="no field stpes"):
        Settings(stpes=3)


def test_settings_and_options_copy_pickle_and_hash_as_named_tuples_did() -> None:
    import copy
    import pickle

    from pytest_mps.options import Settings, option

    settings = Settings(steps=3, sources={"steps": "ini"})
    for twin in (copy.copy(settings), copy.deepcopy(settings), pickle.loads(pickle.dumps(settings))):
        assert twin == settings and dict(twin.sources) == {"steps": "ini"}
    steps = option("steps")
    assert pickle.loads(pickle.dumps(steps)) == copy.copy(steps) == steps
    assert hash(copy.copy(steps)) == hash(steps) and {steps: 1}[copy.copy(steps)] == 1
