"""`CopilotSFTConfig`: the configuration of `CopilotSFTTrainer`, TRL's `SFTConfig` plus the Copilot's settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl import SFTConfig

from .arguments import CopilotTrainingArguments


@dataclass
class CopilotSFTConfig(SFTConfig, CopilotTrainingArguments):
    r"""
    Configuration of [`CopilotSFTTrainer`]: everything of TRL's `SFTConfig`, plus the Copilot's settings
    ([`CopilotTrainingArguments`]).

    Defaults run on a CPU without extra flags: `bf16` is turned off when no accelerator supports it, and the Pilot's
    loss is computed on full logits (the Mistake Log needs p̂ over the whole vocabulary; TRL's fused-LM-head loss
    never materialises it).
    """

    def __post_init__(self) -> None:
        if self.bf16 is None and not self.fp16 and not _accelerator_supports_bf16():
            self.bf16 = False  # TRL defaults to bf16, which a CPU-only machine would run slowly or not at all
        super().__post_init__()
        self.check_copilot_arguments()


def _accelerator_supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
