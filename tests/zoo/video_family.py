"""Zoo builders for the video pipelines: Wan, LTX-Video, CogVideoX, Latte and Allegro (configs after
Diffusers' ``get_dummy_components`` for each; T5 encoders and tokenizers from :mod:`zoo.parts`)."""

from __future__ import annotations

from typing import Any

from zoo.parts import kl_vae, seeded, t5_text_encoder, t5_tokenizer

__all__ = ["allegro", "cogvideox", "latte", "ltx", "wan"]


def wan() -> Any:
    """``WanPipeline``: a 3-D patch ``(1, 2, 2)`` transformer (a list ``patch_size``) whose time embedder
    and norms stay in float32 (``_keep_in_fp32_modules``: loading it needs ``accelerate``)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    vae = seeded(
        AutoencoderKLWan,
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = seeded(
        WanTransformer3DModel,
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return WanPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(512),
    )


def ltx() -> Any:
    """``LTXPipeline``: LTX-Video's transformer and causal video VAE (defaults: 161 frames)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    transformer = seeded(
        LTXVideoTransformer3DModel,
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    vae = seeded(
        AutoencoderKLLTXVideo,
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return LTXPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(128),
    )


def _video_vae(cls_name: str, block: str) -> Any:
    import diffusers

    return seeded(
        getattr(diffusers, cls_name),
        in_channels=3,
        out_channels=3,
        down_block_types=(f"{block}DownBlock3D",) * 4,
        up_block_types=(f"{block}UpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )


def cogvideox() -> Any:
    """``CogVideoXPipeline``: CogVideoX-2b's layout, whose sin/cos position table is built in float64 at
    construction and registered as a buffer (``patch_embed.pos_embedding``): MPS cannot take it."""
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel, DDIMScheduler

    transformer = seeded(
        CogVideoXTransformer3DModel,
        num_attention_heads=4,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=1,
        sample_width=2,
        sample_height=2,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
    )
    return CogVideoXPipeline(
        transformer=transformer,
        vae=_video_vae("AutoencoderKLCogVideoX", "CogVideoX"),
        scheduler=DDIMScheduler(),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(226),
    )


def latte() -> Any:
    """``LattePipeline``: a spatio-temporal DiT on a per-frame VAE."""
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    transformer = seeded(
        LatteTransformer3DModel,
        sample_size=8,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        video_length=2,  # Latte's temporal position table fixes the frame count
    )
    return LattePipeline(
        transformer=transformer,
        vae=kl_vae(levels=2),
        scheduler=DDIMScheduler(),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(120),
    )


def allegro() -> Any:
    """``AllegroPipeline``: its VAE decodes only with tiling on (Diffusers' own test turns it on; a
    saved pipeline loads with it off and raises ``NotImplementedError`` on every device)."""
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, DDIMScheduler

    transformer = seeded(
        AllegroTransformer3DModel,
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        cross_attention_dim=24,
        sample_width=8,
        sample_height=8,
        sample_frames=8,
        caption_channels=24,
    )
    return AllegroPipeline(
        transformer=transformer,
        vae=_video_vae("AutoencoderKLAllegro", "Allegro"),
        scheduler=DDIMScheduler(),
        text_encoder=t5_text_encoder(24),
        tokenizer=t5_tokenizer(512),
    )
