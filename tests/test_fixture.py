"""The mps_pipeline fixture in real pytest runs: one load per session, no state leaking between tests,
teardown, loading errors, and the tolerance precedence checks see."""

from __future__ import annotations

import pytest

from conftest import FIXTURES

SD = str(FIXTURES / "tiny-sd")
DDPM = str(FIXTURES / "tiny-ddpm")

LOADS_PROBE = """
import pytest
from pytest_mps.plugin import session_of

def pytest_sessionfinish(session):
    cache = session_of(session.config).pipelines
    print(f"\\nLOADS {cache.loads} EVICTIONS {cache.evictions}")
"""


def loads(result: pytest.RunResult) -> tuple[int, int]:
    line = next(ln for ln in result.outlines if ln.startswith("LOADS "))
    parts = line.split()
    return int(parts[1]), int(parts[3])


def test_one_load_for_many_tests(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(LOADS_PROBE)
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.parametrize("i", range(5))
        def test_uses(mps_pipeline, i):
            pipe = mps_pipeline({DDPM!r})
            assert pipe.device.type == "cpu"
            assert not any(m.training for m in pipe.unet.modules())
            assert pipe._progress_bar_config == {{"disable": True}}
        """
    )
    result = pytester.runpytest("--mps-device", "cpu", "-s")
    result.assert_outcomes(passed=5)
    assert loads(result) == (1, 0)


def test_state_does_not_leak_between_tests(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(LOADS_PROBE)
    pytester.makepyfile(
        f"""
        from diffusers import EulerDiscreteScheduler

        def test_a_changes_everything(mps_pipeline):
            pipe = mps_pipeline({SD!r})
            pipe.enable_attention_slicing(1)
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
            pipe.scheduler.set_timesteps(7)
            pipe.vae.enable_slicing()
            pipe.unet.register_forward_hook(lambda *a: None)
            pipe.some_attribute = 1

        def test_b_sees_a_clean_pipeline(mps_pipeline):
            pipe = mps_pipeline({SD!r})
            kinds = {{type(p).__name__ for p in pipe.unet.attn_processors.values()}}
            assert kinds == {{"AttnProcessor2_0"}}, kinds
            assert type(pipe.scheduler).__name__ == "DDIMScheduler"
            assert pipe.scheduler.num_inference_steps is None
            assert pipe.vae.use_slicing is False
            assert not pipe.unet._forward_hooks
            assert not hasattr(pipe, "some_attribute")
        """
    )
    result = pytester.runpytest("--mps-device", "cpu", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert loads(result) == (1, 0)


def test_changed_weights_make_the_next_test_reload(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(LOADS_PROBE)
    pytester.makepyfile(
        f"""
        import torch

        def test_a_converts(mps_pipeline):
            mps_pipeline({DDPM!r}).to(torch.float16)

        def test_b_gets_float32(mps_pipeline):
            assert mps_pipeline({DDPM!r}).unet.dtype == torch.float32
        """
    )
    result = pytester.runpytest("--mps-device", "cpu", "-s")
    result.assert_outcomes(passed=2)
    assert loads(result) == (2, 1)


def test_teardown_frees_target_memory(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_mps.target import Target

    calls = []
    monkeypatch.setattr(Target, "empty_cache", lambda self, **kw: calls.append(self.name))
    pytester.makepyfile(
        f"def test_a(mps_pipeline):\n    mps_pipeline({DDPM!r})\n\n"
        f"def test_b(mps_pipeline):\n    mps_pipeline({DDPM!r})\n\n"
        "def test_c(mps_pipeline):\n    pass\n"
    )
    pytester.runpytest("--mps-device", "cpu").assert_outcomes(passed=3)
    assert calls == ["cpu", "cpu"]  # once per test that used a pipeline


def test_fixture_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        def test_slicing_on(mps_pipeline):
            pipe = mps_pipeline({SD!r}, attention_slicing="on")
            kinds = {{type(p).__name__ for p in pipe.unet.attn_processors.values()}}
            assert kinds == {{"SlicedAttnProcessor"}}

        def test_slicing_auto_is_off_on_a_stand_in(mps_pipeline):
            pipe = mps_pipeline({SD!r})
            kinds = {{type(p).__name__ for p in pipe.unet.attn_processors.values()}}
            assert kinds == {{"AttnProcessor2_0"}}

        def test_bad_choice(mps_pipeline):
            with pytest.raises(ValueError, match="mps_pipeline.warmup='maybe'.: choose one of auto, on, off"):
                mps_pipeline({SD!r}, warmup="maybe")
        """
    )
    pytester.runpytest("--mps-device", "cpu").assert_outcomes(passed=3)


def test_fixture_skips_without_target(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(f"def test_a(mps_pipeline):\n    mps_pipeline({DDPM!r})\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs an MPS target: no MPS device (MPS needs macOS*"])


@pytest.mark.parametrize(
    ("setup", "source", "message"),
    [
        (None, "missing-folder", "pipeline folder */missing-folder does not exist; check the path"),
        ("empty", "empty", "* is not a Diffusers pipeline folder (no model_index.json); save one with*"),
        (
            "pickled",
            "pickled",
            "*weights of unet exist only as pickled files (diffusion_pytorch_model.bin);"
            " refusing to unpickle them (it can run code)*",
        ),
        ("corrupt", "corrupt", "*a safetensors file is corrupt or truncated*"),
    ],
)
def test_bad_sources_fail_with_one_line(pytester: pytest.Pytester, setup, source, message) -> None:
    import shutil

    folder = pytester.path / source
    if setup == "empty":
        folder.mkdir()
    elif setup in ("pickled", "corrupt"):
        shutil.copytree(FIXTURES / "tiny-ddpm", folder)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if setup == "pickled":
            weights.rename(weights.with_suffix(".bin"))
        else:
            weights.write_bytes(weights.read_bytes()[:200])
    pytester.makepyfile(f"def test_a(mps_pipeline):\n    mps_pipeline({str(folder)!r})\n")
    result = pytester.runpytest("--mps-device", "cpu")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message if message.startswith("*") else f"*{message}"])
    result.stdout.fnmatch_lines(["FAILED *::test_a - Failed: *"])


def test_tolerance_precedence(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmps_atol = 0.2\nmps_max_cosine_distance = 0.01\n")
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_mps import assert_cpu_parity

        def test_ini(mps_pipeline):
            r = assert_cpu_parity(mps_pipeline({DDPM!r}))
            assert (r.tolerance.atol, r.tolerance.sources["atol"]) == (0.2, "ini")
            assert r.tolerance.sources["rtol"] == "default"

        @pytest.mark.mps_tolerance(atol=0.1)
        def test_marker(mps_pipeline):
            r = assert_cpu_parity(mps_pipeline({DDPM!r}))
            assert (r.tolerance.atol, r.tolerance.sources["atol"]) == (0.1, "marker")
            assert r.tolerance.max_cosine_distance == 0.01

        @pytest.mark.mps_tolerance(atol=0.1)
        def test_argument(mps_pipeline):
            r = assert_cpu_parity(mps_pipeline({DDPM!r}), atol=0.05)
            assert (r.tolerance.atol, r.tolerance.sources["atol"]) == (0.05, "argument")

        def test_default_without_ini(mps_pipeline):
            from pytest_mps import assert_deterministic
            r = assert_deterministic(mps_pipeline({DDPM!r}))
            assert r.tolerance.sources["rtol"] == "default"
        """
    )
    pytester.runpytest("--mps-device", "cpu").assert_outcomes(passed=4)


def test_bad_ini_tolerance_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmps_atol = tight\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini mps_atol: could not convert string to float: 'tight'; write e.g. mps_atol = 1e-3"]
    )


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("mps_atol = nan", "ERROR: ini mps_atol: 'nan' is not a number (it must be finite)"),
        ("mps_timeout = -3", "ERROR: ini mps_timeout: '-3*': give seconds, or 0 for no limit"),
        ("mps_steps = 0", "ERROR: ini mps_steps: '0': needs at least 1 step"),
        ("mps_device = metal", "ERROR: ini mps_device: unknown target device 'metal'; choose one of auto, *"),
    ],
)
def test_ini_values_obey_the_same_rules_as_the_command_line(
    pytester: pytest.Pytester, ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_failing_check_reads_well_and_lands_in_the_session_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        from pytest_mps import assert_cpu_parity

        def test_nan(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            pipe.unet.register_forward_hook(lambda m, a, out: type(out)(sample=out.sample * float("nan")))
            assert_cpu_parity(pipe)
        """
    )
    result = pytester.runpytest("--mps-device", "cpu", "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: cpu_parity FAILED on cpu (stand-in for mps: CPU against CPU, a dry run) for "
            "tiny-ddpm (DDPMPipeline): target output contains NaN/Inf (3072 NaN of 3072 values): black image",
            "*= pytest-mps =*",
            "target: cpu (stand-in for mps*: a pre-check on a stand-in, not an MPS verdict; no badge is*",
            "tiny-ddpm (DDPMPipeline)  cpu_parity  failed   target output contains NaN*",
            "verdicts:",
            "  tiny-ddpm: fails: cpu_parity",
        ]
    )
    assert "pytest_mps/checks/" not in result.stdout.str()  # helper frames are hidden
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="mps:cpu_parity:outcome" value="failed"' in junit


def _fake_hub_cache(root, repo: str, source) -> None:
    """A Hugging Face cache laid out as huggingface_hub does, holding ``source`` as ``repo``."""
    import shutil

    revision = "0123456789abcdef0123456789abcdef01234567"
    entry = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, entry / "snapshots" / revision)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)


def test_hub_id_from_the_local_cache_never_downloads(pytester: pytest.Pytester) -> None:
    cache = pytester.path / "hub-cache"
    _fake_hub_cache(cache, "tiny-org/tiny-ddpm", FIXTURES / "tiny-ddpm")
    pytester.makepyfile(
        f"""
        def test_cached(mps_pipeline):
            pipe = mps_pipeline("tiny-org/tiny-ddpm", cache_dir={str(cache)!r})
            assert type(pipe).__name__ == "DDPMPipeline"

        def test_not_cached(mps_pipeline):
            mps_pipeline("tiny-org/not-there", cache_dir={str(cache)!r})
        """
    )
    result = pytester.runpytest("--mps-device", "cpu")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*'tiny-org/not-there' is neither a folder nor a hub id in the local cache*tests never download*"]
    )


def test_a_faulty_test_does_not_poison_the_next_ones_reference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_mps import assert_cpu_parity

        def test_a_nan_hook(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            pipe.unet.register_forward_hook(lambda m, a, out: type(out)(sample=out.sample * float("nan")))
            with pytest.raises(AssertionError, match="NaN"):
                assert_cpu_parity(pipe)

        def test_b_clean(mps_pipeline):
            assert_cpu_parity(mps_pipeline({DDPM!r}))
        """
    )
    pytester.runpytest("--mps-device", "cpu", "-p", "no:randomly").assert_outcomes(passed=2)


def test_a_check_that_raises_is_recorded(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        from pytest_mps import assert_cpu_parity

        def test_raises(mps_pipeline):
            pipe = mps_pipeline({DDPM!r})
            def hook(module, args, out):
                raise NotImplementedError("no kernel for this op")
            pipe.unet.register_forward_hook(hook)
            assert_cpu_parity(pipe)
        """
    )
    result = pytester.runpytest("--mps-device", "cpu")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * NotImplementedError: no kernel for this op",
            "tiny-ddpm (DDPMPipeline)  cpu_parity  failed   raised NotImplementedError*",
        ]
    )
