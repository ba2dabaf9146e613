"""Pictures of the Copilot's corrections, after the paper's Figures 3 and 4.

* `explain_prompt` (Figure 4): along one answer (the fused model's own greedy/beam generation, or a given reference),
  at chosen steps, the Pilot's top candidate tokens, the Copilot's correction to each, and the fused result, marking
  the steps where the chosen token changed.
* `summarise_rectification` (Figure 3): over a dataset's reference answers, how large the corrections are relative to
  the Pilot's logit range, how often they flip the argmax, and whether the flips help or hurt against the reference.

What is drawn is additive, panel by panel: Pilot score + correction = fused score. In `"logit"` fusion the scores are
logits and the correction is λ·f. In `"prob"` fusion (p̃ = p̂ + λ·f, renormalised) the scores are log-probabilities
log p̂ and log p̃, and the correction is their difference. A correction's size is taken over the Pilot's top-k
candidates only: in `"prob"` mode a token the Pilot gives ~0 probability can move by tens of log units while changing
nothing. The Pilot's logit range (max − min over the vocabulary) is the same in both spaces, so relative sizes compare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .benchmarks import LoadedBenchmark
from .scoring import ContinuationLogits, continuation_logits


# ---------------------------------------------------------------------- the numbers


def rectification_scores(
    pilot_logits: torch.Tensor, fused_logits: torch.Tensor, fusion_mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(pilot_scores, fused_scores, correction)` with `pilot_scores + correction == fused_scores` (module docs)."""
    pilot = pilot_logits.float()
    if fusion_mode == "prob":
        pilot = torch.log_softmax(pilot, dim=-1)
    fused = fused_logits.float()
    return pilot, fused, fused - pilot


@dataclass(frozen=True)
class StepStatistics:
    """Per-step tensors (shape `(steps,)`) describing the corrections along one continuation."""

    magnitude: torch.Tensor  # largest |correction| among the Pilot's top-k tokens
    pilot_range: torch.Tensor  # max − min of the Pilot's logits over the vocabulary
    pilot_choice: torch.Tensor
    fused_choice: torch.Tensor
    targets: torch.Tensor

    @property
    def relative_magnitude(self) -> torch.Tensor:
        return self.magnitude / self.pilot_range.clamp_min(1e-6)

    @property
    def flipped(self) -> torch.Tensor:
        return self.pilot_choice != self.fused_choice

    @property
    def helped(self) -> torch.Tensor:
        """Flips that turned a wrong Pilot choice into the target."""
        return self.flipped & (self.fused_choice == self.targets)

    @property
    def hurt(self) -> torch.Tensor:
        """Flips that turned the Pilot's correct choice into something else."""
        return self.flipped & (self.pilot_choice == self.targets)


def step_statistics(logits: ContinuationLogits, fusion_mode: str, top_k: int = 10) -> StepStatistics:
    pilot, fused, correction = rectification_scores(logits.pilot, logits.fused, fusion_mode)
    candidates = pilot.topk(min(top_k, pilot.shape[-1]), dim=-1).indices
    return StepStatistics(
        magnitude=correction.gather(-1, candidates).abs().amax(-1),
        pilot_range=pilot.amax(-1) - pilot.amin(-1),
        pilot_choice=pilot.argmax(-1),
        fused_choice=fused.argmax(-1),
        targets=logits.targets,
    )


@dataclass(frozen=True)
class Candidate:
    """One candidate token at one step, in each panel's terms."""

    token_id: int
    token: str
    pilot_score: float
    pilot_probability: float
    correction: float
    fused_score: float
    fused_probability: float


@dataclass(frozen=True)
class StepTrace:
    """One decoding step of `explain_prompt`: the candidates drawn and which token each model would choose."""

    step: int
    target_id: int  # the token that actually follows along the traced answer
    pilot_choice_id: int
    fused_choice_id: int
    target: str
    pilot_choice: str
    fused_choice: str
    changed: bool
    magnitude: float
    relative_magnitude: float
    candidates: list[Candidate]


def display_token(text: str) -> str:
    """A token as it can be read on an axis: whitespace made visible, empty text named."""
    if text == "":
        return "<empty>"
    return text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t")


def trace_steps(logits: ContinuationLogits, fusion_mode: str, decode, top_k: int = 5) -> list[StepTrace]:
    """Every step of one continuation, with its Pilot top-`top_k` candidates (plus the fused choice and the target).

    Args:
        logits (`ContinuationLogits`): from `continuation_logits`.
        fusion_mode (`str`): the adapter's fusion mode.
        decode (`Callable[[int], str]`): token id to text.
        top_k (`int`, defaults to 5): Pilot candidates shown per step.
    """
    pilot, fused, correction = rectification_scores(logits.pilot, logits.fused, fusion_mode)
    stats = step_statistics(logits, fusion_mode, top_k)
    pilot_probs, fused_probs = torch.softmax(pilot, -1), torch.softmax(fused, -1)
    traces = []
    for step in range(pilot.shape[0]):
        ids = pilot[step].topk(min(top_k, pilot.shape[-1])).indices.tolist()
        # The fused choice and the traced token are always shown, even when outside the Pilot's top-k.
        ids += [int(stats.fused_choice[step]), int(logits.targets[step])]
        candidates = [
            Candidate(
                token_id,
                display_token(decode(token_id)),
                float(pilot[step, token_id]),
                float(pilot_probs[step, token_id]),
                float(correction[step, token_id]),
                float(fused[step, token_id]),
                float(fused_probs[step, token_id]),
            )
            for token_id in dict.fromkeys(ids)
        ]
        target, pilot_choice, fused_choice = (
            int(logits.targets[step]),
            int(stats.pilot_choice[step]),
            int(stats.fused_choice[step]),
        )
        traces.append(
            StepTrace(
                step=step,
                target_id=target,
                pilot_choice_id=pilot_choice,
                fused_choice_id=fused_choice,
                target=display_token(decode(target)),
                pilot_choice=display_token(decode(pilot_choice)),
                fused_choice=display_token(decode(fused_choice)),
                changed=bool(stats.flipped[step]),
                magnitude=float(stats.magnitude[step]),
                relative_magnitude=float(stats.relative_magnitude[step]),
                candidates=candidates,
            )
        )
    return traces


def choose_steps(
    traces: Sequence[StepTrace], requested: Sequence[int] | None = None, max_panels: int = 4
) -> list[int]:
    """Steps to draw: those requested; else those where the chosen token changed; else the largest corrections.

    Raises:
        ValueError: a requested step outside the traced answer.
    """
    if requested:
        bad = [step for step in requested if not 0 <= step < len(traces)]
        if bad:
            raise ValueError(f"steps {bad} are outside the traced answer's {len(traces)} steps (0-based)")
        return list(dict.fromkeys(requested))
    changed = [trace.step for trace in traces if trace.changed]
    if changed:
        return changed[:max_panels]
    largest = sorted(traces, key=lambda trace: trace.relative_magnitude, reverse=True)[:max_panels]
    return sorted(trace.step for trace in largest)


# ---------------------------------------------------------------------- Figure 4: one prompt


@dataclass
class Explanation:
    """`explain_prompt`'s result: the traced answer and one `StepTrace` per answer token."""

    prompt: str
    answer: str
    answer_source: str  # "generated" (the fused model's own answer) or "reference"
    fusion_mode: str
    fusion_lambda: float
    steps: list[StepTrace]

    @property
    def changed_steps(self) -> list[int]:
        return [trace.step for trace in self.steps if trace.changed]

    def to_dict(self, shown_steps: Sequence[int] = ()) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "answer_source": self.answer_source,
            "fusion_mode": self.fusion_mode,
            "fusion_lambda": self.fusion_lambda,
            "changed_steps": self.changed_steps,
            "shown_steps": list(shown_steps),
            "steps": [asdict(trace) for trace in self.steps],
        }


def explain_prompt(
    model,
    tokenizer,
    prompt: str,
    reference: str | None = None,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    top_k: int = 5,
) -> Explanation:
    """Trace the Copilot's corrections along one answer to `prompt`.

    Args:
        model (`PeftModel`): a Pilot with its Copilot adapter enabled.
        tokenizer: the Pilot's tokenizer.
        prompt (`str`): the prompt, as the model sees it.
        reference (`str`, *optional*): trace this answer (teacher-forced, e.g. the gold answer). Without it the traced
            answer is the fused model's own generation, decoded with `num_beams` beams.
        max_new_tokens (`int`, defaults to 32): length of the generated answer.
        num_beams (`int`, defaults to 1): beams for the generated answer.
        top_k (`int`, defaults to 5): Pilot candidates shown per step.

    Raises:
        ValueError: the answer to trace is empty.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if reference is not None:
        answer_ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
    else:
        with torch.inference_mode():
            output = model.generate(
                input_ids=torch.tensor([prompt_ids], device=model.device),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                pad_token_id=pad_token_id,
            )
        # A decoder-only Pilot returns prompt + answer; an encoder-decoder one, its decoder start + answer.
        answer_ids = output[0, 1 if model.config.is_encoder_decoder else len(prompt_ids) :].tolist()
        while answer_ids and answer_ids[-1] == pad_token_id:  # a beam that finished early is padded
            answer_ids.pop()
    if not prompt_ids or not answer_ids:
        raise ValueError("there is nothing to trace: the prompt or the answer (reference or generated) is empty")
    logits = continuation_logits(model, [(prompt_ids, answer_ids)], pad_token_id, len(prompt_ids) + len(answer_ids))[0]
    config = model.peft_config[model.active_adapter]
    return Explanation(
        prompt=prompt,
        answer=tokenizer.decode(answer_ids),
        answer_source="reference" if reference is not None else "generated",
        fusion_mode=config.fusion_mode,
        fusion_lambda=config.fusion_lambda,
        steps=trace_steps(logits, config.fusion_mode, lambda token_id: tokenizer.decode([token_id]), top_k),
    )


@dataclass
class RectificationTally:
    """Running totals of `step_statistics` over many continuations."""

    examples: int = 0
    tokens: int = 0
    flips: int = 0
    helped: int = 0
    hurt: int = 0
    pilot_correct: int = 0
    fused_correct: int = 0
    relative_magnitudes: list[float] = field(default_factory=list)
    magnitudes: list[float] = field(default_factory=list)
    pilot_ranges: list[float] = field(default_factory=list)

    def add(self, stats: StepStatistics) -> None:
        self.examples += 1
        self.tokens += int(stats.targets.numel())
        self.flips += int(stats.flipped.sum())
        self.helped += int(stats.helped.sum())
        self.hurt += int(stats.hurt.sum())
        self.pilot_correct += int((stats.pilot_choice == stats.targets).sum())
        self.fused_correct += int((stats.fused_choice == stats.targets).sum())
        self.relative_magnitudes += stats.relative_magnitude.tolist()
        self.magnitudes += stats.magnitude.tolist()
        self.pilot_ranges += stats.pilot_range.tolist()

    def merge(self, tallies: Iterable[RectificationTally]) -> RectificationTally:
        for other in tallies:
            for name in ("examples", "tokens", "flips", "helped", "hurt", "pilot_correct", "fused_correct"):
                setattr(self, name, getattr(self, name) + getattr(other, name))
            self.relative_magnitudes += other.relative_magnitudes
            self.magnitudes += other.magnitudes
            self.pilot_ranges += other.pilot_ranges
        return self

    def summary(self) -> dict[str, Any]:
        def spread(values: list[float]) -> dict[str, float]:
            data = torch.tensor(values, dtype=torch.float64)
            return {
                "mean": float(data.mean()),
                "median": float(data.median()),
                "p90": float(torch.quantile(data, 0.9)),
            }

        rate = lambda count: count / self.tokens  # noqa: E731
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "relative_magnitude": spread(self.relative_magnitudes),
            "magnitude": spread(self.magnitudes),
            "pilot_logit_range": spread(self.pilot_ranges),
            "flips": self.flips,
            "flip_rate": rate(self.flips),
            "flips_helped": self.helped,
            "flips_hurt": self.hurt,
            "flips_neutral": self.flips - self.helped - self.hurt,
            "pilot_token_accuracy": rate(self.pilot_correct),
            "fused_token_accuracy": rate(self.fused_correct),
        }


@dataclass
class RectificationReport:
    """`summarise_rectification`'s result: the fusion settings and one tally per benchmark."""

    fusion_mode: str
    fusion_lambda: float
    top_k: int
    tallies: dict[str, RectificationTally]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fusion_mode": self.fusion_mode,
            "fusion_lambda": self.fusion_lambda,
            "top_k": self.top_k,
            "benchmarks": {name: tally.summary() for name, tally in self.tallies.items()},
            "overall": RectificationTally().merge(self.tallies.values()).summary(),
        }


def summarise_rectification(
    model, tokenizer, benchmarks: Sequence[LoadedBenchmark], batch_size: int = 4, top_k: int = 10, progress=True
) -> RectificationReport:
    """Corrections along every example's reference answer (the row's `output`, else its `answer`), per benchmark.

    The reference is teacher-forced and treated as generated (`copilot_prompt_length`), so each step shows what the
    Copilot would change if the model had produced the reference so far. A flip *helps* when it turns a Pilot choice
    other than the reference token into the reference token, and *hurts* in the opposite case.

    Raises:
        ValueError: no example has a non-empty reference answer.
    """
    from tqdm.auto import tqdm

    config = model.peft_config[model.active_adapter]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tallies: dict[str, RectificationTally] = {}
    for loaded in benchmarks:
        pairs = [
            (tokenizer(e.prompt)["input_ids"], tokenizer(e.reference, add_special_tokens=False)["input_ids"])
            for e in loaded.examples
        ]
        pairs = [pair for pair in pairs if pair[1]]
        if not pairs:
            continue
        tally = tallies.setdefault(loaded.source.spec.name, RectificationTally())
        bar = tqdm(total=len(pairs), desc=loaded.source.spec.name, disable=not progress)
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            longest = max(len(prompt) + len(answer) for prompt, answer in batch)
            for logits in continuation_logits(model, batch, pad_token_id, longest):
                tally.add(step_statistics(logits, config.fusion_mode, top_k))
            bar.update(len(batch))
        bar.close()
    if not tallies:
        raise ValueError("no example has a non-empty reference answer to trace")
    return RectificationReport(config.fusion_mode, config.fusion_lambda, top_k, tallies)


def write_json(data: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
