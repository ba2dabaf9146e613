"""The paper's benchmarks in the LLM-Adapters format: which exist, where their rows come from, which rows are usable.

A benchmark's rows are `{"instruction", "input", "output", "answer"}` objects, read from a local JSON list, a JSONL
file, a folder holding `test.json` (the LLM-Adapters layout), or a `datasets` name. Every row is validated before
anything is scored; a malformed row is reported with its index and then skipped or refused, as the caller decides.
Prompts use the Alpaca-style template the LLM-Adapters training sets are formatted with (`tcopilot_peft.data`), so a
Pilot fine-tuned by `tcopilot train` is evaluated on the prompts it was trained on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..data import alpaca_prompt
from .extraction import OPTION_LETTERS, AnswerFormat, parse_number


BadRowPolicy = Literal["error", "skip"]
REQUIRED_FIELDS = ("instruction", "answer")


class DataError(ValueError):
    """A benchmark source that cannot be used as given (missing, empty, unreadable, unknown, or with bad rows)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """How one benchmark is prompted and scored.

    Args:
        name (`str`): canonical name, as in the LLM-Adapters folder (`"gsm8k"`, `"social_i_qa"`, ...).
        group (`str`): `"arithmetic"` or `"commonsense"`; the paper averages each group separately.
        answer_format (`str`): `"number"`, `"letter"` (AQuA) or `"label"`.
        labels (`tuple[str, ...]`): the answer labels of a `"label"` benchmark (also the valid gold answers).
        max_new_tokens (`int`): LLM-Adapters' generation budget: 256 for arithmetic, 32 for commonsense.
        aliases (`tuple[str, ...]`): other names it is known by (matched ignoring case, `-`, `_` and spaces).
    """

    name: str
    group: Literal["arithmetic", "commonsense"]
    answer_format: AnswerFormat
    labels: tuple[str, ...] = ()
    max_new_tokens: int = 32
    aliases: tuple[str, ...] = ()

    def parse_gold(self, value: object) -> float | str | None:
        """The gold answer in the form `answers_match` compares against, or `None` if `value` is not a valid one."""
        if self.answer_format == "number":
            return parse_number(value)
        if not isinstance(value, str):
            return None
        valid = OPTION_LETTERS if self.answer_format == "letter" else self.labels
        return value.strip() if value.strip() in valid else None


def _numeric(name: str, *aliases: str) -> BenchmarkSpec:
    return BenchmarkSpec(name, "arithmetic", "number", max_new_tokens=256, aliases=aliases)


def _labelled(name: str, labels: Iterable[str], *aliases: str) -> BenchmarkSpec:
    return BenchmarkSpec(name, "commonsense", "label", labels=tuple(labels), aliases=aliases)


# LLM-Adapters reads answer1..answer5 for every "answerN" benchmark, whatever its number of options.
_ANSWER_N = tuple(f"answer{i}" for i in range(1, 6))
BENCHMARKS: tuple[BenchmarkSpec, ...] = (
    _numeric("gsm8k"),
    _numeric("SVAMP"),
    _numeric("mawps"),
    _numeric("AddSub"),
    _numeric("MultiArith"),
    _numeric("SingleEq"),
    BenchmarkSpec("AQuA", "arithmetic", "letter", max_new_tokens=256, aliases=("aqua_rat",)),
    _labelled("boolq", ("true", "false")),
    _labelled("piqa", ("solution1", "solution2")),
    _labelled("social_i_qa", _ANSWER_N, "siqa"),
    _labelled("ARC-Challenge", _ANSWER_N, "arc_c"),
    _labelled("ARC-Easy", _ANSWER_N, "arc_e"),
    _labelled("openbookqa", _ANSWER_N, "obqa"),
    _labelled("winogrande", ("option1", "option2"), "winog"),
    _labelled("hellaswag", tuple(f"ending{i}" for i in range(1, 5)), "hellas"),
)


def _normalise(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


_BY_NAME = {_normalise(alias): spec for spec in BENCHMARKS for alias in (spec.name, *spec.aliases)}


def get_benchmark(name: str) -> BenchmarkSpec:
    """The benchmark called `name` (case, `-`, `_` and spaces ignored).

    Raises:
        DataError: an unknown name; the message lists the known ones.
    """
    spec = _BY_NAME.get(_normalise(name))
    if spec is None:
        known = ", ".join(spec.name for spec in BENCHMARKS)
        raise DataError(f"unknown benchmark {name!r}; known: {known} (name a source NAME=PATH to choose one)")
    return spec


# ---------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Example:
    """One validated row: its index in the source, the prompt fields, the gold answer and the reference output."""

    index: int
    instruction: str
    input: str
    gold: float | str
    reference: str

    @property
    def prompt(self) -> str:
        return alpaca_prompt(self.instruction, self.input)


@dataclass(frozen=True)
class RowProblem:
    """Why the row at `index` of a source cannot be scored; `unusable` when it lacks a required field altogether."""

    index: int
    reason: str
    unusable: bool = False

    def __str__(self) -> str:
        return f"row {self.index}: {self.reason}"


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def validate_row(row: Any, index: int, spec: BenchmarkSpec) -> Example | RowProblem:
    """Check one row and turn it into an `Example`, or say what is wrong with it.

    A row needs a non-empty string `instruction` and an `answer` that is valid for the benchmark (a finite number, an
    option letter A-E, or one of its labels). `input` and `output` may be absent or null, and are strings otherwise.
    """
    if not isinstance(row, dict):
        reason = f"expected an object with {', '.join(REQUIRED_FIELDS)}, got {_type_name(row)}"
        return RowProblem(index, reason, unusable=True)
    missing = [name for name in REQUIRED_FIELDS if row.get(name) is None]
    if missing:
        reason = f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        return RowProblem(index, reason, unusable=True)
    instruction = row["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        return RowProblem(index, f"'instruction' must be a non-empty string, got {_type_name(instruction)}")
    for optional in ("input", "output"):
        if row.get(optional) is not None and not isinstance(row[optional], str):
            return RowProblem(index, f"{optional!r} must be a string, got {_type_name(row[optional])}")
    gold = spec.parse_gold(row["answer"])
    if gold is None:
        expected = {
            "number": "a finite number",
            "letter": f"one of {'/'.join(OPTION_LETTERS)}",
            "label": f"one of {'/'.join(spec.labels)}",
        }[spec.answer_format]
        return RowProblem(index, f"'answer' {row['answer']!r} is not {expected} for {spec.name}")
    reference = row.get("output") or ""
    return Example(index, instruction, row.get("input") or "", gold, reference.strip() or str(row["answer"]))


# ---------------------------------------------------------------------- sources


@dataclass(frozen=True)
class BenchmarkSource:
    """Where one benchmark's rows come from: a local file, or a `datasets` name (with its split)."""

    spec: BenchmarkSpec
    location: str
    split: str = "test"

    @property
    def is_local(self) -> bool:
        return os.path.isfile(self.location)


@dataclass(frozen=True)
class LoadedBenchmark:
    """The usable examples of a source and the problems of the rows that were skipped."""

    source: BenchmarkSource
    examples: tuple[Example, ...]
    problems: tuple[RowProblem, ...]


def _looks_like_hub_name(location: str) -> bool:
    """`name` or `owner/name` (the forms of a datasets hub id) and not a JSON file name."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", location) is not None and not location.endswith((".json", ".jsonl"))


def resolve_sources(entries: Iterable[str], split: str = "test") -> list[BenchmarkSource]:
    """Turn command-line data arguments into benchmark sources.

    Each entry is `[NAME=]LOCATION`. LOCATION may be a JSON/JSONL file (the benchmark is NAME, else its folder's
    name, else the file's stem), a folder holding `test.json` (named after the folder), a folder of such folders
    (every benchmark in it, like `data/llm_adapters`), or a `datasets` name (the benchmark is NAME, else the last
    part of the name).

    Raises:
        DataError: a path that does not exist, a folder with no benchmark, or an unknown benchmark name.
    """
    sources: list[BenchmarkSource] = []
    for entry in entries:
        name, _, location = entry.rpartition("=") if "=" in entry else ("", "", entry)
        location = os.path.expanduser(location)
        if os.path.isfile(location):
            parent = Path(location).parent.name
            guess = name or (parent if _normalise(parent) in _BY_NAME else Path(location).stem)
            sources.append(BenchmarkSource(get_benchmark(guess), location, split))
        elif os.path.isdir(location):
            sources.extend(_folder_sources(location, name))
        elif not _looks_like_hub_name(location):
            raise DataError(f"data path not found: {location}")
        else:
            sources.append(
                BenchmarkSource(get_benchmark(name or location.rstrip("/").split("/")[-1]), location, split)
            )
    return sources


def _folder_sources(folder: str, name: str) -> list[BenchmarkSource]:
    own = os.path.join(folder, "test.json")
    if os.path.isfile(own):
        return [BenchmarkSource(get_benchmark(name or Path(folder).name), own)]
    if name:
        raise DataError(f"{folder} has no test.json for benchmark {name!r}")
    found = [
        os.path.join(folder, child, "test.json")
        for child in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, child, "test.json"))
    ]
    if not found:
        raise DataError(f"{folder} holds no benchmark: expected test.json in it or in its sub-folders")
    sources = [BenchmarkSource(get_benchmark(Path(path).parent.name), path) for path in found]
    return sorted(sources, key=lambda source: BENCHMARKS.index(source.spec))  # the paper's order: arithmetic first


def _read_local_rows(path: str) -> Iterator[Any]:
    """Rows of a local JSON list or JSONL file, with their Python types kept (a JSONL line that is not JSON is
    yielded as a `RowProblem`). Arrow-based loading is avoided here because it would coerce or reject the very type
    errors that validation must report row by row."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if not text.strip():
        return
    if path.endswith(".jsonl"):
        for index, line in enumerate(line for line in text.splitlines() if line.strip()):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                yield RowProblem(index, f"not valid JSON ({error.msg})")
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"cannot read {path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    if not isinstance(rows, list):
        raise DataError(f"cannot read {path}: expected a JSON list of rows, got {_type_name(rows)}")
    yield from rows


def _read_hub_rows(name: str, split: str) -> Iterator[Any]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types (connection, missing split, missing config)
        raise DataError(
            f"{name!r} is no local file or folder, and loading it as a datasets name (split {split!r}) failed: "
            f"{str(error).splitlines()[0]}"
        ) from error
    missing = [field for field in REQUIRED_FIELDS if field not in dataset.column_names]
    if missing:
        raise DataError(
            f"dataset {name!r} has no usable fields: missing {', '.join(missing)}; "
            f"found {sorted(dataset.column_names)}"
        )
    yield from dataset


def load_benchmark(source: BenchmarkSource, on_bad_rows: BadRowPolicy = "error", limit: int | None = None):
    """Read and validate a benchmark's rows.

    Args:
        source (`BenchmarkSource`): where the rows are.
        on_bad_rows (`str`, defaults to `"error"`): `"error"` refuses the whole benchmark when any row is malformed;
            `"skip"` leaves malformed rows out (they are still listed in `problems`).
        limit (`int`, *optional*): read only the first `limit` rows of the source.

    Returns:
        `LoadedBenchmark`.

    Raises:
        DataError: an empty source, a source whose rows have none of the required fields, or (with `"error"`) any
            malformed row; the message names the rows by index.
    """
    rows = _read_local_rows(source.location) if source.is_local else _read_hub_rows(source.location, source.split)
    examples: list[Example] = []
    problems: list[RowProblem] = []
    count = 0
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        count += 1
        checked = row if isinstance(row, RowProblem) else validate_row(row, index, source.spec)
        (problems if isinstance(checked, RowProblem) else examples).append(checked)
    if count == 0:
        raise DataError(f"{source.spec.name}: dataset {source.location} is empty")
    if not examples and all(problem.unusable for problem in problems):
        raise DataError(
            f"{source.spec.name}: {source.location} has no usable fields: no row has both "
            f"{' and '.join(map(repr, REQUIRED_FIELDS))} (the LLM-Adapters format: instruction, input, output, answer)"
        )
    if problems and (on_bad_rows == "error" or not examples):
        shown = "; ".join(map(str, problems[:5])) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        hint = " (pass --bad-rows skip to leave them out)" if examples else ", so no row is left to score"
        raise DataError(
            f"{source.spec.name}: {len(problems)} malformed row{'s' if len(problems) > 1 else ''} in "
            f"{source.location}: {shown}{hint}"
        )
    return LoadedBenchmark(source, tuple(examples), tuple(problems))
