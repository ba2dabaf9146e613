"""Joint Pilot–Copilot fine-tuning: `CopilotSFTTrainer` (TRL, causal LMs) and `CopilotSeq2SeqTrainer`
(encoder-decoder Pilots), sharing the Copilot's side of Algorithm 1 (`CopilotTrainerMixin`) and its settings
(`CopilotTrainingArguments`).
"""

from .algorithm import CopilotTrainerMixin
from .config import CopilotSeq2SeqConfig, CopilotSFTConfig, CopilotTrainingArguments
from .seq2seq import CopilotSeq2SeqTrainer
from .trainer import CopilotSFTTrainer
from .updater import CopilotUpdater


__all__ = [
    "CopilotSFTConfig",
    "CopilotSFTTrainer",
    "CopilotSeq2SeqConfig",
    "CopilotSeq2SeqTrainer",
    "CopilotTrainerMixin",
    "CopilotTrainingArguments",
    "CopilotUpdater",
]
