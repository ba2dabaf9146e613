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


PANEL_WIDTH_INCHES = 15.0
ROW_HEIGHT_INCHES = 3.8
SUMMARY_SIZE_INCHES = (16.0, 4.5)
DPI = 100


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


def _bar_colours(step: StepTrace) -> list[str]:
    """Red for the token that follows along the traced answer (the paper's "ground truth token"), grey otherwise."""
    return ["tab:red" if c.token_id == step.target_id else "0.7" for c in step.candidates]


def _value_label(value: float, signed: bool) -> str:
    """One decimal, as in the paper's figure, or two below 1 so small scores do not all read "0.1"."""
    digits = 1 if abs(value) >= 1 else 2
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _bars(axis, step: StepTrace, values: list[float], signed: bool, title: str, ylabel: str):
    """Candidate bars with their values written on them, as in the paper's Figure 4."""
    bars = axis.bar(range(len(values)), values, color=_bar_colours(step))
    for bar, value in zip(bars, values):
        axis.annotate(
            _value_label(value, signed),
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom" if value >= 0 else "top",
            fontsize=8,
            fontweight="bold" if signed else "normal",
        )
    axis.axhline(0, color="black", linewidth=0.5)
    axis.set_xticks(range(len(values)), [f'"{c.token}"' for c in step.candidates], fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(ylabel, fontsize=9)
    return bars


def _score_panel(axis, step: StepTrace, fused: bool, title: str, ylabel: str) -> None:
    """A Pilot or fused panel: scores as bars with the chosen token outlined, probabilities as a dashed line."""
    values = [c.fused_score if fused else c.pilot_score for c in step.candidates]
    chosen = step.fused_choice_id if fused else step.pilot_choice_id
    bars = _bars(axis, step, values, signed=False, title=title, ylabel=ylabel)
    for bar, candidate in zip(bars, step.candidates):
        if candidate.token_id == chosen:
            bar.set_edgecolor("black")
            bar.set_linewidth(2.0)
    twin = axis.twinx()
    probabilities = [c.fused_probability if fused else c.pilot_probability for c in step.candidates]
    twin.plot(range(len(values)), probabilities, "--o", color="purple", markersize=3)
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("probability", color="purple", fontsize=9)


def draw_explanation(explanation: Explanation, steps: Sequence[int], path: str) -> tuple[int, int]:
    """Draw `steps` of an explanation as rows of three panels: Pilot, Copilot correction, Pilot + Copilot.

    Returns:
        The PNG's `(width, height)` in pixels: 1500 wide, 380 high per row.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    label = "logit" if explanation.fusion_mode == "logit" else "log-probability"
    size = (PANEL_WIDTH_INCHES, ROW_HEIGHT_INCHES * len(steps))
    figure, axes = plt.subplots(len(steps), 3, figsize=size, dpi=DPI, squeeze=False)
    for (pilot_axis, copilot_axis, fused_axis), index in zip(axes, steps):
        step = explanation.steps[index]
        _score_panel(pilot_axis, step, fused=False, title="Pilot", ylabel=label)
        corrections = [c.correction for c in step.candidates]
        title = f"Copilot correction (λ = {explanation.fusion_lambda:g})"
        _bars(copilot_axis, step, corrections, signed=True, title=title, ylabel=f"Δ {label}")
        _score_panel(fused_axis, step, fused=True, title="Pilot + Copilot", ylabel=label)
        verdict = f"changed {step.pilot_choice!r} → {step.fused_choice!r}" if step.changed else "unchanged"
        pilot_axis.annotate(
            f"step {index}, next token {step.target!r}: {verdict}; "
            f"correction {100 * step.relative_magnitude:.0f}% of the Pilot's logit range",
            (0, 1.18),
            xycoords="axes fraction",
            fontsize=10,
            color="tab:red" if step.changed else "black",
        )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return round(size[0] * DPI), round(size[1] * DPI)


# ---------------------------------------------------------------------- Figure 3: a dataset


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


def draw_summary(report: RectificationReport, path: str) -> tuple[int, int]:
    """Three panels: the distribution of relative correction sizes, their mean per benchmark, and the flip outcomes
    per benchmark (as a share of tokens).

    Returns:
        The PNG's `(width, height)` in pixels: 1600 × 450.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.tallies)
    stats = [report.tallies[name].summary() for name in names]
    figure, (spread, means, flips) = plt.subplots(1, 3, figsize=SUMMARY_SIZE_INCHES, dpi=DPI)
    for name in names:
        values = [100 * v for v in report.tallies[name].relative_magnitudes]
        spread.hist(values, bins=30, histtype="step", density=True, label=name)  # benchmarks differ in length
    spread.set_xlabel("correction size, % of the Pilot's logit range")
    spread.set_ylabel("density over tokens")
    spread.set_title("Size of the Copilot's corrections")
    if len(names) <= 8:
        spread.legend(fontsize=7)
    positions = range(len(names))
    means.bar(positions, [100 * s["relative_magnitude"]["mean"] for s in stats], color="tab:blue", label="mean")
    means.scatter(positions, [100 * s["relative_magnitude"]["p90"] for s in stats], color="black", label="p90", s=12)
    means.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    means.set_ylabel("% of the Pilot's logit range")
    means.set_title("Mean correction size")
    means.legend(fontsize=7)
    bottom = [0.0] * len(names)
    for key, colour in (("flips_helped", "tab:green"), ("flips_hurt", "tab:red"), ("flips_neutral", "0.6")):
        heights = [100 * s[key] / s["tokens"] for s in stats]
        flips.bar(positions, heights, bottom=bottom, color=colour, label=key.removeprefix("flips_"))
        bottom = [b + h for b, h in zip(bottom, heights)]
    flips.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    flips.set_ylabel("% of tokens")
    flips.set_title("Argmax flips against the reference")
    flips.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return round(SUMMARY_SIZE_INCHES[0] * DPI), round(SUMMARY_SIZE_INCHES[1] * DPI)


def write_json(data: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
