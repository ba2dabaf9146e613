"""One evaluation pass: the Pilot alone and Pilot + Copilot on the same prompts with the same decoding.

For each batch of prompts the fused model generates, then the same `generate()` call runs again inside
`model.disable_adapter()`, so the two accuracies differ only by the Copilot. Every finished batch is appended to a
JSONL file of per-example results (flushed and synced), and a rerun with the same settings skips what is already
there, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..generation import generate_arms
from .benchmarks import BenchmarkSpec, Example, LoadedBenchmark
from .extraction import answers_match, extract_answer
from .statistics import mcnemar_p_value


PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"
_FORMAT_VERSION = 1


class ResumeError(ValueError):
    """A partial results file that cannot be resumed (other settings, other data, or a damaged line)."""


# ---------------------------------------------------------------------- decoding and scoring


@dataclass(frozen=True)
class DecodingSettings:
    """The decoding both passes use. LLM-Adapters decodes with 4-beam search without sampling (its temperature,
    top-p and top-k settings are inert without `do_sample`), and 256 new tokens for arithmetic, 32 for commonsense.

    Args:
        num_beams (`int`, defaults to 4): beams of the beam search (1: greedy).
        max_new_tokens (`int`, *optional*): overrides every benchmark's own budget.
    """

    num_beams: int = 4
    max_new_tokens: int | None = None

    def generate_kwargs(self, spec: BenchmarkSpec, pad_token_id: int | None) -> dict[str, Any]:
        return {
            "num_beams": self.num_beams,
            "do_sample": False,
            "max_new_tokens": self.max_new_tokens or spec.max_new_tokens,
            "pad_token_id": pad_token_id,
        }


def generate_pilot_and_fused(
    model, tokenizer, prompts: Sequence[str], **generate_kwargs
) -> tuple[list[str], list[str]]:
    """Completions of `prompts` by the Pilot alone and by Pilot + Copilot, from one tokenisation and one decoding.

    Args:
        model (`PeftModel`): a Pilot carrying a Copilot adapter.
        tokenizer: its tokenizer; prompts are left-padded so every row's completion starts at the same column.
        prompts (`Sequence[str]`): the prompts of one batch.
        **generate_kwargs: passed unchanged to both `generate()` calls.

    Returns:
        `(pilot_completions, fused_completions)`, the new text only, special tokens removed.
    """
    completions, _ = generate_arms(model, tokenizer, prompts, ("fused", "pilot"), **generate_kwargs)
    return completions["pilot"], completions["fused"]


def _jsonable(prediction: float | str | None) -> float | str | None:
    # JSON has no inf/nan; an overflowing number (never correct) is kept as its text.
    if isinstance(prediction, float) and not math.isfinite(prediction):
        return str(prediction)
    return prediction


@dataclass(frozen=True)
class Completion:
    """One model's completion of one prompt, the answer extracted from it, and whether that answer is correct."""

    text: str
    prediction: float | str | None
    correct: bool


def score_completion(spec: BenchmarkSpec, text: str, gold: float | str) -> Completion:
    prediction = extract_answer(text, spec.answer_format, spec.labels)
    return Completion(text, _jsonable(prediction), answers_match(prediction, gold))


def prompt_fingerprint(example: Example) -> str:
    """A short hash of what the models saw and were scored against, so resumed rows are known to be the same rows."""
    return hashlib.sha256(json.dumps([example.prompt, example.gold]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExampleResult:
    """The Pilot's and the fused model's completions of one example."""

    benchmark: str
    index: int
    fingerprint: str
    gold: float | str
    pilot: Completion
    fused: Completion

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExampleResult:
        return cls(
            data["benchmark"],
            data["index"],
            data["fingerprint"],
            data["gold"],
            Completion(**data["pilot"]),
            Completion(**data["fused"]),
        )


# ---------------------------------------------------------------------- the resumable results file


class PartialResults:
    """The per-example results file: a settings header line, then one `ExampleResult` per line.

    Args:
        path (`str`): the JSONL file; created when missing.
        settings (`dict`): everything the results depend on (model, adapter, λ, decoding, ...). A file written with
            other settings is refused rather than mixed in.
        restart (`bool`, defaults to `False`): discard an existing file and start over.

    Raises:
        ResumeError: the file was written with other settings, or a line other than the last is damaged.
    """

    def __init__(self, path: str, settings: dict[str, Any], restart: bool = False) -> None:
        self.path = path
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file (tuples become lists)
        self.done: dict[tuple[str, int], ExampleResult] = {}
        if restart or not os.path.exists(path) or os.path.getsize(path) == 0:
            self._write_header()
        else:
            self._load()

    def _write_header(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"format": _FORMAT_VERSION, "settings": self.settings}) + "\n")

    def _load(self) -> None:
        with open(self.path, "rb") as handle:
            lines = handle.read().splitlines(keepends=True)
        records: list[dict[str, Any]] = []
        intact = 0  # bytes of complete lines
        for number, line in enumerate(lines):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no line end")
                records.append(json.loads(line))
            except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                # An interrupted write can only damage the last line: drop it, and its example is recomputed.
                if number == len(lines) - 1:
                    with open(self.path, "r+b") as handle:
                        handle.truncate(intact)
                    break
                raise ResumeError(
                    f"{self.path} line {number + 1} is damaged ({error}); rerun with --restart"
                ) from error
            intact += len(line)
        header = records[0] if records else {}
        if header.get("format") != _FORMAT_VERSION or header.get("settings") != self.settings:
            differing = sorted(
                key
                for key in set(self.settings) | set(header.get("settings", {}))
                if self.settings.get(key) != header.get("settings", {}).get(key)
            )
            raise ResumeError(
                f"{self.path} holds results of a run with other settings ({', '.join(differing) or 'format'}); "
                "rerun with --restart to discard them, or choose another --output"
            )
        for record in records[1:]:
            result = ExampleResult.from_dict(record)
            self.done[(result.benchmark, result.index)] = result

    def append(self, results: Iterable[ExampleResult]) -> None:
        results = list(results)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(result.to_json() + "\n" for result in results))
            handle.flush()
            os.fsync(handle.fileno())
        for result in results:
            self.done[(result.benchmark, result.index)] = result


# ---------------------------------------------------------------------- the pass


def evaluate_benchmark(
    model,
    tokenizer,
    loaded: LoadedBenchmark,
    decoding: DecodingSettings,
    store: PartialResults,
    batch_size: int = 8,
    progress: bool = True,
) -> list[ExampleResult]:
    """Evaluate one benchmark (Pilot alone and fused, same prompts and decoding), skipping stored examples.

    Returns:
        The results of every example of `loaded`, in row order.

    Raises:
        ResumeError: a stored result was computed on a different prompt or gold answer for the same row.
    """
    from tqdm.auto import tqdm

    spec = loaded.source.spec
    pending: list[Example] = []
    for example in loaded.examples:
        stored = store.done.get((spec.name, example.index))
        if stored is None:
            pending.append(example)
        elif stored.fingerprint != prompt_fingerprint(example):
            raise ResumeError(
                f"{store.path}: {spec.name} row {example.index} was scored on another prompt or answer; "
                "the data changed since, so rerun with --restart"
            )
    # Longest prompts first: batches of similar length pad less, and a memory error shows up at once.
    pending.sort(key=lambda example: len(example.prompt), reverse=True)
    kwargs = decoding.generate_kwargs(spec, tokenizer.pad_token_id)
    bar = tqdm(
        total=len(loaded.examples),
        initial=len(loaded.examples) - len(pending),
        desc=spec.name,
        disable=not progress,
        file=sys.stderr,
    )
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        pilot_texts, fused_texts = generate_pilot_and_fused(model, tokenizer, [e.prompt for e in batch], **kwargs)
        store.append(
            ExampleResult(
                spec.name,
                example.index,
                prompt_fingerprint(example),
                example.gold,
                score_completion(spec, pilot_text, example.gold),
                score_completion(spec, fused_text, example.gold),
            )
            for example, pilot_text, fused_text in zip(batch, pilot_texts, fused_texts)
        )
        bar.update(len(batch))
    bar.close()
    return [store.done[(spec.name, example.index)] for example in loaded.examples]


# ---------------------------------------------------------------------- scores


def relative_improvement(pilot: float, fused: float) -> float | None:
    """(fused − pilot) / pilot, the paper's "Impr."; `None` when the Pilot scores 0."""
    return (fused - pilot) / pilot if pilot > 0 else None


@dataclass(frozen=True)
class BenchmarkScore:
    """Accuracies (in [0, 1]) of one benchmark, with the paired counts behind them.

    `fused_only` counts examples the fused model gets right and the Pilot wrong; `pilot_only` the reverse.
    """

    benchmark: str
    group: str
    examples: int
    pilot_accuracy: float
    fused_accuracy: float
    relative_improvement: float | None
    fused_only: int
    pilot_only: int
    mcnemar_p: float
    skipped_rows: list[str] = field(default_factory=list)


def score_benchmark(
    spec: BenchmarkSpec, results: Sequence[ExampleResult], skipped: Sequence[str] = ()
) -> BenchmarkScore:
    count = len(results)
    pilot = sum(r.pilot.correct for r in results) / count
    fused = sum(r.fused.correct for r in results) / count
    fused_only = sum(r.fused.correct and not r.pilot.correct for r in results)
    pilot_only = sum(r.pilot.correct and not r.fused.correct for r in results)
    return BenchmarkScore(
        spec.name,
        spec.group,
        count,
        pilot,
        fused,
        relative_improvement(pilot, fused),
        fused_only,
        pilot_only,
        mcnemar_p_value(fused_only, pilot_only),
        list(skipped),
    )


def group_averages(scores: Sequence[BenchmarkScore]) -> dict[str, dict[str, float | None]]:
    """Unweighted mean accuracy per group and overall (the paper's "Avg" columns), with its relative improvement."""
    groups: dict[str, list[BenchmarkScore]] = {}
    for score in scores:
        groups.setdefault(score.group, []).append(score)
    if len(groups) > 1:
        groups["all"] = list(scores)
    averages = {}
    for name, members in groups.items():
        pilot = sum(s.pilot_accuracy for s in members) / len(members)
        fused = sum(s.fused_accuracy for s in members) / len(members)
        averages[name] = {
            "benchmarks": len(members),
            "pilot_accuracy": pilot,
            "fused_accuracy": fused,
            "relative_improvement": relative_improvement(pilot, fused),
        }
    return averages


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def format_table(scores: Sequence[BenchmarkScore], averages: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table: accuracy (%) of the Pilot and of Pilot + Copilot, the gain, and the paired test."""
    header = ("benchmark", "n", "Pilot", "+Copilot", "Δ pts", "rel. impr. %", "+/-", "McNemar p")
    rows = [
        (
            s.benchmark,
            str(s.examples),
            _percent(s.pilot_accuracy),
            _percent(s.fused_accuracy),
            _percent(s.fused_accuracy - s.pilot_accuracy, signed=True),
            _percent(s.relative_improvement, signed=True),
            f"{s.fused_only}/{s.pilot_only}",
            f"{s.mcnemar_p:.3f}",
        )
        for s in scores
    ]
    for name, avg in averages.items():
        rows.append(
            (
                f"avg {name}",
                str(avg["benchmarks"]),
                _percent(avg["pilot_accuracy"]),
                _percent(avg["fused_accuracy"]),
                _percent(avg["fused_accuracy"] - avg["pilot_accuracy"], signed=True),
                _percent(avg["relative_improvement"], signed=True),
                "",
                "",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    render = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([render(header), render(tuple("-" * w for w in widths)), *map(render, rows)])


@dataclass
class EvaluationReport:
    """What `run_evaluation` returns and writes to `results.json`."""

    settings: dict[str, Any]
    scores: list[BenchmarkScore]
    averages: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "benchmarks": {score.benchmark: asdict(score) for score in self.scores},
            "averages": self.averages,
        }

    def table(self) -> str:
        return format_table(self.scores, self.averages)


def run_evaluation(
    model,
    tokenizer,
    benchmarks: Sequence[LoadedBenchmark],
    output_dir: str,
    settings: dict[str, Any],
    decoding: DecodingSettings = DecodingSettings(),
    batch_size: int = 8,
    restart: bool = False,
    progress: bool = True,
) -> EvaluationReport:
    """Evaluate every benchmark, resuming from `output_dir/predictions.jsonl`, and write `output_dir/results.json`.

    Args:
        model (`PeftModel`): the Pilot with its Copilot adapter (its fusion settings as they should be evaluated).
        tokenizer: the Pilot's tokenizer (needs a pad token).
        benchmarks (`Sequence[LoadedBenchmark]`): validated examples per benchmark.
        output_dir (`str`): where `predictions.jsonl` (per-example results) and `results.json` go.
        settings (`dict`): what the results depend on besides the data; stored and checked on resume. The decoding
            is added to it here.
        decoding (`DecodingSettings`): used for both passes.
        batch_size (`int`, defaults to 8): prompts per `generate()` call.
        restart (`bool`, defaults to `False`): ignore and overwrite earlier partial results.
        progress (`bool`, defaults to `True`): show a progress bar per benchmark on stderr.

    Raises:
        ResumeError: earlier partial results in `output_dir` are from other settings or other data.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (for example to its EOS token)")
    settings = {**settings, "decoding": asdict(decoding)}
    store = PartialResults(os.path.join(output_dir, PREDICTIONS_FILE), settings, restart=restart)
    scores = []
    for loaded in benchmarks:
        results = evaluate_benchmark(model, tokenizer, loaded, decoding, store, batch_size, progress)
        scores.append(score_benchmark(loaded.source.spec, results, [str(p) for p in loaded.problems]))
    report = EvaluationReport(settings, scores, group_averages(scores))
    with open(os.path.join(output_dir, RESULTS_FILE), "w", encoding="utf-8") as handle:
        json.dump(report.to_dict(), handle, indent=2, ensure_ascii=False)
    return report
