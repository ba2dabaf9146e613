"""Tiny, offline Pilots and helpers shared by the tests."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

import tcopilot_peft  # noqa: F401  (registers the PEFT method)
from tcopilot_peft.toy import addition_dataset, char_tokenizer  # noqa: F401


VOCAB = 97
# On AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for inference in blocks of 64 input features, and crashes on
# narrower layers; quantized Pilots in the tests are that wide.
QUANTIZABLE_WIDTH = 64
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_pilot(arch: str = "llama", seed: int = 0, hidden_size: int = 32, vocab_size: int = VOCAB, layers: int = 4):
    config_cls, model_cls = ARCHITECTURES[arch]
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


# T5 (ReLU, tied head, scaled decoder outputs) and T5 v1.1 / FLAN-T5 (gated GELU, untied head).
T5_VARIANTS = {
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "flan-t5": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def tiny_t5(variant: str = "flan-t5", seed: int = 0, d_model: int = 32, vocab_size: int = VOCAB, layers: int = 4):
    """A tiny T5-family Pilot. (Encoder and decoder depths are equal: transformers 5.x cannot generate from a T5 whose
    `num_decoder_layers` differs from `num_layers`, Copilot or not.)"""
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        num_heads=4,
        d_ff=2 * d_model,
        num_layers=layers,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        **T5_VARIANTS[variant],
    )
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config).eval()


def randomise_copilot(model, seed: int = 0, scale: float = 0.5) -> None:
    """Give the Copilot's zero-initialised output map random weights so its corrections are non-zero."""
    torch.manual_seed(seed)
    for network in model.base_model.copilot_model.values():
        with torch.no_grad():
            network.output_proj.weight.normal_(std=scale)


@pytest.fixture
def pilot():
    return tiny_pilot()


def arithmetic_dataset(n: int = 64, seed: int = 0):
    """Prompt/completion pairs of small additions, in TRL's prompt-completion form."""
    return addition_dataset(n, seed)
