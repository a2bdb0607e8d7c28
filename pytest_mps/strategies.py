"""Hypothesis strategies for a pipeline's call inputs, read from its signature and configs.

MPS failures often depend on the input: the batch size (the MPS guide's batching caveat), sizes that
are not multiples of 64, long or non-ASCII prompts, several images per prompt. :func:`call_inputs`
draws whole calls for one pipeline: only the arguments its ``__call__`` takes, sizes that are valid for
its VAE factor and patch size, and seeded ``torch.Generator("cpu")`` noise (identical on every device,
so target and CPU runs start from the same latents). Every part shrinks toward the simplest valid call:
the smallest size, batch 1, one image per prompt, one step, the default guidance, the default prompt,
no negative prompt, seed 0. A failure is therefore reported as the smallest input that still fails.

Use it with ``st.data()``, since the pipeline exists only inside the test::

    from hypothesis import HealthCheck, given, settings, strategies as st
    from pytest_mps import assert_cpu_parity
    from pytest_mps.strategies import call_inputs

    @pytest.mark.mps
    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_parity_on_any_input(mps_pipeline, data):
        pipe = mps_pipeline("fixtures/tiny-sd")
        assert_cpu_parity(pipe, data.draw(call_inputs(pipe), label="inputs"))

The health check exists because a function-scoped fixture is set up once per test, not once per
example; here that is what is wanted (the pipeline loads once and every check leaves it as it found it),
so it is suppressed for this test only. :func:`pytest_mps.explore.explore` runs the same search without
a test function.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from pytest_mps.inputs import DEFAULT_PROMPT, default_inputs, smallest_size

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["LONG_PROMPT_WORDS", "NON_ASCII_PROMPTS", "CallInputs", "call_inputs", "prompts", "size_step"]

#: Short ASCII prompts, the simplest first (what shrinking ends on).
SHORT_PROMPTS: tuple[str, ...] = (DEFAULT_PROMPT, "a red cube on a blue table", "a cat")
#: Scripts a tokenizer must cope with: CJK, accents, Cyrillic, emoji, right-to-left.
NON_ASCII_PROMPTS: tuple[str, ...] = (
    "一只在月球上骑马的宇航员",
    "crème brûlée on a café table",
    "Ёжик в тумане",
    "🚀 a rocket over the 🌕",
    "ナイトシティの夜景",
    "مدينة في الليل",
)
#: Long prompts have more words than CLIP's 77 tokens (the tokenizer truncates them).
LONG_PROMPT_WORDS = (80, 200)
_WORDS = (
    "a",
    "detailed",
    "photo",
    "of",
    "an",
    "old",
    "lighthouse",
    "at",
    "dawn",
    "with",
    "waves",
    "and",
    "gulls",
)


class CallInputs(dict):  # type: ignore[type-arg]
    """Call arguments for ``pipe(**inputs)`` (a dict), with the seed behind its CPU generators.

    Its ``repr`` shows the seed instead of generator objects, so Hypothesis's falsifying examples read
    as inputs (``CallInputs(height=64, width=66, prompt='...', seed=0)``); :meth:`describe` gives the
    same as a JSON-able dict. Generators are consumed by a run: the checks copy them
    (:func:`pytest_mps.inputs.fresh_inputs`); call :meth:`fresh` to run the pipeline yourself twice.
    """

    seed: int = 0
    batch: int = 1

    def describe(self) -> dict[str, Any]:
        """The inputs as plain values, size and batch first: generators as ``seed``, images as
        ``<image WxH>``."""
        out: dict[str, Any] = {}
        for key in ("height", "width"):
            if key in self:
                out[key] = self[key]
        out["batch"] = self.batch
        for key, value in self.items():
            if key not in ("generator", "output_type", "batch_size") and key not in out:
                out[key] = _plain(value)
        out["seed"] = self.seed
        return out

    def fresh(self) -> CallInputs:
        """A copy with new generators in the same state (another identical run)."""
        from pytest_mps.inputs import fresh_inputs

        copy = CallInputs(fresh_inputs(dict(self)))
        copy.seed, copy.batch = self.seed, self.batch
        return copy

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v!r}" for k, v in self.describe().items())
        return f"CallInputs({parts})"


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    size = getattr(value, "size", None)
    if type(value).__module__.startswith("PIL.") and isinstance(size, tuple):
        return f"<image {size[0]}x{size[1]}>"
    return f"<{type(value).__name__}>"


def prompts() -> SearchStrategy[str]:
    """Prompts, simplest first: short ASCII ones, the empty prompt, long ones (past CLIP's 77 tokens),
    non-ASCII ones, and arbitrary printable text."""
    from hypothesis import strategies as st

    low, high = LONG_PROMPT_WORDS
    # The default prompt is a branch of its own: a one_of shrinks toward its shortest choice sequence,
    # and a sampled_from branch is one choice longer than just("") would be.
    return st.one_of(
        st.just(SHORT_PROMPTS[0]),
        st.sampled_from(SHORT_PROMPTS[1:]),
        st.just(""),
        st.integers(low, high).map(lambda n: " ".join(_WORDS[i % len(_WORDS)] for i in range(n))),
        st.sampled_from(NON_ASCII_PROMPTS),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=60),
    )


def size_step(pipe: Any) -> int:
    """The step between valid heights and widths: the VAE factor times the denoiser's patch size, and a
    multiple of 8 (Stable Diffusion's ``check_inputs`` refuses other sizes whatever its VAE; a UNet
    resizes odd latent sizes itself)."""
    import math

    from pytest_mps.inputs import _denoiser, _vae_scale_factor

    patch = getattr(getattr(_denoiser(pipe), "config", None), "patch_size", None) or 1
    if isinstance(patch, list | tuple):
        patch = max(int(p) for p in patch)
    return math.lcm(8, _vae_scale_factor(pipe) * int(patch))


def _label_ids(pipe: Any) -> list[int]:
    """Class ids a class-conditional pipeline accepts (DiT's ``pipe.labels``, else the embedding size)."""
    from pytest_mps.inputs import _denoiser

    labels = getattr(pipe, "labels", None)
    if isinstance(labels, dict) and labels:
        return sorted(set(labels.values()))
    config = getattr(_denoiser(pipe), "config", None)
    count = getattr(config, "num_embeds_ada_norm", None) or getattr(config, "num_class_embeds", None) or 1
    return list(range(int(count)))


def _generators(seed: int, count: int) -> Any:
    import torch

    if count == 1:
        return torch.Generator("cpu").manual_seed(seed)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def call_inputs(
    pipe: Any,
    *,
    max_side: int | None = None,
    max_batch: int = 2,
    max_images_per_prompt: int = 2,
    max_steps: int = 2,
    square: bool = False,
) -> SearchStrategy[CallInputs]:
    """Whole calls for ``pipe``, drawn from the arguments its ``__call__`` takes.

    Args:
        pipe: a Diffusers pipeline (any device: only its signature and configs are read).
        max_side: the largest height/width; default twice the smallest valid size. Sizes run from
            :func:`pytest_mps.inputs.smallest_size` upward in steps of :func:`size_step`, so most are not
            multiples of 64.
        max_batch: the largest number of prompts (or class labels, or ``batch_size``).
        max_images_per_prompt: the largest ``num_images_per_prompt``, where the pipeline takes it.
        max_steps: the largest ``num_inference_steps`` (from 1).
        square: draw ``height == width``.

    Returns:
        A strategy of :class:`CallInputs`; ``output_type`` is ``"np"``.
    """
    from hypothesis import strategies as st

    params = inspect.signature(pipe.__call__).parameters
    smallest = smallest_size(pipe)
    step = size_step(pipe)
    top = max(smallest or 0, max_side or 2 * (smallest or 0))
    count = (top - smallest) // step if smallest else 0
    offsets = st.integers(0, count)
    guidance_default = params["guidance_scale"].default if "guidance_scale" in params else None
    labels = _label_ids(pipe) if "class_labels" in params else []

    @st.composite
    def draw(draw: Any) -> CallInputs:
        batch = draw(st.integers(1, max(1, max_batch)))
        height = width = None
        if smallest is not None:
            height = smallest + step * draw(offsets, label="height offset")
            width = height if square else smallest + step * draw(offsets, label="width offset")
        steps = draw(st.integers(1, max(1, max_steps)))
        seed = draw(st.integers(0, 2**31 - 1))
        call = default_inputs(pipe, seed=seed, batch_size=batch, steps=steps, height=height, width=width)
        per_prompt = 1
        if "num_images_per_prompt" in params:
            per_prompt = draw(st.integers(1, max(1, max_images_per_prompt)))
            call["num_images_per_prompt"] = per_prompt
        if "class_labels" in params and labels:
            call["class_labels"] = draw(st.lists(st.sampled_from(labels), min_size=batch, max_size=batch))
        if "prompt" in params:
            drawn = [draw(prompts()) for _ in range(batch)]
            call["prompt"] = drawn[0] if batch == 1 else drawn
        if "negative_prompt" in params and draw(st.booleans(), label="negative prompt"):
            # Diffusers wants one negative prompt per prompt, of the prompt's type.
            negatives = [draw(prompts()) for _ in range(batch)]
            call["negative_prompt"] = negatives[0] if batch == 1 else negatives
        if isinstance(guidance_default, int | float) and not isinstance(guidance_default, bool):
            call["guidance_scale"] = draw(
                st.just(float(guidance_default)) | st.floats(0.0, 20.0, allow_nan=False, width=32)
            )
        if "generator" in params:
            call["generator"] = _generators(seed, batch * per_prompt)
        out = CallInputs(call)
        out.seed, out.batch = seed, batch
        return out

    return draw()
