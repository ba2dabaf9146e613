"""Loading training data for the Copilot trainer: TRL's forms, or the LLM-Adapters instruction form.

LLM-Adapters rows (`instruction`, `input`, `output`, optional `answer`, as in Math10K / Commonsense170K and the
paper's test sets) become TRL prompt/completion rows with the Alpaca-style template those datasets were built for.
"""

from __future__ import annotations

import os
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset


ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
TRL_COLUMN_SETS = (("prompt", "completion"), ("messages",), ("text",), ("prompt",))
INSTRUCTION_COLUMNS = ("instruction", "output")


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The LLM-Adapters prompt for one instruction (and optional input)."""
    if input_text:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT.format(instruction=instruction)


def looks_like_path(name: str) -> bool:
    return name.endswith((".json", ".jsonl")) or os.sep in name or name.startswith(".")


def load_any_dataset(name_or_path: str, split: str = "train") -> Dataset:
    """A local JSON/JSONL file (a list of rows, or one row per line) or a `datasets` hub name.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an empty dataset.
    """
    if looks_like_path(name_or_path) or os.path.exists(name_or_path):
        if not os.path.exists(name_or_path):
            raise FileNotFoundError(f"dataset file not found: {name_or_path}")
        if os.path.isfile(name_or_path) and _is_blank(name_or_path):
            raise ValueError(f"dataset {name_or_path} is empty")
        try:
            if os.path.isdir(name_or_path):
                loaded = load_dataset(name_or_path, split=split)
            else:
                loaded = load_dataset("json", data_files=name_or_path, split="train")
        except Exception as error:  # datasets raises many types for unreadable files; name the file instead
            raise ValueError(f"cannot read dataset {name_or_path}: {str(error).splitlines()[0]}") from error
    else:
        loaded = load_dataset(name_or_path, split=split)
    if isinstance(loaded, DatasetDict):
        loaded = loaded[split]
    if len(loaded) == 0:
        raise ValueError(f"dataset {name_or_path} is empty")
    return loaded


def _is_blank(path: str) -> bool:
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096).strip()
    return head in ("", "[]")


def to_trl_format(dataset: Dataset) -> Dataset:
    """Keep TRL's forms as they are; turn LLM-Adapters instruction rows into prompt/completion rows.

    Raises:
        ValueError: when no usable columns are present (the columns found are named).
    """
    columns = dataset.column_names
    if any(all(c in columns for c in needed) for needed in TRL_COLUMN_SETS):
        return dataset
    if all(c in columns for c in INSTRUCTION_COLUMNS):

        def convert(row: dict[str, Any]) -> dict[str, str]:
            return {
                "prompt": alpaca_prompt(row["instruction"], row.get("input") or ""),
                "completion": str(row["output"]).strip(),
            }

        return dataset.map(convert, remove_columns=columns)
    raise ValueError(
        f"dataset has no usable columns: found {sorted(columns)}; expected 'prompt' + 'completion', 'messages', "
        "'text', or LLM-Adapters 'instruction' + 'output'"
    )
