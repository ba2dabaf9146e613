"""Loading training data for the Copilot trainer: TRL's forms, or the LLM-Adapters instruction form.

LLM-Adapters rows (`instruction`, `input`, `output`, optional `answer`, as in Math10K / Commonsense170K and the
paper's test sets) become TRL prompt/completion rows with the Alpaca-style template those datasets were built for.
"""

from __future__ import annotations

import json
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
HUB_PROBE_TIMEOUT = 5  # seconds to wait for the Hub's answer about a dataset name


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The LLM-Adapters prompt for one instruction (and optional input)."""
    if input_text:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT.format(instruction=instruction)


def looks_like_path(name: str) -> bool:
    """A JSON file name, or a path from `.`, `/` or `~`; anything else that does not exist (`org/name`) is a Hub
    dataset name."""
    return name.endswith((".json", ".jsonl")) or name.startswith((".", "/", "~"))


def load_any_dataset(name_or_path: str, split: str = "train") -> Dataset:
    """A local JSON/JSONL file (a list of rows, or one row per line) or a `datasets` hub name.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an empty dataset, a file that does not parse (the line named), a name the Hub does not have or
            an unreachable Hub.
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
            problem = json_problem(name_or_path) if os.path.isfile(name_or_path) else None
            raise ValueError(f"cannot read dataset {name_or_path}: {problem or str(error).splitlines()[0]}") from error
    else:
        loaded = _load_hub_dataset(name_or_path, split)
    if isinstance(loaded, DatasetDict):
        loaded = loaded[split]
    if len(loaded) == 0:
        raise ValueError(f"dataset {name_or_path} is empty")
    return loaded


def _load_hub_dataset(name: str, split: str) -> Dataset:
    """`load_dataset(name)` for a name that is not a local path. The Hub is asked once first, with a short timeout
    and no retries, so an unreachable Hub is reported in a second (datasets retries five times, ~25 s); with
    `HF_HUB_OFFLINE=1` the cache alone is read."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        try:
            return load_dataset(name, split=split)
        except ConnectionError as error:
            raise ValueError(
                f"dataset {name!r} is not a local file, and it is not in the cache (HF_HUB_OFFLINE is set)"
            ) from error
    try:
        HfApi().dataset_info(name, timeout=HUB_PROBE_TIMEOUT)
    except GatedRepoError:
        pass  # access is load_dataset's (and the token's) to settle
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"dataset {name!r} is neither a local file nor a dataset on the Hub (that your token can read)"
        ) from error
    except HfHubHTTPError:
        pass  # the Hub answered: load_dataset reports what it says
    except Exception as error:  # a transport failure; its class is the HTTP client's that huggingface_hub uses
        raise ValueError(
            f"dataset {name!r} is not a local file, and the Hugging Face Hub is unreachable "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); set HF_HUB_OFFLINE=1 to "
            "read a cached copy"
        ) from error
    return load_dataset(name, split=split)


def json_problem(path: str) -> str | None:
    """What is wrong with a JSON (one document) or JSON Lines (one row per line) file, naming the line, or None
    when it parses. A file whose first line is a whole JSON value is read as JSON Lines."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None or not _parses(lines[first]):
            return f"line {whole.lineno}, column {whole.colno}: {whole.msg} (is the file cut short?)"
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                return f"line {number}, column {error.colno}: {error.msg} (JSON Lines: one whole row per line)"
    return None


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


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
