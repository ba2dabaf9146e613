"""TRL integration: `CopilotSFTConfig` and `CopilotSFTTrainer` (joint Pilot–Copilot fine-tuning)."""

from .config import CopilotSFTConfig
from .trainer import CopilotSFTTrainer


__all__ = ["CopilotSFTConfig", "CopilotSFTTrainer"]
