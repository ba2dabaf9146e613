"""`CopilotSeq2SeqTrainer`: transformers' `Seq2SeqTrainer` running Transformer Copilot's joint training (the paper's
Algorithm 1) for encoder-decoder Pilots (T5, FLAN-T5). TRL's `SFTTrainer` is for causal LMs; this is the natural
Hugging Face path for seq2seq models, with the same Copilot side (`CopilotTrainerMixin`): the same Mistake Log,
Copilot update, checkpoints and resume."""

from __future__ import annotations

from transformers import Seq2SeqTrainer

from .algorithm import CopilotTrainerMixin, has_copilot
from .seq2seq_config import CopilotSeq2SeqConfig


class CopilotSeq2SeqTrainer(CopilotTrainerMixin, Seq2SeqTrainer):
    """Fine-tuning of an encoder-decoder Pilot with a Transformer Copilot learning from its Mistake Log.

    Args:
        model (`PeftModel`):
            `get_peft_model(t5_pilot, CopilotConfig(...))` (or a LoRA-tuned Pilot wrapped the same way).
        args (`CopilotSeq2SeqConfig`, *optional*):
            Training arguments; unset, `CopilotSeq2SeqConfig(output_dir="copilot-seq2seq")`.
        *pargs, **kwargs:
            Everything else is as for `transformers.Seq2SeqTrainer` (`train_dataset` of tokenised `input_ids`,
            `attention_mask` and `labels`; `data_collator`, typically `DataCollatorForSeq2Seq`; `processing_class`;
            `callbacks`, ...).
    """

    def __init__(self, model=None, args: CopilotSeq2SeqConfig | None = None, *pargs, **kwargs):
        if args is None:
            args = CopilotSeq2SeqConfig(output_dir="copilot-seq2seq")
        if not isinstance(args, CopilotSeq2SeqConfig):
            raise TypeError(
                f"CopilotSeq2SeqTrainer needs a CopilotSeq2SeqConfig as `args`, got {type(args).__name__}."
            )
        if not has_copilot(model):
            raise ValueError("CopilotSeq2SeqTrainer needs a Copilot: pass `get_peft_model(pilot, CopilotConfig())`.")
        if not model.base_model.encoder_decoder:
            raise ValueError(
                "CopilotSeq2SeqTrainer is for encoder-decoder Pilots; train a causal LM with CopilotSFTTrainer."
            )
        super().__init__(model, args, *pargs, **kwargs)
        self._init_copilot()
