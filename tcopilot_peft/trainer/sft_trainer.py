"""`CopilotSFTTrainer`: TRL's `SFTTrainer` running Transformer Copilot's joint training (the paper's Algorithm 1) for
causal-LM Pilots; the Copilot's side lives in `CopilotTrainerMixin` (`algorithm.py`)."""

from __future__ import annotations

from dataclasses import fields

from trl import SFTConfig, SFTTrainer

from ..data import INSTRUCTION_COLUMNS, to_trl_format
from ..tuner import CopilotConfig
from .algorithm import CopilotTrainerMixin, has_copilot
from .model_card import COPILOT_TAGS
from .sft_config import CopilotSFTConfig


USABLE_COLUMN_SETS = (("text",), ("messages",), ("prompt", "completion"), ("prompt",), ("input_ids",))


class CopilotSFTTrainer(CopilotTrainerMixin, SFTTrainer):
    """Supervised fine-tuning of a Pilot with a Transformer Copilot learning from its Mistake Log.

    Args:
        model (`PeftModel`, `PreTrainedModel` or `str`):
            A `get_peft_model(pilot, CopilotConfig(...))` model, or a Pilot (name, path or model) together with
            `peft_config=CopilotConfig(...)`.
        args (`CopilotSFTConfig` or `SFTConfig`, *optional*):
            Training arguments. A plain `SFTConfig` keeps its values and takes the Copilot's defaults for the rest;
            unset, `CopilotSFTConfig(output_dir="copilot-sft")`.
        peft_config (`CopilotConfig`, *optional*):
            The Copilot to create on a plain Pilot `model`.
        *pargs, **kwargs:
            Everything else is as for `trl.SFTTrainer` (`train_dataset`, `eval_dataset`, `processing_class`,
            `callbacks`, ...). Datasets are in one of TRL's forms, or LLM-Adapters `instruction`/`input`/`output`
            rows, which become prompt/completion rows with the Alpaca template as `tcopilot train` makes them.
    """

    _tag_names = ["trl", "sft", *COPILOT_TAGS]

    def __init__(
        self,
        model=None,
        args: CopilotSFTConfig | SFTConfig | None = None,
        *pargs,
        peft_config: CopilotConfig | None = None,
        **kwargs,
    ):
        args = _as_copilot_config(args)
        _refuse_unsupported_options(args)
        for split in ("train_dataset", "eval_dataset"):
            if kwargs.get(split) is not None:
                kwargs[split] = _as_trl_rows(kwargs[split], split)
        if not has_copilot(model) and not isinstance(peft_config, CopilotConfig):
            raise ValueError(
                "CopilotSFTTrainer needs a Copilot: pass `get_peft_model(pilot, CopilotConfig())` as `model`, or a "
                "Pilot together with `peft_config=CopilotConfig(...)`."
            )
        super().__init__(model, args, *pargs, peft_config=peft_config, **kwargs)
        self._init_copilot()


# ---------------------------------------------------------------------- helpers


def _as_copilot_config(args) -> CopilotSFTConfig:
    """`args` as a `CopilotSFTConfig`: a plain `SFTConfig`'s values with the Copilot's defaults for the rest."""
    if args is None:
        return CopilotSFTConfig(output_dir="copilot-sft")
    if isinstance(args, CopilotSFTConfig):
        return args
    if isinstance(args, SFTConfig):
        return CopilotSFTConfig(**{f.name: getattr(args, f.name) for f in fields(SFTConfig) if f.init})
    raise TypeError(
        f"CopilotSFTTrainer needs a CopilotSFTConfig (or an SFTConfig) as `args`, got {type(args).__name__}."
    )


def _refuse_unsupported_options(args: CopilotSFTConfig) -> None:
    reasons = {
        "packing": (
            args.packing,
            "packing concatenates sequences, and the Copilot's causal memory would then read across examples",
        ),
        "padding_free": (args.padding_free, "the Mistake Log stores whole padded sequences"),
        "use_liger_kernel": (args.use_liger_kernel, "Liger's fused loss never builds the p̂ the Mistake Log needs"),
        "loss_type": (args.loss_type != "nll", "the Pilot is trained with the standard cross-entropy ('nll')"),
        "label_smoothing_factor": (
            args.label_smoothing_factor > 0,
            "the Pilot's loss is the model's own cross-entropy",
        ),
    }
    for option, (used, reason) in reasons.items():
        if used:
            raise ValueError(f"CopilotSFTTrainer does not support `{option}`: {reason}.")


def _as_trl_rows(dataset, split: str):
    """`dataset` in a form TRL's `SFTTrainer` reads: LLM-Adapters instruction rows become prompt/completion rows
    (`data.to_trl_format`, as the CLI converts them), TRL's forms are kept, and a dataset with neither is refused."""
    if isinstance(dataset, dict):  # named evaluation sets
        return {name: _as_trl_rows(part, f"{split} {name!r}") for name, part in dataset.items()}
    columns = getattr(dataset, "column_names", None)
    if columns is None or any(all(c in columns for c in needed) for needed in USABLE_COLUMN_SETS):
        return dataset
    if all(c in columns for c in INSTRUCTION_COLUMNS):
        return to_trl_format(dataset)
    raise ValueError(
        f"The {split} has no usable columns: found {sorted(columns)}; expected 'text', 'messages', "
        "'prompt' + 'completion', tokenized 'input_ids', or LLM-Adapters 'instruction' + 'output'."
    )
