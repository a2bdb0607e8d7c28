"""Zoo builders for the image transformer pipelines: DiT, PixArt-α/Σ, HunyuanDiT, SD3, Flux, AuraFlow,
Sana and Lumina 2 (configs after Diffusers' ``get_dummy_components`` for each)."""

from __future__ import annotations

from typing import Any

from zoo.parts import (
    bert_tokenizer,
    clip_text_encoder,
    clip_tokenizer,
    gemma_text_encoder,
    gemma_tokenizer,
    kl_vae,
    seeded,
    t5_text_encoder,
    t5_tokenizer,
)

__all__ = [
    "aura_flow",
    "dit",
    "flux",
    "hunyuan_dit",
    "lumina2",
    "pixart_alpha",
    "pixart_sigma",
    "sana",
    "sd3",
]


def dit() -> Any:
    """``DiTPipeline``: a class-conditional DiT (patch 4) on a 2-level VAE."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = seeded(
        DiTTransformer2DModel,
        sample_size=16,
        num_layers=2,
        patch_size=4,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    return DiTPipeline(
        transformer=transformer,
        vae=kl_vae(levels=2),
        scheduler=DDIMScheduler(),
        id2label={0: "white shark", 1: "umbrella", 2: "golden retriever", 3: "volcano"},
    )


def _pixart_transformer() -> Any:
    from diffusers import PixArtTransformer2DModel

    return seeded(
        PixArtTransformer2DModel,
        sample_size=8,
        num_layers=2,
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
    )


def pixart_alpha() -> Any:
    """``PixArtAlphaPipeline``: resolution binning must be off at tiny sizes (it snaps to 1024 bins)."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline

    return PixArtAlphaPipeline(
        transformer=_pixart_transformer(),
        vae=kl_vae(levels=2),
        scheduler=DDIMScheduler(),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(120),
    )


def pixart_sigma() -> Any:
    """``PixArtSigmaPipeline``: as PixArt-α, with Sigma's pipeline (300-token prompts)."""
    from diffusers import DDIMScheduler, PixArtSigmaPipeline

    return PixArtSigmaPipeline(
        transformer=_pixart_transformer(),
        vae=kl_vae(levels=2),
        scheduler=DDIMScheduler(),
        text_encoder=t5_text_encoder(),
        tokenizer=t5_tokenizer(300),
    )


def hunyuan_dit() -> Any:
    """``HunyuanDiTPipeline``: a BERT and a T5 encoder, resolution binning to switch off."""
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    transformer = seeded(
        HunyuanDiT2DModel,
        sample_size=16,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        in_channels=4,
        cross_attention_dim=32,
        cross_attention_dim_t5=32,
        pooled_projection_dim=16,
        hidden_size=24,
        activation_fn="gelu-approximate",
    )
    bert = seeded(
        BertModel,
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=128,
            max_position_embeddings=512,
        ),
        add_pooling_layer=False,
    )
    return HunyuanDiTPipeline(
        transformer=transformer,
        vae=kl_vae(levels=4, channels=4),  # the pipeline's RoPE grid assumes a factor-8 VAE
        scheduler=DDPMScheduler(),
        text_encoder=bert,
        tokenizer=bert_tokenizer(77),
        text_encoder_2=t5_text_encoder(),
        tokenizer_2=t5_tokenizer(256),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _flat_vae(latent_channels: int, levels: int = 2) -> Any:
    """The shift-and-scale VAE of Diffusers' SD3/Flux/Lumina tests (one level there, two here)."""
    return kl_vae(
        levels=levels,
        channels=4,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def sd3() -> Any:
    """``StableDiffusion3Pipeline``: an MMDiT, two projected CLIP encoders and a T5 encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = seeded(
        SD3Transformer2DModel,
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    tokenizer = clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flat_vae(4),
        text_encoder=clip_text_encoder(tokenizer, 32, projection=True, hidden_act="gelu"),
        tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer, 32, projection=True, hidden_act="gelu"),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_text_encoder(),
        tokenizer_3=t5_tokenizer(256),
        image_encoder=None,
        feature_extractor=None,
    )


def flux() -> Any:
    """``FluxPipeline``: a one-double, one-single-block Flux transformer with 3-axis RoPE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = seeded(
        FluxTransformer2DModel,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    tokenizer = clip_tokenizer()
    return FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flat_vae(1),
        text_encoder=clip_text_encoder(tokenizer, 32, hidden_act="gelu"),
        tokenizer=tokenizer,
        text_encoder_2=t5_text_encoder(),
        tokenizer_2=t5_tokenizer(512),
        image_encoder=None,
        feature_extractor=None,
    )


def aura_flow() -> Any:
    """``AuraFlowPipeline``: an MMDiT/DiT hybrid with a UMT5 encoder."""
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    transformer = seeded(
        AuraFlowTransformer2DModel,
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        out_channels=4,
        pos_embed_max_size=256,
    )
    text_encoder = seeded(
        UMT5EncoderModel,
        UMT5Config(
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            relative_attention_num_buckets=8,
            vocab_size=128,
        ),
    )
    return AuraFlowPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=kl_vae(levels=2),
        text_encoder=text_encoder,
        tokenizer=t5_tokenizer(256),
    )


def sana() -> Any:
    """``SanaPipeline``: linear-attention DiT, a DC autoencoder and a Gemma-2 encoder."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    transformer = seeded(
        SanaTransformer2DModel,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
    )
    vae = seeded(
        AutoencoderDC,
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=[1, 1],
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    return SanaPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder=gemma_text_encoder(8, head_dim=16, intermediate_size=64),
        tokenizer=gemma_tokenizer(),
    )


def lumina2() -> Any:
    """``Lumina2Pipeline``: Lumina-Image 2.0's DiT with a Gemma-2 encoder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    transformer = seeded(
        Lumina2Transformer2DModel,
        sample_size=16,
        patch_size=2,
        in_channels=4,
        hidden_size=8,
        num_layers=2,
        num_attention_heads=1,
        num_kv_heads=1,
        multiple_of=16,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        scaling_factor=1.0,
        axes_dim_rope=[4, 2, 2],
        cap_feat_dim=8,
    )
    return Lumina2Pipeline(
        transformer=transformer,
        vae=_flat_vae(4, levels=4),  # the pipeline assumes a factor-8 VAE
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=gemma_text_encoder(8, num_hidden_layers=2, intermediate_size=8),
        tokenizer=gemma_tokenizer(),
    )
