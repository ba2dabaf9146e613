"""The outputs of a Copilot model's forward: the Pilot's own output class, whose `logits` are fused, plus what
training and the Mistake Log read."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast, Seq2SeqLMOutput


@dataclass
class CopilotCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` whose `logits` are fused, plus what training needs.

    Args:
        loss: the Pilot's own cross-entropy (when `labels` were given); no gradient from it reaches the Copilot.
        logits: fused logits (None in the trainer's step, which has no correction).
        pilot_logits: the Pilot's logits (None in the trainer's step, and when `generate()` fuses in hidden space).
        pilot_target_logits: with `labels`, the Pilot's logits at the target positions only (`labels[:, t + 1] !=
            -100`), packed row-major as `(N, |V|)`: what the trainer's accuracy and the Mistake Log read.
        copilot_logits: the Copilot's correction f.
        copilot_loss: the Copilot's training loss, its config's `copilot_loss` (teacher-forced with `labels`; no
            gradient reaches the Pilot).
        copilot_memory_x, copilot_memory_h: with `labels`, detached X̃ and layer-pooled Pilot states, the Mistake
            Log's inputs.
    """

    pilot_logits: torch.Tensor | None = None
    pilot_target_logits: torch.Tensor | None = None
    copilot_logits: torch.Tensor | None = None
    copilot_loss: torch.Tensor | None = None
    copilot_memory_x: torch.Tensor | None = None
    copilot_memory_h: torch.Tensor | None = None


@dataclass
class CopilotSeq2SeqLMOutput(Seq2SeqLMOutput):
    """`Seq2SeqLMOutput` whose `logits` are fused, plus the fields of `CopilotCausalLMOutput` (same meanings;
    `copilot_memory_x` is the encoder output)."""

    pilot_logits: torch.Tensor | None = None
    pilot_target_logits: torch.Tensor | None = None
    copilot_logits: torch.Tensor | None = None
    copilot_loss: torch.Tensor | None = None
    copilot_memory_x: torch.Tensor | None = None
    copilot_memory_h: torch.Tensor | None = None
