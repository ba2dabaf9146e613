"""The model card of a trained Copilot adapter: what it is, which Pilot it corrects, how to load it, its Copilot
config and what the trainer measured.

PEFT's own card is a blank template (`PeftModel.create_or_update_model_card`) and TRL's names the base model only when
it is a Hub id; neither says that loading the adapter needs `import tcopilot_peft` (without it PEFT does not know the
`COPILOT` adapter type and fails with `KeyError: 'COPILOT'`).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

from huggingface_hub import ModelCard, ModelCardData


# The method tags of a Copilot adapter, as LoRA adapters carry `lora` (the trainers add them to the Pilot's
# `model_tags`, which PEFT's own card update keeps).
COPILOT_TAGS = ("copilot", "transformer-copilot")
PAPER_URL = "https://arxiv.org/abs/2505.16270"
# The Copilot settings the card lists, in this order.
CARD_CONFIG_FIELDS = (
    "copilot_loss",
    "num_layers",
    "init",
    "fusion_mode",
    "fusion_lambda",
    "inference_feed",
    "pooled_layers",
    "dropout",
)
# (column, training log key, held-out log key) of the results table.
RESULT_COLUMNS = (
    ("Pilot loss", "loss", "eval_loss"),
    ("Copilot loss", "copilot_loss", "eval_copilot_loss"),
    ("Pilot token accuracy", "mean_token_accuracy", "eval_mean_token_accuracy"),
)


def copilot_model_card(model, log_history: list[dict] | None = None, model_name: str | None = None) -> ModelCard:
    """The card of the active Copilot adapter of `model` (a `PeftModel` holding a Copilot).

    Args:
        model (`PeftModel`): the Pilot with its Copilot.
        log_history (`list[dict]`, *optional*): `trainer.state.log_history`; its last training and evaluation entries
            give the card's results table (no table without them).
        model_name (`str`, *optional*): the card's title; defaults to "Transformer Copilot adapter".
    """
    config = model.peft_config[model.active_adapter]
    pilot = model.get_base_model()
    pilot_name = getattr(pilot.config, "_name_or_path", "") or None
    data = ModelCardData(
        library_name="peft",
        base_model=pilot_name if pilot_name and not os.path.isdir(pilot_name) else None,
        tags=sorted({*COPILOT_TAGS, "peft", *(getattr(pilot, "model_tags", None) or [])}),
        pipeline_tag="text2text-generation" if pilot.config.is_encoder_decoder else "text-generation",
    )
    sections = [
        f"---\n{data.to_yaml()}\n---",
        f"# {model_name or 'Transformer Copilot adapter'}",
        _what_it_is(config, pilot_name),
        _how_to_load(pilot.config.is_encoder_decoder, pilot_name),
        _config_table(config),
        _results(log_history or []),
        _versions(),
    ]
    return ModelCard("\n\n".join(section for section in sections if section) + "\n")


def _what_it_is(config, pilot_name: str | None) -> str:
    architecture = config.copilot_architecture or {}
    shape = ", ".join(f"{key} {architecture[key]}" for key in ("num_layers", "hidden_size") if key in architecture)
    return (
        f"A [Transformer Copilot]({PAPER_URL}) (Zou et al., NeurIPS 2025) adapter, PEFT adapter type `COPILOT` from "
        f"the `tcopilot_peft` package. Trained on the Pilot `{pilot_name or 'unnamed'}` "
        f"(`{config.pilot_model_type}`, vocabulary {config.pilot_vocab_size}), it is a small decoder of the Pilot's "
        f"family ({shape}) that learned from the Pilot's mistakes during fine-tuning and corrects the Pilot's "
        f"next-token logits at inference ({config.fusion_mode} fusion, λ = {config.fusion_lambda}). It needs that "
        "Pilot: its inputs are the Pilot's embeddings, hidden states and predictions."
    )


def _how_to_load(encoder_decoder: bool, pilot_name: str | None) -> str:
    auto_class = "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"
    return f"""## How to load

```python
import tcopilot_peft  # registers the COPILOT adapter type with PEFT
from peft import PeftModel
from transformers import {auto_class}, AutoTokenizer

pilot = {auto_class}.from_pretrained("{pilot_name or "PILOT"}")
model = PeftModel.from_pretrained(pilot, "path/to/this/adapter")
tokenizer = AutoTokenizer.from_pretrained("{pilot_name or "PILOT"}")
output = model.generate(**tokenizer("...", return_tensors="pt"), max_new_tokens=32)  # fused generation
```

Without `import tcopilot_peft`, PEFT does not know the adapter type and `PeftModel.from_pretrained` fails with
`KeyError: 'COPILOT'`. A `pipeline(model=...)` on the Pilot alone ignores the Copilot. If the Pilot was fully
fine-tuned with it, its weights are in `pilot/` beside the adapter: load the Pilot from there."""


def _config_table(config) -> str:
    rows = "\n".join(f"| `{name}` | `{getattr(config, name)}` |" for name in CARD_CONFIG_FIELDS)
    table = f"## Copilot configuration\n\n| setting | value |\n|---|---|\n{rows}"
    if config.pilot_lora_config:
        table += "\n\nThe Pilot was LoRA-tuned; its LoRA config is saved in the adapter and re-applied when it loads."
    return table


def _results(log_history: list[dict]) -> str:
    """The last training and evaluation numbers the trainer logged, or nothing when it logged none."""
    train = next((e for e in reversed(log_history) if "copilot_loss" in e and "loss" in e), None)
    held_out = next((e for e in reversed(log_history) if "eval_loss" in e), None)
    rows = []
    for split, entry, column in (("training", train, 1), ("held-out", held_out, 2)):
        if entry is not None:
            values = [_number(entry.get(keys[column])) for keys in RESULT_COLUMNS]
            rows.append(f"| {split} | {entry.get('step', '')} | " + " | ".join(values) + " |")
    if not rows:
        return ""
    header = "| split | step | " + " | ".join(name for name, _, _ in RESULT_COLUMNS) + " |"
    return (
        "## Training results\n\nAs the trainer logged them last (training: averaged over its last logging interval; "
        f"held-out: its last evaluation).\n\n{header}\n|---|---|---|---|---|\n" + "\n".join(rows)
    )


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _versions() -> str:
    lines = []
    for package in ("tcopilot_peft", "peft", "transformers", "trl", "torch"):
        try:
            lines.append(f"- {package} {version(package)}")
        except PackageNotFoundError:
            continue
    return "### Framework versions\n\n" + "\n".join(lines)
