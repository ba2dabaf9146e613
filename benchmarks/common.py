"""Shared by the benchmark scripts: the randomly initialised Llama Pilot they measure (speed does not depend on the
weights' values, so nothing is downloaded)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def random_llama(hidden: int, layers: int, vocab: int, seed: int = 0) -> LlamaForCausalLM:
    """A Llama of the given width, depth and vocabulary with Llama-like proportions (SwiGLU ≈ 8/3·d, GQA 2:1)."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
