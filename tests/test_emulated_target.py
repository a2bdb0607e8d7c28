"""The emulated target in real pytest sessions: existing tests and checks run unchanged, MPS-only
faults are caught, and an emulated Metal abort is a reported crash, not a dead pytest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import FIXTURES

DDPM = str(FIXTURES / "tiny-ddpm")

FLOAT64_SCHEDULER = """
import torch
from diffusers import EulerDiscreteScheduler


class Float64Scheduler(EulerDiscreteScheduler):
    # Timesteps made float64 unconditionally (the recurring Diffusers regression): on MPS this raises.
    def set_timesteps(self, num_inference_steps, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        self.timesteps = self.timesteps.to(torch.float64)
"""


def test_existing_tests_run_unchanged(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        import torch
        from pytest_mps import assert_cpu_parity, assert_deterministic

        @pytest.mark.mps
        def test_device(mps_device, mps_target):
            x = torch.ones(2, device=mps_device)
            assert x.is_mps and x.device.type == "mps"
            assert torch.backends.mps.is_available() and torch.backends.mps.is_built()
            assert mps_target.label.startswith("emulated mps (stand-in")
            torch.mps.synchronize()
            torch.mps.empty_cache()

        @pytest.mark.mps
        def test_pipeline(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            assert pipe.device.type == "mps"
            r = assert_cpu_parity(pipe)
            assert r.comparisons["target vs cpu"].max_abs == 0.0
            assert_deterministic(pipe)

        @pytest.mark.skip_mps(reason="not on MPS")
        def test_skipped():
            pass
        """
    )
    result = pytester.runpytest("--mps-device", "emulated", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        ["*skipped on emulated mps (stand-in: MPS rules, CPU arithmetic): not on MPS"]
    )


def test_torch_is_restored_after_the_session(pytester: pytest.Pytester) -> None:
    import torch

    before = (torch.backends.mps.is_available, torch.Tensor.to, torch.Generator)
    pytester.makepyfile("def test_a(mps_device):\n    pass\n")
    pytester.runpytest("--mps-device", "emulated").assert_outcomes(passed=1)
    assert (torch.backends.mps.is_available, torch.Tensor.to, torch.Generator) == before
    assert not torch.backends.mps.is_available()


def test_mps_only_numeric_fault_fails_parity(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        from pytest_mps import assert_cpu_parity

        def test_kernel_bug(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            # a "silent kernel bug": only tensors on the MPS device are off by 10%
            def hook(module, args, out):
                return type(out)(sample=out.sample * 1.1) if out.sample.is_mps else out
            pipe.unet.register_forward_hook(hook)
            assert_cpu_parity(pipe)
        """
    )
    result = pytester.runpytest("--mps-device", "emulated")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E * AssertionError: cpu_parity FAILED on emulated mps*", "*exceeds atol 0.03*"]
    )


@pytest.mark.parametrize("device", ["emulated", "cpu"])
def test_float64_scheduler_fails_the_sweep(pytester: pytest.Pytester, device: str) -> None:
    pytester.makepyfile(float64_scheduler=FLOAT64_SCHEDULER)
    pytester.makepyfile(
        f"""
        from diffusers import EulerDiscreteScheduler
        from float64_scheduler import Float64Scheduler
        from pytest_mps import assert_schedulers_compatible

        def test_sweep(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            assert_schedulers_compatible(pipe, schedulers=[EulerDiscreteScheduler, Float64Scheduler])
        """
    )
    result = pytester.runpytest("--mps-device", device, "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: schedulers FAILED on * 1/2 schedulers pass (failed: Float64Scheduler)",
            "*Float64Scheduler: *float64*",
        ]
    )


def test_oversized_buffer_is_a_reported_crash(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch

        def test_huge(mps_device):
            torch.empty(2**31, 3, dtype=torch.float32, device=mps_device)  # 24 GiB: never allocated

        def test_after(mps_device):
            assert torch.ones(1, device=mps_device).is_mps
        """
    )
    result = pytester.runpytest("--mps-device", "emulated", "-rA")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*MPSAbortError*",
            "*pytest-mps crash*",
            "CRASH: on a Mac this aborts the whole process (SIGABRT): *",
        ]
    )


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_missing_kernel_error_and_fallback_note(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, isolate: bool
) -> None:
    """In process, or in an isolated worker whose notes reach this session's summary."""
    pytester.makepyfile(
        """
        import torch
        import torch.nn.functional as F

        def test_pool3d(mps_device):
            x = torch.ones(1, 1, 4, 4, 4, device=mps_device)
            assert F.adaptive_avg_pool3d(x, 2).is_mps
        """
    )
    mode = ["--mps-isolate"] if isolate else []
    result = pytester.runpytest_subprocess("--mps-device", "emulated", *mode)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["E * NotImplementedError: The operator 'aten::_adaptive_avg_pool3d' is not *"]
    )
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    result = pytester.runpytest_subprocess("--mps-device", "emulated", "-W", "ignore::UserWarning", *mode)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["emulated-MPS notes (no error on a Mac, but slower or less portable):", "  fallback: *pool3d*"]
    )


def test_emulation_frames_are_hidden_from_tracebacks(pytester: pytest.Pytester) -> None:
    """A float64 error shows the user's line and MPS's message, not the emulation's machinery."""
    pytester.makepyfile(
        """
        import torch

        def scale(x):
            return x.double() * 2

        def test_float64(mps_device):
            x = torch.ones(2, device=mps_device)
            scale(x)
        """
    )
    result = pytester.runpytest("--mps-device", "emulated", "--tb=long")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*return x.double() * 2", "E * TypeError: Cannot convert a MPS Tensor to float64 dtype*"]
    )
    assert "pytest_mps/emulation" not in result.stdout.str()
    assert "__tracebackhide__" not in result.stdout.str()


def test_readme_first_test_runs_on_the_emulated_target(pytester: pytest.Pytester) -> None:
    """The README's first test under ``--mps-device emulated`` (Diffusers may import torch._dynamo while the
    emulation runs, and torch 2.14+ introspects what the emulation replaced: it must still be in place)."""
    import re

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# tests/test_my_pipeline_mps.py.*?)```", readme, re.S)
    assert code, "the README lost its first-test example"
    source = code.group(1).replace(
        'Path(__file__).parent.parent / "fixtures" / "tiny-sd"', repr(str(FIXTURES / "tiny-sd"))
    )
    pytester.makepyfile(test_my_pipeline_mps=source)
    # Its first test is enough (test_readme.py runs both on the cpu target): loading and parity on the
    # emulated device are what the newest torch broke.
    result = pytester.runpytest("--mps-device", "emulated", "--strict-markers", "-k", "test_matches_cpu")
    result.assert_outcomes(passed=1, deselected=1)


def test_the_emulation_without_its_engine_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_mps.emulated_target import emulated_device, emulation_unavailable_reason
    from pytest_mps.target import TargetError

    monkeypatch.setitem(sys.modules, "pytest_mps.emulation", None)  # importing it raises ImportError
    with pytest.raises(TargetError) as raised:
        emulated_device()
    message = str(raised.value)
    assert message.startswith("--mps-device emulated: the MPS emulation cannot load here (")
    assert message.endswith("use --mps-device cpu or cuda") and "\n" not in message
    monkeypatch.delitem(sys.modules, "pytest_mps.emulation.emulator", raising=False)
    reason = emulation_unavailable_reason()  # torch is imported here: the engine's import is the test
    assert reason is not None and reason.startswith("the MPS emulation cannot load here (")
    assert reason.endswith("); use --mps-device cpu or cuda")


def test_without_torch_imported_the_emulation_is_judged_by_whether_torch_is_installed() -> None:
    script = (
        "import importlib.util, sys\n"
        "from pytest_mps.emulated_target import emulation_unavailable_reason\n"
        "print(repr(emulation_unavailable_reason()), 'torch' in sys.modules)\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'torch' else real(name, *a)\n"
        "print(repr(emulation_unavailable_reason()), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    installed, missing = done.stdout.splitlines()
    assert installed == "None False"
    assert missing.endswith("False") and "torch is not installed here" in missing
