"""The outputs of a Copilot model's forward: the Pilot's own output class, whose `logits` are fused, plus the Copilot's
fields, defined once (`CopilotOutputFields`) for the decoder-only and the encoder-decoder output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast, Seq2SeqLMOutput


@dataclass
class CopilotOutputFields:
    """What a Copilot model's output adds to the Pilot's (listed first among the bases, its fields come after the
    Pilot's own, so `to_tuple()` keeps the Pilot's order).

    Args:
        pilot_logits: the Pilot's logits (None in the trainer's step, and when `generate()` fuses in hidden space).
        pilot_target_logits: with `labels`, the Pilot's logits at the target positions only (the positions whose
            target is not -100), packed row-major as `(N, |V|)`: what the trainer's accuracy and the Mistake Log read.
        copilot_logits: the Copilot's correction f.
        copilot_loss: the Copilot's training loss, its config's `copilot_loss` (teacher-forced with `labels`; no
            gradient reaches the Pilot).
        copilot_memory_x, copilot_memory_h: with `labels`, detached X̃ (the input embeddings of a decoder-only Pilot,
            the encoder output of an encoder-decoder one, followed with a token path by the decoder's input
            embeddings) and layer-pooled Pilot states, the Mistake Log's inputs.
    """

    pilot_logits: torch.Tensor | None = None
    pilot_target_logits: torch.Tensor | None = None
    copilot_logits: torch.Tensor | None = None
    copilot_loss: torch.Tensor | None = None
    copilot_memory_x: torch.Tensor | None = None
    copilot_memory_h: torch.Tensor | None = None


@dataclass
class CopilotCausalLMOutput(CopilotOutputFields, CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` whose `logits` are fused (None in the trainer's step, which has no correction), plus
    `CopilotOutputFields`. `loss` is the Pilot's own cross-entropy (when `labels` were given); no gradient from it
    reaches the Copilot."""


@dataclass
class CopilotSeq2SeqLMOutput(CopilotOutputFields, Seq2SeqLMOutput):
    """`Seq2SeqLMOutput` whose `logits` are fused, plus `CopilotOutputFields`."""
