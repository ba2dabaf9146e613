"""`CopilotSeq2SeqConfig`: the configuration of `CopilotSeq2SeqTrainer`, transformers' `Seq2SeqTrainingArguments`
plus the Copilot's settings."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Seq2SeqTrainingArguments

from .arguments import CopilotTrainingArguments


@dataclass
class CopilotSeq2SeqConfig(Seq2SeqTrainingArguments, CopilotTrainingArguments):
    r"""
    Configuration of [`CopilotSeq2SeqTrainer`] (encoder-decoder Pilots such as T5): everything of transformers'
    `Seq2SeqTrainingArguments`, plus the Copilot's settings ([`CopilotTrainingArguments`]).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_copilot_arguments()
