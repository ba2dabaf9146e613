"""Joint Pilot–Copilot fine-tuning, in TRL's layout: `CopilotSFTTrainer` (`sft_trainer.py`, TRL, causal LMs) with
`CopilotSFTConfig` (`sft_config.py`), and `CopilotSeq2SeqTrainer` (`seq2seq_trainer.py`, encoder-decoder Pilots) with
`CopilotSeq2SeqConfig` (`seq2seq_config.py`). Both share the Copilot's side of Algorithm 1 (`CopilotTrainerMixin`,
`algorithm.py`), its checkpoints (`checkpoint.py`), its optimiser (`CopilotUpdater`, `updater.py`) and its settings
(`CopilotTrainingArguments`, `arguments.py`).
"""

from .algorithm import CopilotTrainerMixin
from .arguments import CopilotTrainingArguments
from .seq2seq_config import CopilotSeq2SeqConfig
from .seq2seq_trainer import CopilotSeq2SeqTrainer
from .sft_config import CopilotSFTConfig
from .sft_trainer import CopilotSFTTrainer
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
