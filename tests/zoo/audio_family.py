"""Zoo builder for AudioLDM 2: a CLAP and a T5 encoder, a GPT-2 language model that generates the
conditioning, a two-branch UNet, a spectrogram VAE and a HiFi-GAN vocoder (after Diffusers'
``get_dummy_components`` for AudioLDM 2)."""

from __future__ import annotations

from typing import Any

from zoo.parts import byte_symbols, seeded, t5_text_encoder, t5_tokenizer

__all__ = ["audioldm2"]


def _roberta_tokenizer() -> Any:
    """A byte-level BPE (RoBERTa) tokenizer with no merges: special tokens and the 256 byte symbols."""
    from transformers import RobertaTokenizer

    vocab = {token: i for i, token in enumerate(("<s>", "<pad>", "</s>", "<unk>", "<mask>"))}
    for symbol in byte_symbols():
        vocab.setdefault(symbol, len(vocab))
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=77)


def audioldm2() -> Any:
    """``AudioLDM2Pipeline``: returns waveforms (``audios``)."""
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    unet = seeded(
        AudioLDM2UNet2DConditionModel,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(8, 16),
    )
    vae = seeded(
        AutoencoderKL,
        block_out_channels=[8, 16],
        in_channels=1,
        out_channels=1,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    clap = seeded(
        ClapModel,
        ClapConfig(
            text_config={
                "bos_token_id": 0,
                "eos_token_id": 2,
                "pad_token_id": 1,
                "hidden_size": 8,
                "intermediate_size": 37,
                "layer_norm_eps": 1e-05,
                "num_attention_heads": 1,
                "num_hidden_layers": 1,
                "vocab_size": 300,
                "projection_dim": 8,
            },
            audio_config={
                "spec_size": 8,
                "window_size": 4,
                "num_mel_bins": 8,
                "intermediate_size": 37,
                "layer_norm_eps": 1e-05,
                "depths": [1, 1],
                "num_attention_heads": [1, 1],
                "num_hidden_layers": 1,
                "hidden_size": 192,
                "projection_dim": 8,
                "patch_size": 2,
                "patch_stride": 2,
                "patch_embed_input_channels": 4,
            },
            projection_dim=16,
        ),
    )
    language_model = seeded(
        GPT2LMHeadModel,
        GPT2Config(
            n_embd=16,
            n_head=1,
            n_layer=1,
            vocab_size=300,
            n_ctx=99,
            n_positions=99,
            bos_token_id=0,
            eos_token_id=2,
        ),
    )
    language_model.config.max_new_tokens = 8
    projection = seeded(
        AudioLDM2ProjectionModel, text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16
    )
    vocoder = seeded(
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig(
            model_in_dim=8,
            sampling_rate=16000,
            upsample_initial_channel=16,
            upsample_rates=[2, 2],
            upsample_kernel_sizes=[4, 4],
            resblock_kernel_sizes=[3, 7],
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            normalize_before=False,
        ),
    )
    return AudioLDM2Pipeline(
        vae=vae,
        text_encoder=clap,
        text_encoder_2=t5_text_encoder(),
        projection_model=projection,
        language_model=language_model,
        tokenizer=_roberta_tokenizer(),
        tokenizer_2=t5_tokenizer(77),
        feature_extractor=ClapFeatureExtractor(),
        unet=unet,
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
        ),
        vocoder=vocoder,
    )
