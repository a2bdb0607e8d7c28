"""Zoo builders for the UNet pipelines and the priors: Stable Diffusion (text, image and inpainting),
SDXL, ControlNet, LCM, AnimateDiff, DDPM, DDIM, Kandinsky 2.2 (prior and decoder) and 3, and the
Stable Cascade prior.

Configs follow the ``get_dummy_components`` of Diffusers' tests for each pipeline (tiny channel
counts, one or two levels), with the local tokenizers of :mod:`zoo.parts`.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.parts import clip_text_encoder, clip_tokenizer, kl_vae, seeded, t5_text_encoder, t5_tokenizer

__all__ = [
    "animatediff",
    "controlnet",
    "ddim",
    "ddpm",
    "kandinsky3",
    "kandinsky22_decoder",
    "kandinsky22_prior",
    "lcm",
    "sd",
    "sd_img2img",
    "sd_inpaint",
    "sdxl",
    "stable_cascade_prior",
]


def _sd_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _sd_unet(in_channels: int = 4, cross_attention_dim: int = 32, **config: Any) -> Any:
    from diffusers import UNet2DConditionModel

    settings: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": 32,
        "in_channels": in_channels,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 2,
        "norm_num_groups": 2,
    }
    settings.update(config)
    return seeded(UNet2DConditionModel, **settings)


def _sd_components(in_channels: int = 4, **unet_config: Any) -> dict[str, Any]:
    tokenizer = clip_tokenizer()
    return {
        "unet": _sd_unet(in_channels, **unet_config),
        "scheduler": _sd_scheduler(),
        "vae": kl_vae(levels=2, channels=8),
        "text_encoder": clip_text_encoder(tokenizer, 32),
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def sd() -> Any:
    """``StableDiffusionPipeline``: UNet (4, 8), 2-level VAE, 2-layer CLIP."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**_sd_components())


def sd_img2img() -> Any:
    """``StableDiffusionImg2ImgPipeline`` on the SD parts."""
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline(**_sd_components())


def sd_inpaint() -> Any:
    """``StableDiffusionInpaintPipeline``: a 9-channel UNet (latents, mask, masked image)."""
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline(**_sd_components(in_channels=9))


def lcm() -> Any:
    """``LatentConsistencyModelPipeline``: the SD parts, a guidance-embedding UNet, ``LCMScheduler``."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    parts = _sd_components(time_cond_proj_dim=32)
    parts["scheduler"] = LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    return LatentConsistencyModelPipeline(**parts)


def controlnet() -> Any:
    """``StableDiffusionControlNetPipeline``: the SD parts and a ControlNet whose output blocks are not
    zero (a fresh ControlNet's zero convolutions would ignore the control image)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    net = seeded(
        ControlNetModel,
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=2,
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in net.controlnet_down_blocks:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
    parts = _sd_components()
    parts.pop("requires_safety_checker")
    return StableDiffusionControlNetPipeline(controlnet=net, **parts)


def sdxl() -> Any:
    """``StableDiffusionXLPipeline``: text-time added conditioning, two CLIP encoders (one projected)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = _sd_unet(
        block_out_channels=(4, 8),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
    )
    tokenizer = clip_tokenizer()
    return StableDiffusionXLPipeline(
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
        ),
        vae=kl_vae(levels=2, channels=8),
        text_encoder=clip_text_encoder(tokenizer, 32, hidden_act="gelu"),
        tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer, 32, projection=True, hidden_act="gelu"),
        tokenizer_2=clip_tokenizer(),
        image_encoder=None,
        feature_extractor=None,
    )


def animatediff() -> Any:
    """``AnimateDiffPipeline``: an SD UNet (8, 8) and a motion adapter."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    tokenizer = clip_tokenizer()
    unet = _sd_unet(block_out_channels=(8, 8), cross_attention_dim=8, sample_size=8)
    adapter = seeded(
        MotionAdapter,
        block_out_channels=(8, 8),
        motion_layers_per_block=1,
        motion_norm_num_groups=2,
        motion_num_attention_heads=4,
    )
    return AnimateDiffPipeline(
        unet=unet,
        motion_adapter=adapter,
        scheduler=DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False
        ),
        vae=kl_vae(levels=2, channels=8),
        text_encoder=clip_text_encoder(tokenizer, 8, num_attention_heads=2),
        tokenizer=tokenizer,
        feature_extractor=None,
        image_encoder=None,
    )


def _unconditional_unet() -> Any:
    from diffusers import UNet2DModel

    return seeded(
        UNet2DModel,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )


def ddpm() -> Any:
    """``DDPMPipeline``: an unconditional UNet with one attention level."""
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=_unconditional_unet(), scheduler=DDPMScheduler())


def ddim() -> Any:
    """``DDIMPipeline``: the same UNet with ``DDIMScheduler``."""
    from diffusers import DDIMPipeline, DDIMScheduler

    return DDIMPipeline(unet=_unconditional_unet(), scheduler=DDIMScheduler())


def _movq() -> Any:
    from diffusers import VQModel

    return seeded(
        VQModel,
        block_out_channels=[32, 64],  # SpatialNorm has 32 groups
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )


def kandinsky22_decoder() -> Any:
    """``KandinskyV22Pipeline``: the decoder half of Kandinsky 2.2, conditioned on image embeddings
    (``image_embeds``/``negative_image_embeds``, which a prior would make)."""
    from diffusers import DDIMScheduler, KandinskyV22Pipeline, UNet2DConditionModel

    unet = seeded(
        UNet2DConditionModel,
        in_channels=4,
        out_channels=8,  # mean and variance
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(8, 16),
        layers_per_block=1,
        encoder_hid_dim=32,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=_movq())


def kandinsky22_prior() -> Any:
    """``KandinskyV22PriorPipeline``: an unCLIP-style prior from text to CLIP image embeddings (it
    returns ``image_embeds`` and ``negative_image_embeds``, which the decoder takes)."""
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    prior = seeded(
        PriorTransformer, num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1
    )
    with torch.no_grad():  # clip_std starts at 0, which would scale every embedding to 0
        prior.clip_std.fill_(1.0)
    image_encoder = seeded(
        CLIPVisionModelWithProjection,
        CLIPVisionConfig(
            hidden_size=32,
            image_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=8,
        ),
    )
    tokenizer = clip_tokenizer()
    return KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=clip_text_encoder(tokenizer, 32, projection=True),
        tokenizer=tokenizer,
        scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample=True,
            clip_sample_range=10.0,
        ),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
    )


def kandinsky3() -> Any:
    """``Kandinsky3Pipeline``: ``Kandinsky3UNet`` with a T5 encoder and a MoVQ decoder."""
    from diffusers import DDPMScheduler, Kandinsky3Pipeline, Kandinsky3UNet

    unet = seeded(
        Kandinsky3UNet,
        in_channels=4,
        time_embedding_dim=4,
        groups=2,
        attention_head_dim=4,
        layers_per_block=3,  # fewer breaks the UNet's channel bookkeeping
        block_out_channels=(32, 64),
        cross_attention_dim=4,
        encoder_hid_dim=32,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        thresholding=False,
    )
    return Kandinsky3Pipeline(
        unet=unet,
        scheduler=scheduler,
        movq=_movq(),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(128),
    )


def stable_cascade_prior() -> Any:
    """``StableCascadePriorPipeline``: a text-conditioned ``StableCascadeUNet`` prior; it returns image
    embeddings (``image_embeddings``), not images."""
    from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline, StableCascadeUNet

    prior = seeded(
        StableCascadeUNet,
        conditioning_dim=32,
        block_out_channels=(32, 32),
        num_attention_heads=(2, 2),
        down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1),
        switch_level=(False,),
        clip_image_in_channels=16,
        clip_text_in_channels=32,
        clip_text_pooled_in_channels=32,
        dropout=(0.0, 0.0),
    )
    tokenizer = clip_tokenizer()
    return StableCascadePriorPipeline(
        prior=prior,
        text_encoder=clip_text_encoder(tokenizer, 32, projection=True),
        tokenizer=tokenizer,
        scheduler=DDPMWuerstchenScheduler(),
        feature_extractor=None,
        image_encoder=None,
    )
