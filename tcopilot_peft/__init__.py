"""Transformer Copilot (Zou et al., NeurIPS 2025) on the Hugging Face stack.

Importing this package registers the `"copilot"` PEFT method, so `get_peft_model(pilot, CopilotConfig())` works.
"""

from .fusion import copilot_loss, fuse_logits
from .mistake_log import MistakeLog
from .trainer import CopilotSeq2SeqConfig, CopilotSeq2SeqTrainer, CopilotSFTConfig, CopilotSFTTrainer
from .tuner import CopilotCausalLMOutput, CopilotConfig, CopilotModel


__version__ = "0.1.0"

__all__ = [
    "CopilotCausalLMOutput",
    "CopilotConfig",
    "CopilotModel",
    "CopilotSFTConfig",
    "CopilotSFTTrainer",
    "CopilotSeq2SeqConfig",
    "CopilotSeq2SeqTrainer",
    "MistakeLog",
    "copilot_loss",
    "fuse_logits",
]
