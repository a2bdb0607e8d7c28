"""The pipeline zoo: one tiny, randomly initialised pipeline per Diffusers family, built at test time.

Each :class:`ZooEntry` names a Diffusers pipeline class, builds it from tiny components (fixed seeds,
local tokenizers, nothing downloaded) and records the verdict ``pytest-mps check --device emulated``
must give it: healthy pipelines pass, a real MPS hazard fails naming what MPS rejects, and a pipeline
that Diffusers itself breaks on every device is labelled so.

    >>> from zoo import ZOO, save
    >>> save("sd", "/tmp/zoo/sd")        # then: pytest-mps check --device emulated /tmp/zoo/sd

Used by ``tests/test_zoo.py`` (the default run) and ``benchmarks/zoo.py`` (the full table, written to
``docs/diffusers-status.md``).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo import audio_family, transformer_family, unet_family, video_family

__all__ = [
    "CALLING_CHECKS",
    "CPU_TOO",
    "MPS_HAZARD",
    "PASSES",
    "ZOO",
    "ZooEntry",
    "build",
    "missing_modules",
    "save",
]

#: The verdicts a zoo entry can expect.
PASSES = "passes"
MPS_HAZARD = "MPS hazard"
CPU_TOO = "fails on the CPU too"

#: The suite's checks that call the pipeline (all but ``load``): a pipeline whose call raises fails them all.
CALLING_CHECKS = (
    "inference",
    "cpu_parity",
    "batch",
    "attention_slicing",
    "determinism",
    "float16",
    "schedulers",
    "audit",
    "speed",
)


@dataclass(frozen=True)
class ZooEntry:
    """One pipeline of the zoo and the verdict it must get.

    Attributes:
        name: folder label (``sd-img2img``), also the test id.
        pipeline: the Diffusers pipeline class name.
        kind: what it makes (``image``, ``video``, ``audio``, ``embeddings``) from what
            (``text``, ``image``, ``class``, ``noise``, ``image embeddings``).
        builder: returns the pipeline, float32, on the CPU, in eval mode.
        verdict: :data:`PASSES`, :data:`MPS_HAZARD` or :data:`CPU_TOO`.
        failing: the checks expected to fail (empty for :data:`PASSES`).
        cause: a phrase the failure messages contain.
        why: what makes them fail, for people (with the Diffusers detail).
        harness: checks that fail today because of a harness rule the core is changing (issue 10:
            float16's absolute limit on a stand-in), each with a phrase its failure contains; they are
            expected to fail until that lands, then this field is emptied.
        slow: left out of the default test run (the zoo benchmark runs it).
        needs: modules the saved folder needs to load (``accelerate``).
    """

    name: str
    pipeline: str
    kind: str
    builder: Callable[[], Any]
    verdict: str = PASSES
    failing: tuple[str, ...] = ()
    cause: str = ""
    why: str = ""
    harness: tuple[tuple[str, str], ...] = ()
    slow: bool = False
    needs: tuple[str, ...] = ()

    @property
    def failing_today(self) -> tuple[str, ...]:
        """The checks ``pytest-mps check --device emulated`` fails today: :attr:`failing` and
        :attr:`harness`."""
        return self.failing + tuple(check for check, _ in self.harness if check not in self.failing)

    def judge(self, failed: dict[str, list[str]], statuses: dict[str, str] | None = None) -> list[str]:
        """How the failed checks of a ``pytest-mps check`` run (check name -> failure lines) differ from
        what this entry expects today (:attr:`failing_today`, with :attr:`cause` in their messages and
        each :attr:`harness` phrase in its check's); with ``statuses`` (check name -> result status),
        also whether each expected failure has its verdict's status (``cpu_too`` for a failure on the
        CPU too, ``failed`` for an MPS hazard); empty when they match."""
        problems = []
        expected = {CPU_TOO: "cpu_too", MPS_HAZARD: "failed"}.get(self.verdict)
        if statuses is not None and expected is not None:
            wrong = {c: statuses.get(c) for c in self.failing if statuses.get(c) != expected}
            if wrong:
                problems.append(f"expected status {expected!r}, got {wrong}")
        if set(failed) != set(self.failing_today):
            unexpected = sorted(set(failed) - set(self.failing_today))
            missing = sorted(set(self.failing_today) - set(failed))
            if unexpected:
                first = {name: (failed[name] or ["?"])[0] for name in unexpected}
                problems.append(f"unexpected failures {first}")
            if missing:
                problems.append(f"expected failures that did not happen: {', '.join(missing)}")
            return problems
        own = " ".join(line for name in self.failing for line in failed[name])
        if self.failing and self.cause not in own:
            problems.append(f"{', '.join(self.failing)} failed, but not for {self.cause!r}")
        for check, phrase in self.harness:
            if check not in self.failing and phrase not in " ".join(failed[check]):
                problems.append(f"{check} failed, but not for {phrase!r}")
        return problems

    def build(self) -> Any:
        """The pipeline, built now (progress bars off)."""
        pipe = self.builder()
        if type(pipe).__name__ != self.pipeline:
            raise TypeError(f"zoo entry {self.name} built {type(pipe).__name__}, not {self.pipeline}")
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _entries(*entries: ZooEntry) -> dict[str, ZooEntry]:
    return {entry.name: entry for entry in entries}


u, t, v = unet_family, transformer_family, video_family

#: Every zoo entry by name, in table order.
ZOO: dict[str, ZooEntry] = _entries(
    ZooEntry("sd", "StableDiffusionPipeline", "image from text", u.sd),
    ZooEntry("sd-img2img", "StableDiffusionImg2ImgPipeline", "image from image", u.sd_img2img),
    ZooEntry("sd-inpaint", "StableDiffusionInpaintPipeline", "image from image and mask", u.sd_inpaint),
    ZooEntry("sdxl", "StableDiffusionXLPipeline", "image from text", u.sdxl),
    ZooEntry("controlnet", "StableDiffusionControlNetPipeline", "image from text and control", u.controlnet),
    ZooEntry("lcm", "LatentConsistencyModelPipeline", "image from text", u.lcm),
    ZooEntry("sd3", "StableDiffusion3Pipeline", "image from text", t.sd3),
    ZooEntry("flux", "FluxPipeline", "image from text", t.flux),
    ZooEntry("aura-flow", "AuraFlowPipeline", "image from text", t.aura_flow),
    ZooEntry("sana", "SanaPipeline", "image from text", t.sana),
    ZooEntry("lumina2", "Lumina2Pipeline", "image from text", t.lumina2),
    ZooEntry("pixart-alpha", "PixArtAlphaPipeline", "image from text", t.pixart_alpha),
    ZooEntry("pixart-sigma", "PixArtSigmaPipeline", "image from text", t.pixart_sigma),
    ZooEntry("hunyuan-dit", "HunyuanDiTPipeline", "image from text", t.hunyuan_dit),
    ZooEntry("kandinsky3", "Kandinsky3Pipeline", "image from text", u.kandinsky3),
    ZooEntry(
        "kandinsky22-decoder", "KandinskyV22Pipeline", "image from image embeddings", u.kandinsky22_decoder
    ),
    ZooEntry("kandinsky22-prior", "KandinskyV22PriorPipeline", "embeddings from text", u.kandinsky22_prior),
    ZooEntry(
        "stable-cascade-prior",
        "StableCascadePriorPipeline",
        "embeddings from text",
        u.stable_cascade_prior,
        # Its embeddings are not 0-1 images (std ~120): float16 rounding moves them by ~0.5 at a cosine
        # distance of 1e-6. On a stand-in float16 is judged by cosine distance and finiteness only.
    ),
    ZooEntry("dit", "DiTPipeline", "image from class", t.dit),
    ZooEntry("ddpm", "DDPMPipeline", "image from noise", u.ddpm),
    ZooEntry("ddim", "DDIMPipeline", "image from noise", u.ddim),
    ZooEntry("animatediff", "AnimateDiffPipeline", "video from text", u.animatediff),
    ZooEntry("wan", "WanPipeline", "video from text", v.wan, needs=("accelerate",)),
    ZooEntry("ltx", "LTXPipeline", "video from text", v.ltx),
    ZooEntry(
        "cogvideox",
        "CogVideoXPipeline",
        "video from text",
        v.cogvideox,
        verdict=MPS_HAZARD,
        failing=("load",),
        cause="transformer.patch_embed.pos_embedding float64",
        why="its sin/cos position table (transformer.patch_embed.pos_embedding) is a float64 buffer "
        "built at construction: moving the pipeline to MPS fails",
    ),
    ZooEntry(
        "latte",
        "LattePipeline",
        "video from text",
        v.latte,
        verdict=CPU_TOO,
        failing=("batch",),
        cause="batch item 0",
        why="a batched call differs from single calls (by 0.26) on the CPU as well, even for equal prompts",
    ),
    ZooEntry(
        "allegro",
        "AllegroPipeline",
        "video from text",
        v.allegro,
        verdict=CPU_TOO,
        failing=CALLING_CHECKS,
        cause="Decoding without tiling has not been implemented yet",
        why="its VAE decodes only with pipe.vae.enable_tiling(), which a saved pipeline does not remember",
    ),
    ZooEntry(
        "audioldm2",
        "AudioLDM2Pipeline",
        "audio from text",
        audio_family.audioldm2,
        verdict=CPU_TOO,
        failing=("batch",),
        cause="cosine distance",
        why="in a batch, the shorter prompt is padded and its generated conditioning changes (cosine "
        "distance 3.7e-3 against the single call), on the CPU as well",
    ),
)


def missing_modules(entry: ZooEntry) -> list[str]:
    """The modules of ``entry.needs`` that are not installed."""
    return [name for name in entry.needs if importlib.util.find_spec(name) is None]


def build(name: str) -> Any:
    """Build zoo entry ``name`` (see :data:`ZOO`)."""
    try:
        entry = ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo entry {name!r}; choose from {', '.join(ZOO)}") from None
    return entry.build()


def save(name: str, folder: str | Path) -> Path:
    """Build zoo entry ``name`` and save it to ``folder`` (replaced) with safetensors weights, ready for
    ``pytest-mps check``."""
    from transformers.utils import logging as transformers_logging

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    pipe = build(name)
    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
    return folder
