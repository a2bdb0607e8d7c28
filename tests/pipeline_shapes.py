"""Production-shaped pipelines without a download: SD 1.5's and SDXL base 1.0's configurations, written
out by hand (runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0 config.json
files), with the tiny fixture tokenizer (every id it produces is below CLIP's vocabulary of 49408).

:func:`write_config_folder` saves a pipeline folder that holds only configs (what ``pytest-mps plan``
reads); :func:`random_pipeline` builds the same pipeline with random weights on a device (what
``benchmarks/bench_plan.py`` measures on a GPU). Used by tests/test_size_plan.py and the benchmark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SDXL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}

VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SDXL_VAE: dict[str, Any] = {**VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

# CLIP ViT-L/14's text tower (SD 1.5's text encoder, SDXL's first) and OpenCLIP ViT-bigG's (SDXL's second).
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
CLIP_BIG_G: dict[str, Any] = {
    **CLIP_L,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
}

SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

SHAPES: dict[str, dict[str, Any]] = {
    "sd15": {
        "_class_name": "StableDiffusionPipeline",
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler", SD15_SCHEDULER],
        "text_encoder": ["transformers", "CLIPTextModel", CLIP_L],
        "tokenizer": ["transformers", "CLIPTokenizer", None],
        "unet": ["diffusers", "UNet2DConditionModel", SD15_UNET],
        "vae": ["diffusers", "AutoencoderKL", VAE],
    },
    "sdxl": {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler", SDXL_SCHEDULER],
        "text_encoder": ["transformers", "CLIPTextModel", CLIP_L],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection", CLIP_BIG_G],
        "tokenizer": ["transformers", "CLIPTokenizer", None],
        "tokenizer_2": ["transformers", "CLIPTokenizer", None],
        "unet": ["diffusers", "UNet2DConditionModel", SDXL_UNET],
        "vae": ["diffusers", "AutoencoderKL", SDXL_VAE],
    },
}


def _text_config(cls_name: str, values: dict[str, Any]) -> Any:
    import transformers
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "tiny-sd" / "tokenizer")
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config_cls = getattr(transformers, cls_name).config_class
    return config_cls(**values, **special)


def write_config_folder(kind: str, folder: Path) -> Path:
    """Save the ``kind`` (``"sd15"`` or ``"sdxl"``) pipeline as a folder of configs only (no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    for name, entry in SHAPES[kind].items():
        if not isinstance(entry, list) or entry[0] is None:
            index[name] = entry
            continue
        library, cls_name, values = entry
        index[name] = [library, cls_name]
        sub = folder / name
        if name.startswith("tokenizer"):
            shutil.copytree(FIXTURES / "tiny-sd" / "tokenizer", sub, dirs_exist_ok=True)
        elif library == "transformers":
            _text_config(cls_name, values).save_pretrained(sub)
        else:
            sub.mkdir(exist_ok=True)
            file = "scheduler_config.json" if name == "scheduler" else "config.json"
            (sub / file).write_text(json.dumps({"_class_name": cls_name, **values}, indent=1))
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def random_pipeline(kind: str, device: str, *, seed: int = 0) -> Any:
    """The ``kind`` pipeline with random weights initialised on ``device`` (real memory)."""
    import diffusers
    import torch
    import transformers
    from transformers import CLIPTokenizer

    components: dict[str, Any] = {}
    torch.manual_seed(seed)
    for name, entry in SHAPES[kind].items():
        if not isinstance(entry, list):
            continue
        if entry[0] is None:
            components[name] = None
            continue
        library, cls_name, values = entry
        if name.startswith("tokenizer"):
            components[name] = CLIPTokenizer.from_pretrained(FIXTURES / "tiny-sd" / "tokenizer")
        elif name == "scheduler":
            cls = getattr(diffusers, cls_name)
            components[name] = cls.from_config({k: v for k, v in values.items() if k != "_class_name"})
        elif library == "transformers":
            with torch.device(device):
                components[name] = getattr(transformers, cls_name)(_text_config(cls_name, values)).eval()
        else:
            with torch.device(device):
                components[name] = getattr(diffusers, cls_name)(**values).eval()
    pipeline_cls = getattr(diffusers, SHAPES[kind]["_class_name"])
    extra = {"requires_safety_checker": False} if kind == "sd15" else {}
    pipe = pipeline_cls(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe
