"""Hypothesis strategies for call inputs, and the exploration engine built on them.

The strategy tests run no pipeline: they ask Hypothesis for the simplest input meeting a condition
(``hypothesis.find``), which is exactly what shrinking reports. The exploration tests plant faults that
appear on the target only (``tensor.is_mps``; the CPU reference never sees them) and only for some
inputs, and check that ``explore`` reports the smallest such input.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, find, settings
from hypothesis.errors import NoSuchExample

from pytest_mps.emulation import EmulatedMPS
from pytest_mps.explore import CI_PROFILE, explore
from pytest_mps.inputs import DEFAULT_PROMPT, smallest_size
from pytest_mps.pipelines import load_pipeline, prepare_pipeline
from pytest_mps.strategies import NON_ASCII_PROMPTS, CallInputs, call_inputs, prompts, size_step

from conftest import FIXTURES, REPO

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
# derandomized: a search that finds its example on one run finds it on every run
FIND = settings(max_examples=500, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: prepare_pipeline(load_pipeline(FIXTURES / name)) for name in ("tiny-sd", "tiny-ddpm")}


def _simplest(strategy: Any, condition: Any = lambda _: True) -> Any:
    return find(strategy, condition, settings=FIND)


# -- strategies -------------------------------------------------------------------------------------------
def test_inputs_shrink_to_the_smallest_simplest_call(pipes: dict[str, Any]) -> None:
    pipe = pipes["tiny-sd"]
    simplest = _simplest(call_inputs(pipe))
    assert simplest.describe() == {
        "height": smallest_size(pipe),
        "width": smallest_size(pipe),
        "batch": 1,
        "prompt": DEFAULT_PROMPT,
        "num_inference_steps": 1,
        "num_images_per_prompt": 1,
        "guidance_scale": 7.5,  # the signature's default
        "seed": 0,
    }
    assert simplest["generator"].device.type == "cpu" and simplest["generator"].initial_seed() == 0
    assert simplest["output_type"] == "np" and "negative_prompt" not in simplest


def test_sizes_are_valid_and_mostly_not_multiples_of_64(pipes: dict[str, Any]) -> None:
    pipe = pipes["tiny-sd"]
    step = size_step(pipe)
    assert step == 8  # tiny-sd's VAE factor is 2, but Stable Diffusion refuses sizes that are not x8
    odd = _simplest(call_inputs(pipe, max_side=256), lambda c: c["height"] % 64 != 0)
    assert (odd["height"], odd["width"], odd.batch) == (72, 64, 1)
    largest = _simplest(call_inputs(pipe, max_side=256), lambda c: c["width"] >= 256)
    assert largest["width"] == 256
    with pytest.raises(NoSuchExample):
        find(
            call_inputs(pipe, max_side=256), lambda c: c["height"] % step or c["height"] > 256, settings=FIND
        )


def test_batches_draw_one_prompt_and_one_cpu_generator_per_image(pipes: dict[str, Any]) -> None:
    pipe = pipes["tiny-sd"]
    batch = _simplest(call_inputs(pipe), lambda c: c.batch * c["num_images_per_prompt"] >= 4)
    assert batch.batch == 2 and batch["num_images_per_prompt"] == 2
    assert batch["prompt"] == [DEFAULT_PROMPT, DEFAULT_PROMPT]
    generators = batch["generator"]
    assert [g.device.type for g in generators] == ["cpu"] * 4  # identical noise on every device
    assert [g.initial_seed() for g in generators] == [0, 1, 2, 3]
    ddpm = _simplest(call_inputs(pipes["tiny-ddpm"], max_batch=3), lambda c: c.batch == 3)
    assert ddpm["batch_size"] == 3 and "prompt" not in ddpm and "height" not in ddpm


def test_prompts_include_empty_long_and_non_ascii_ones() -> None:
    assert _simplest(prompts()) == DEFAULT_PROMPT
    assert _simplest(prompts(), lambda p: p == "") == ""
    long = _simplest(prompts(), lambda p: len(p.split()) > 77)  # past CLIP's 77 tokens
    assert len(long.split()) == 80
    assert _simplest(prompts(), lambda p: not p.isascii()) == NON_ASCII_PROMPTS[0]
    negative = _simplest(call_inputs(_FakeText()), lambda c: "negative_prompt" in c)
    assert negative["negative_prompt"] == DEFAULT_PROMPT
    both = _simplest(call_inputs(_FakeText()), lambda c: c.batch == 2 and "negative_prompt" in c)
    assert both["negative_prompt"] == [DEFAULT_PROMPT, DEFAULT_PROMPT]  # Diffusers wants one per prompt


class _FakeText:
    """A text-to-image signature without a model (strategies read signatures and configs only)."""

    vae_scale_factor = 8

    def __call__(
        self,
        prompt: Any = None,
        negative_prompt: Any = None,
        height: Any = None,
        width: Any = None,
        num_inference_steps: int = 50,
        generator: Any = None,
        output_type: str = "pil",
    ) -> None:
        raise NotImplementedError


def test_inputs_read_as_values_not_generator_objects(pipes: dict[str, Any]) -> None:
    inputs = _simplest(call_inputs(pipes["tiny-sd"]), lambda c: c.batch == 2)
    text = repr(inputs)
    assert text.startswith("CallInputs(height=64, width=64, batch=2") and "seed=0" in text
    assert "Generator" not in text
    twin = inputs.fresh()
    assert isinstance(twin, CallInputs) and twin["generator"][0] is not inputs["generator"][0]
    assert twin.describe() == inputs.describe()


# -- exploration --------------------------------------------------------------------------------------------
def _on_target(module: torch.nn.Module, condition: Any) -> Any:
    """A fault on the target only: ``module``'s output shifts by 0.5 where ``condition(output)`` holds."""

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        x = output.sample if hasattr(output, "sample") else output[0] if isinstance(output, tuple) else output
        if x.is_mps and condition(x):
            x = x + 0.5
        if isinstance(output, torch.Tensor):
            return x
        return (x,) if isinstance(output, tuple) else type(output)(sample=x)

    return module.register_forward_hook(hook)


@pytest.fixture
def emulated(pipes: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with EmulatedMPS():
        for pipe in pipes.values():
            pipe.to("mps")
        try:
            yield pipes
        finally:
            for pipe in pipes.values():
                pipe.to("cpu")


def test_a_fault_at_batch_two_is_reported_as_its_smallest_input(emulated: dict[str, Any]) -> None:
    pipe = emulated["tiny-ddpm"]
    handle = _on_target(pipe.unet, lambda x: x.shape[0] >= 2)
    try:
        first = explore(pipe, 4, seed=0, max_batch=3)
    finally:
        handle.remove()
    assert not first.passed and first.error_type == "AssertionError"
    # Two steps, not one: a single DDPM step from t=999 clips every pixel (clip_sample), hiding the shift.
    assert first.failure == {"batch": 2, "num_inference_steps": 2, "seed": 0}
    assert "cpu_parity FAILED" in (first.message or "") and "emulated mps" in first.target
    assert "smallest failing input: batch=2" in first.summary


def test_a_fault_at_heights_off_64_is_reported_and_replayed_first(
    emulated: dict[str, Any], tmp_path: Any
) -> None:
    pipe = emulated["tiny-sd"]
    options = {"max_side": 80, "max_steps": 1, "max_batch": 1, "max_images_per_prompt": 1}
    handle = _on_target(pipe.vae.decoder, lambda image: image.shape[-2] % 64 != 0)
    seen: list[dict[str, Any]] = []

    def parity(p: Any, inputs: Any) -> Any:
        from pytest_mps import assert_cpu_parity

        seen.append(inputs.describe())
        return assert_cpu_parity(p, inputs)

    try:
        result = explore(pipe, 6, seed=1, database=tmp_path / "db", **options)
        seen.clear()
        replay = explore(pipe, 5, seed=2, database=tmp_path / "db", compare=parity, **options)
    finally:
        handle.remove()
    assert not result.passed and result.database == str(tmp_path / "db")
    assert result.failure is not None
    assert (result.failure["height"], result.failure["width"]) == (72, 64)
    assert result.failure["prompt"] == DEFAULT_PROMPT and result.failure["seed"] == 0
    assert seen[0] == result.failure  # the stored failure runs first
    assert replay.failure == result.failure


def test_a_seed_makes_the_examples_repeat(pipes: dict[str, Any]) -> None:
    def examples() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        explore(pipes["tiny-sd"], 6, seed=3, compare=lambda _pipe, inputs: seen.append(inputs.describe()))
        return seen

    runs = [examples(), examples()]
    assert runs[0] == runs[1] and len(runs[0]) == 6
    assert len({(d["height"], d["width"], d["batch"]) for d in runs[0]}) > 1  # and they vary


def test_a_healthy_pipeline_explores_clean(emulated: dict[str, Any]) -> None:
    result = explore(emulated["tiny-sd"], 3, seed=0, max_side=72, max_steps=1, max_batch=2)
    assert result.passed and result.failure is None and result.examples == 3 and result.invalid == 0
    assert result.summary == "clean after 3 examples"


def test_inputs_the_cpu_refuses_too_are_redrawn_and_mps_errors_fail(emulated: dict[str, Any]) -> None:
    pipe = emulated["tiny-ddpm"]

    def refuse(on_mps_only: bool) -> Any:
        def hook(_module: Any, args: Any) -> None:
            x = args[0]
            if x.shape[0] >= 2 and (x.is_mps or not on_mps_only):
                raise TypeError("Cannot convert a MPS Tensor to float64 dtype")

        return pipe.unet.register_forward_pre_hook(hook)

    handle = refuse(on_mps_only=False)
    try:
        everywhere = explore(pipe, 6, seed=0, max_batch=2)
    finally:
        handle.remove()
    assert everywhere.passed and everywhere.invalid > 0
    handle = refuse(on_mps_only=True)
    try:
        mps_only = explore(pipe, 6, seed=0, max_batch=2)
    finally:
        handle.remove()
    assert not mps_only.passed and mps_only.error_type == "TypeError"
    assert mps_only.failure is not None and mps_only.failure["batch"] == 2


def test_the_ci_profile_is_derandomized_without_a_database(emulated: dict[str, Any], tmp_path: Any) -> None:
    profile = settings.get_profile(CI_PROFILE)
    assert profile.derandomize and profile.database is None and profile.deadline is None
    result = explore(emulated["tiny-ddpm"], 2, derandomize=True, database=tmp_path / "db", max_batch=1)
    assert result.passed and result.database is None and not (tmp_path / "db").exists()


def test_a_seed_wins_over_a_loaded_derandomizing_profile(pipes: dict[str, Any], tmp_path: Any) -> None:
    # Hypothesis loads its own "ci" profile (derandomized, no database) wherever CI is set: a seeded
    # exploration must stay the seeded one there, with its database; an unseeded one follows the profile.
    def examples(**kwargs: Any) -> tuple[list[dict[str, Any]], Any]:
        seen: list[dict[str, Any]] = []
        found = explore(
            pipes["tiny-sd"], 4, compare=lambda _pipe, inputs: seen.append(inputs.describe()), **kwargs
        )
        return seen, found

    seeded, _ = examples(seed=3)
    previous = settings._current_profile  # type: ignore[attr-defined]
    settings.load_profile(CI_PROFILE)
    try:
        under_profile, found = examples(seed=3, database=tmp_path / "db")
        unseeded, plain = examples(database=tmp_path / "db2")
    finally:
        settings.load_profile(previous)
    assert under_profile == seeded and found.database == str(tmp_path / "db") and found.seed == 3
    assert plain.database is None and not (tmp_path / "db2").exists() and unseeded != seeded


def test_the_readme_example_runs_and_needs_its_health_check_setting(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(# tests/test_explore_inputs.py.*?)```", readme, re.S)
    assert code, "the README lost its exploration example"
    source = code.group(1).replace('"fixtures/tiny-sd"', repr(str(FIXTURES / "tiny-sd")))
    source = source.replace("max_examples=10", "max_examples=2")
    without = source.replace(", suppress_health_check=[HealthCheck.function_scoped_fixture]", "")
    without = without.replace("def test_parity_on_any_input", "def test_without_the_setting")
    assert without != source
    pytester.makepyfile(test_explore_inputs=source + "\n\n" + without.split("\n\n\n", 1)[1])
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)  # Hypothesis's pytest plugin runs the health check
    result = pytester.runpytest("--mps-device", "cpu")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FailedHealthCheck*test_without_the_setting*function-scoped fixture*",
            "*FAILED*test_without_the_setting*",
        ]
    )
