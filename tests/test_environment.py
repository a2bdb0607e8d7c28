"""Environment detection on this Linux machine and on faked Macs."""

from __future__ import annotations

import pytest

from pytest_mps.environment import detect_environment


def test_linux_is_unusable_without_importing_torch() -> None:
    env = detect_environment(probe_torch=None)
    assert env.os_name == "Linux"
    assert env.mps_built is False and env.mps_available is False
    assert env.unusable_reason == "MPS needs macOS on Apple silicon; this is Linux"
    assert not env.usable
    assert env.torch_version and env.torch_version.startswith("2.")
    assert env.memory_gb and env.memory_gb > 1


def test_summary_is_one_line_with_versions() -> None:
    line = detect_environment().summary()
    assert "\n" not in line
    assert "MPS unavailable: MPS needs macOS" in line
    assert "torch 2." in line and "diffusers " in line and "PYTORCH_ENABLE_MPS_FALLBACK=unset" in line


def test_fallback_variable_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    env = detect_environment()
    assert env.fallback_enabled
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1" in env.summary()


def test_fake_mac_with_mps_is_usable(fake_mac) -> None:
    fake_mac(macos="14.5", memory_gb=32)
    env = detect_environment(probe_torch=True)
    assert env.usable, env.unusable_reason
    assert env.macos_version == "14.5" and env.machine_arch == "arm64" and env.memory_gb == 32
    assert env.summary().startswith("MPS available | macOS 14.5 arm64")


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        ({"rosetta": True}, "Python is x86_64 under Rosetta on an arm64 Mac"),
        ({"arm64": False}, "this Mac has a x86_64 processor; MPS needs Apple silicon"),
        ({"macos": "12.3"}, "macOS 12.3 is older than the 12.6 that MPS needs"),
        # torch 2.9+ needs macOS 14 (the installed torch is 2.13).
        ({"macos": "13.4"}, "macOS 13.4 is older than the 14.0 that torch 2.9+ needs for MPS"),
        ({"built": False, "available": False}, "was built without MPS"),
        ({"available": False}, "torch.backends.mps.is_available() is False"),
    ],
)
def test_fake_mac_reasons(fake_mac, fake: dict, reason: str) -> None:
    fake_mac(**fake)
    env = detect_environment(probe_torch=True)
    assert not env.usable
    assert env.unusable_reason is not None and reason in env.unusable_reason


def test_torch_built_without_mps_names_the_build(fake_mac) -> None:
    fake_mac(built=False, available=False)
    env = detect_environment(probe_torch=True)
    assert env.unusable_reason == f"torch {env.torch_version} was built without MPS"


def test_environment_is_frozen_and_exported() -> None:
    import dataclasses

    import pytest_mps

    env = pytest_mps.detect_environment()
    assert isinstance(env, pytest_mps.MPSEnvironment)
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.os_name = "Darwin"  # type: ignore[misc]
    assert env.to_dict()["usable"] is False
