"""Tiny shared parts of the zoo's pipelines: local tokenizers, text encoders and autoencoders.

Nothing is downloaded. Tokenizers are built in memory from small vocabularies made here (the CLIP one
comes from ``fixtures/build_fixtures.py``, the same BPE files ``tiny-sd`` ships); every model is built
right after ``torch.manual_seed(SEED)`` from a small config modelled on the ``get_dummy_components`` of
Diffusers' own pipeline tests, so a build is the same on every run of one torch version.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = [
    "SEED",
    "bert_tokenizer",
    "byte_symbols",
    "clip_text_encoder",
    "clip_tokenizer",
    "gemma_text_encoder",
    "gemma_tokenizer",
    "kl_vae",
    "seeded",
    "t5_text_encoder",
    "t5_tokenizer",
]

#: Seed set before each component is built.
SEED = 0

_FIXTURE_BUILDER = Path(__file__).resolve().parents[2] / "fixtures" / "build_fixtures.py"

# The words the zoo's prompts use (pytest_mps.inputs' prompts and Diffusers' test prompts), so the
# word-level tokenizers below see known words rather than only single characters.
_WORDS = tuple(
    re.findall(
        r"[a-z]+",
        """
        a photo of an astronaut riding horse on mars watercolor painting lighthouse at dawn red cube blue
        table squirrel eating burger dance monkey negative low quality hammer hitting wooden surface
        """,
    )
)
_CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")


def seeded(build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)`` right after ``torch.manual_seed(SEED)``; a module comes back in eval
    mode (a module built in code starts in training mode, where dropout draws random numbers)."""
    torch.manual_seed(SEED)
    made = build(*args, **kwargs)
    if isinstance(made, torch.nn.Module):
        made.eval()
    return made


@cache
def _fixture_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pytest_mps_fixture_builder", _FIXTURE_BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- tokenizers -----------------------------------------------------------------------------------


def clip_tokenizer() -> Any:
    """The tiny CLIP BPE tokenizer of ``fixtures/tiny-sd`` (byte-level, 77 tokens, ~700 ids)."""
    return _fixture_builder().build_tokenizer()


def t5_tokenizer(model_max_length: int = 512) -> Any:
    """A tiny T5 (Unigram) tokenizer: the prompt words, single characters, ``<pad>``=0, ``</s>``=1,
    ``<unk>``=2 and no sentinel ids."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -3.0) for word in _WORDS]
    vocab += [(char, -5.0) for char in _CHARACTERS] + [(f"▁{char}", -6.0) for char in _CHARACTERS]
    return T5Tokenizer(vocab=_unique(vocab), extra_ids=0, model_max_length=model_max_length)


def gemma_tokenizer(model_max_length: int = 512) -> Any:
    """A tiny Gemma (byte-fallback BPE) tokenizer: special tokens, the 256 byte tokens, characters and
    merges that spell the prompt words."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for token in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"):
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["▁", *_CHARACTERS, *(c.upper() for c in _CHARACTERS if c.isalpha())]:
        vocab.setdefault(char, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = ["▁", *word]
        while len(symbols) > 1:
            left, right = symbols[0], symbols[1]
            merges.append((left, right))
            vocab.setdefault(left + right, len(vocab))
            symbols = [left + right, *symbols[2:]]
    return GemmaTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=model_max_length)


def bert_tokenizer(model_max_length: int = 77) -> Any:
    """A tiny WordPiece (BERT) tokenizer: special tokens, the prompt words and single characters."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *_CHARACTERS]
    tokens += [f"##{char}" for char in _CHARACTERS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def _unique(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    seen: dict[str, float] = {}
    for piece, score in pairs:
        seen.setdefault(piece, score)
    return list(seen.items())


# --- text encoders --------------------------------------------------------------------------------


def clip_text_encoder(
    tokenizer: Any, hidden_size: int = 32, *, projection: bool = False, layers: int = 2, **config: Any
) -> Any:
    """A tiny CLIP text encoder (with a text projection when ``projection``) for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    settings: dict[str, Any] = {
        "hidden_size": hidden_size,
        "intermediate_size": 37,
        "num_attention_heads": 4 if hidden_size % 4 == 0 else 2,
        "num_hidden_layers": layers,
        "layer_norm_eps": 1e-5,
        "vocab_size": 1000,
        "projection_dim": hidden_size,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    settings.update(config)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return seeded(cls, CLIPTextConfig(**settings))


def t5_text_encoder(d_model: int = 32, **config: Any) -> Any:
    """A tiny T5 encoder (the shape of Diffusers' ``tiny-random-t5``, two layers)."""
    from transformers import T5Config, T5EncoderModel

    settings: dict[str, Any] = {
        "d_model": d_model,
        "d_ff": 37,
        "d_kv": 8,
        "num_heads": 4,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "relative_attention_num_buckets": 8,
        "vocab_size": 128,
    }
    settings.update(config)
    return seeded(T5EncoderModel, T5Config(**settings))


def gemma_text_encoder(hidden_size: int = 8, **config: Any) -> Any:
    """A tiny Gemma-2 encoder (Sana, Lumina 2)."""
    from transformers import Gemma2Config, Gemma2Model

    settings: dict[str, Any] = {
        "head_dim": 4,
        "hidden_size": hidden_size,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "num_key_value_heads": 2,
        "sliding_window": 8,
        "vocab_size": 512,
        "attn_implementation": "eager",
    }
    settings.update(config)
    return seeded(Gemma2Model, Gemma2Config(**settings))


# --- autoencoders ---------------------------------------------------------------------------------


def kl_vae(levels: int = 2, channels: int = 8, latent_channels: int = 4, **config: Any) -> Any:
    """A tiny ``AutoencoderKL`` with ``levels`` blocks (spatial factor ``2 ** (levels - 1)``)."""
    from diffusers import AutoencoderKL

    settings: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [channels] * levels,
        "layers_per_block": 1,
        "latent_channels": latent_channels,
        "norm_num_groups": 2,
        "sample_size": 32,
    }
    settings.update(config)
    return seeded(AutoencoderKL, **settings)


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of GPT-2/CLIP byte-level BPE, in byte order."""
    mapping = _fixture_builder()._bytes_to_unicode()
    return [mapping[byte] for byte in range(256)]
