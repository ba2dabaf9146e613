"""Shared by the benchmark scripts: the randomly initialised Llama Pilot they measure (speed does not depend on the
weights' values, so nothing is downloaded), and plain SFT with the LM head run on the targets only."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTTrainer

from tcopilot_peft.fusion import IGNORE_INDEX


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


class TargetOnlySFTTrainer(SFTTrainer):
    """Plain SFT with the loss TRL's `SFTTrainer` optimises (mean cross-entropy over the completion's tokens) and the
    LM head run only where there is a label, as `CopilotSFTTrainer`'s Pilot loss runs it. Off a Triton device (on a
    CPU) TRL 1.16 projects every position, prompt included, onto the vocabulary: this is the baseline on equal
    footing. For a decoder-only Pilot, bare or PEFT-wrapped (LoRA)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = causal_lm.model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        labels = inputs["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        logits = causal_lm.lm_head(hidden.last_hidden_state[:, :-1][scored])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[scored])
        return (loss, None) if return_outputs else loss
