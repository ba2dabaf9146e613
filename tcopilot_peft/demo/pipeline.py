"""The demo pipeline: fine-tune a pretrained Pilot with LoRA + Copilot on a finite task, then measure honestly.

Steps: load the Pilot (the package's pretrained one, or `--model`); split the task into train / validation / test;
fine-tune with `CopilotSFTTrainer` (Algorithm 1); choose λ on the validation split; on the test split generate with
and without the Copilot from the same model and prompts (paired), and report the gain with a bootstrap interval,
the Copilot's held-out skill, the training-time overhead against a plain `SFTTrainer` step and the fused vs Pilot
tokens/s. Writes `results.json` and `demo.png`.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from ..fusion import PilotPrediction, error_distance, fused_cross_entropy, shift_targets
from ..generation import generate_arms
from ..trainer import CopilotSFTConfig, CopilotSFTTrainer
from ..tuner import CopilotConfig
from .tasks import extract_answer, task_splits


LAMBDA_GRID = (0.3, 0.5, 1.0, 2.0)


@dataclass
class DemoSettings:
    model: str
    task: str = "sort_then_reverse"
    dataset: str | None = None
    train_size: int = 4000
    validation_size: int = 150
    test_size: int = 400
    epochs: float = 3.0  # the paper's; with fewer the bundled Pilot does not learn to copy the digits it must sort
    batch_size: int = 32
    learning_rate: float = 2e-3
    copilot_learning_rate: float = 1e-3
    lora_r: int = 16
    copilot_layers: int | None = None
    copilot_loss: str = "fused_ce"
    fusion_mode: str | None = None  # the Copilot objective's own (CopilotConfig)
    max_new_tokens: int | None = None  # `generation_budget` of the training split
    overhead_steps: int = 12
    seed: int = 0
    output_dir: str = "tcopilot-demo"
    lambda_grid: tuple[float, ...] = field(default=LAMBDA_GRID)


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ---------------------------------------------------------------------- data and model


def load_splits(settings: DemoSettings) -> dict[str, Dataset]:
    if settings.dataset is None:
        return task_splits(
            settings.task, settings.train_size, settings.validation_size, settings.test_size, seed=settings.seed
        )
    from ..data import load_any_dataset, to_trl_format

    rows = to_trl_format(load_any_dataset(settings.dataset)).shuffle(seed=settings.seed)
    if "prompt" not in rows.column_names or "completion" not in rows.column_names:
        raise ValueError("the demo needs prompt/completion (or LLM-Adapters instruction/output) rows")
    held_out = min(settings.validation_size + settings.test_size, len(rows) // 3)
    validation = held_out // 3
    return {
        "validation": rows.select(range(validation)),
        "test": rows.select(range(validation, held_out)),
        "train": rows.select(range(held_out, min(len(rows), held_out + settings.train_size))),
    }


def load_pilot_with_lora(settings: DemoSettings):
    pilot = AutoModelForCausalLM.from_pretrained(settings.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, target_modules="all-linear")
    return get_peft_model(pilot, lora), tokenizer


def generation_budget(tokenizer, rows) -> int:
    """New tokens enough for the longest completion in `rows`, its end-of-sequence token and a margin. A fixed budget
    once cut off most `count_then_max` answers before they were written, which scored every model near zero."""
    return max(len(tokenizer(row["completion"]).input_ids) for row in rows) + 8


def answer_of(row: dict) -> str:
    return row.get("answer") or extract_answer(row["completion"]) or row["completion"].strip()


# ---------------------------------------------------------------------- measurements


def generate_both(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64, arms=("pilot", "fused")
):
    """Greedy completions without the Copilot and with it (the same model, prompts and decoding, interleaved batch
    by batch so both arms see the same machine), and each arm's generated tokens per second."""
    completions: dict[str, list[str]] = {arm: [] for arm in arms}
    tokens, seconds = dict.fromkeys(arms, 0), dict.fromkeys(arms, 0.0)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for start in range(0, len(prompts), batch_size):
        batch, costs = generate_arms(model, tokenizer, prompts[start : start + batch_size], arms, **settings)
        for arm in arms:
            completions[arm] += batch[arm]
            tokens[arm] += costs[arm][0]
            seconds[arm] += costs[arm][1]
    return completions, {arm: tokens[arm] / seconds[arm] for arm in arms}


def correct(completions: list[str], rows: list[dict]) -> list[bool]:
    return [extract_answer(c) == answer_of(r) for c, r in zip(completions, rows)]


def paired_gain(pilot: list[bool], fused: list[bool], seed: int = 0, resamples: int = 2000) -> dict:
    """Mean accuracy gain (points) with a bootstrap 95% interval over items, and the discordant pair counts."""
    differences = [int(f) - int(p) for p, f in zip(pilot, fused)]
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {
        "gain_points": 100 * sum(differences) / n,
        "ci95_points": [100 * means[int(0.025 * resamples)], 100 * means[int(0.975 * resamples) - 1]],
        "fixed_by_copilot": sum(d > 0 for d in differences),
        "broken_by_copilot": sum(d < 0 for d in differences),
    }


def _teacher_forced(model, tokenizer, rows: list[dict], batch_size: int):
    """Fused forward passes over prompt + completion; yields (outputs, next-token targets, completion mask)."""
    tokenizer.padding_side = "right"
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        for i, row in enumerate(chunk):
            labels[i, : len(tokenizer(row["prompt"]).input_ids)] = -100
        out = model(**batch, labels=labels)
        targets = shift_targets(labels)
        yield out, targets, targets != -100


@torch.no_grad()
def copilot_skill(model, tokenizer, rows: list[dict], batch_size: int = 32) -> float:
    """1 − RMSE(f, ℓ) / RMSE(0, ℓ) on completion tokens, teacher-forced: above 0 the Copilot predicts the Pilot's
    errors better than predicting no correction; near 0 predicts no gain; implausibly high suggests a leak."""
    copilot_sq, zero_sq, count = 0.0, 0.0, 0
    for out, targets, valid in _teacher_forced(model, tokenizer, rows, batch_size):
        prediction = PilotPrediction.from_logits(out.pilot_logits[valid])
        correction = out.copilot_logits[valid]
        with_copilot = error_distance(correction, targets[valid], prediction)
        without = error_distance(torch.zeros_like(correction), targets[valid], prediction)
        copilot_sq += with_copilot.square().sum().item()
        zero_sq += without.square().sum().item()
        count += int(valid.sum())
    return 1.0 - math.sqrt(copilot_sq / count) / math.sqrt(zero_sq / count)


@torch.no_grad()
def copilot_ce_skill(model, tokenizer, rows: list[dict], batch_size: int = 32) -> dict[str, float]:
    """The Copilot's skill in the metric of the default loss: the cross-entropy of softmax(log p̂ + f) (logit fusion
    at λ = 1) against the Pilot's own, teacher-forced on completion tokens. `skill` = 1 − fused / Pilot: above 0 the
    Copilot's correction makes the gold tokens more likely on these rows."""
    fused_sum, pilot_sum, count = 0.0, 0.0, 0
    for out, targets, valid in _teacher_forced(model, tokenizer, rows, batch_size):
        prediction = PilotPrediction.from_logits(out.pilot_logits[valid])
        correction = out.copilot_logits[valid]
        fused_sum += fused_cross_entropy(correction, targets[valid], prediction).sum().item()
        pilot_sum += fused_cross_entropy(torch.zeros_like(correction), targets[valid], prediction).sum().item()
        count += int(valid.sum())
    return {"pilot_ce": pilot_sum / count, "fused_ce": fused_sum / count, "skill": 1.0 - fused_sum / pilot_sum}


@torch.no_grad()
def pilot_calibration(model, tokenizer, rows: list[dict], batch_size: int = 32, bins: int = 10) -> dict[str, float]:
    """The Pilot's teacher-forced token accuracy and expected calibration error (top-1 confidence vs accuracy, in
    equal-width bins) on completion tokens. A calibrated Pilot's errors ℓ have conditional mean ≈ 0 given what it
    saw, which is all a Copilot trained by regression on ℓ can learn to predict."""
    confidences, hits = [], []
    for out, targets, valid in _teacher_forced(model, tokenizer, rows, batch_size):
        probs = torch.softmax(out.pilot_logits.float(), -1)[valid]
        confidence, prediction = probs.max(-1)
        confidences.append(confidence)
        hits.append((prediction == targets[valid]).float())
    confidence, hit = torch.cat(confidences), torch.cat(hits)
    which = (confidence * bins).long().clamp_max(bins - 1)
    gap = sum(
        (confidence[which == b].sum() - hit[which == b].sum()).abs().item() for b in range(bins) if (which == b).any()
    )
    return {"token_accuracy": hit.mean().item(), "expected_calibration_error": gap / len(hit)}


def plain_sft(settings: DemoSettings, train: Dataset, output_dir: Path, max_steps: int, model=None, **overrides):
    """Plain TRL SFT (no Copilot) on the same data and batch: of a fresh LoRA Pilot, or of `model` (a control built
    by the benchmarks) with the Pilot's tokenizer; returns the model, its tokenizer and the per-step timer."""
    from trl import SFTConfig, SFTTrainer

    if model is None:
        model, tokenizer = load_pilot_with_lora(settings)
    else:
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    timer = StepTimer()
    options = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=False,
        seed=settings.seed,
    )
    options.update(overrides)
    trainer = SFTTrainer(
        model=model, args=SFTConfig(**options), train_dataset=train, processing_class=tokenizer, callbacks=[timer]
    )
    trainer.train()
    return model.eval(), tokenizer, timer


def plain_sft_step_time(settings: DemoSettings, train: Dataset, output_dir: Path) -> float:
    """Median step time of plain TRL SFT on the same Pilot, data and batch, for the overhead ratio."""
    _, _, timer = plain_sft(settings, train, output_dir / "plain-sft", settings.overhead_steps)
    return statistics.median(timer.times[2:])


# ---------------------------------------------------------------------- building blocks (also used by benchmarks/)


def fine_tune(model, tokenizer, train: Dataset, settings: DemoSettings, output_dir: Path, **overrides):
    """Algorithm 1 with `CopilotSFTTrainer`; returns the trainer and the per-step timer."""
    timer = StepTimer()
    options = dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        copilot_learning_rate=settings.copilot_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=settings.seed,
    )
    options.update(overrides)
    trainer = CopilotSFTTrainer(
        model=model,
        args=CopilotSFTConfig(**options),
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return trainer, timer


def accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int, arm: str) -> float:
    completions, _ = generate_both(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, arms=(arm,))
    return sum(correct(completions[arm], rows)) / len(rows)


def choose_lambda(model, tokenizer, validation: list[dict], settings: DemoSettings):
    """λ with the best fused accuracy on the validation split (ties go to the value nearest 1); the test split is
    never looked at. Returns the Pilot's validation accuracy, the score per λ, and the choice."""
    config = model.peft_config[model.active_adapter]
    pilot = accuracy(model, tokenizer, validation, settings.max_new_tokens, "pilot")
    scores = {}
    for value in settings.lambda_grid:
        config.fusion_lambda = value
        scores[value] = accuracy(model, tokenizer, validation, settings.max_new_tokens, "fused")
    best = max(settings.lambda_grid, key=lambda v: (scores[v], -abs(v - 1.0)))
    return pilot, scores, best


# ---------------------------------------------------------------------- the pipeline


def pilot_and_copilot(settings: DemoSettings):
    """The LoRA Pilot with the demo's Copilot; returns the model, its tokenizer and both parameter counts."""
    pilot, tokenizer = load_pilot_with_lora(settings)
    copilot = CopilotConfig(
        num_layers=settings.copilot_layers, copilot_loss=settings.copilot_loss, fusion_mode=settings.fusion_mode
    )
    model = get_peft_model(pilot, copilot)
    copilot_params = sum(p.numel() for p in model.base_model.copilot_model.parameters())
    pilot_params = sum(p.numel() for p in model.base_model.model.parameters())
    say(
        f"Pilot {pilot_params / 1e6:.2f}M parameters with LoRA r={settings.lora_r}; "
        f"Copilot {copilot_params / 1e6:.2f}M"
    )
    return model, tokenizer, pilot_params, copilot_params


def run_demo(settings: DemoSettings) -> dict:
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    torch.manual_seed(settings.seed)
    splits = load_splits(settings)
    say(f"data: {len(splits['train'])} train / {len(splits['validation'])} validation / {len(splits['test'])} test")
    model, tokenizer, pilot_params, copilot_params = pilot_and_copilot(settings)
    settings.max_new_tokens = settings.max_new_tokens or generation_budget(tokenizer, splits["train"])

    say("fine-tuning the Pilot with the Copilot (Algorithm 1)")
    trainer, timer = fine_tune(model, tokenizer, splits["train"], settings, output_dir / "checkpoints")
    train_seconds = sum(timer.times)
    model.save_pretrained(output_dir / "copilot")
    model.eval()

    validation = splits["validation"].to_list()
    test = splits["test"].to_list()
    say(f"choosing λ on the validation split from {list(settings.lambda_grid)}")
    val_pilot, val_scores, best = choose_lambda(model, tokenizer, validation, settings)
    model.peft_config[model.active_adapter].fusion_lambda = best

    say(f"test split: Pilot alone and Pilot + Copilot (λ={best}) on the same {len(test)} prompts")
    completions, speed = generate_both(model, tokenizer, [r["prompt"] for r in test], settings.max_new_tokens)
    pilot_correct = correct(completions["pilot"], test)
    fused_correct = correct(completions["fused"], test)
    gain = paired_gain(pilot_correct, fused_correct, seed=settings.seed)
    say("measuring the Copilot's held-out skill and the training overhead")
    skill_test = copilot_skill(model, tokenizer, test)
    skill_train = copilot_skill(
        model, tokenizer, splits["train"].select(range(min(400, len(splits["train"])))).to_list()
    )
    ce_skill = copilot_ce_skill(model, tokenizer, test)
    copilot_step = statistics.median(timer.times[2:]) if len(timer.times) > 3 else float("nan")
    plain_step = plain_sft_step_time(settings, splits["train"], output_dir)

    history = trainer.state.log_history
    results = {
        "settings": asdict(settings),
        "pilot_accuracy": sum(pilot_correct) / len(test),
        "fused_accuracy": sum(fused_correct) / len(test),
        **gain,
        "chosen_lambda": best,
        "validation_fused_accuracy_by_lambda": {str(k): v for k, v in val_scores.items()},
        "validation_pilot_accuracy": val_pilot,
        "copilot_skill_test": skill_test,
        "copilot_skill_train": skill_train,
        "copilot_ce_skill_test": ce_skill,
        "train_seconds": train_seconds,
        "training_step_ratio": copilot_step / plain_step,
        "copilot_step_seconds": copilot_step,
        "plain_sft_step_seconds": plain_step,
        "pilot_tokens_per_second": speed["pilot"],
        "fused_tokens_per_second": speed["fused"],
        "tokens_per_second_ratio": speed["fused"] / speed["pilot"],
        "copilot_parameters": copilot_params,
        "pilot_parameters": pilot_params,
        "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
        "loss_curve": [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e],
        "copilot_loss_curve": [
            {"step": e["step"], "copilot_loss": e["copilot_loss"]} for e in history if "copilot_loss" in e
        ],
        "examples": [
            {"prompt": r["prompt"], "gold": answer_of(r), "pilot": p, "fused": f}
            for r, p, f in list(zip(test, completions["pilot"], completions["fused"]))[:5]
        ],
        "wall_seconds": time.perf_counter() - began,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot_results(results, output_dir / "demo.png")
    print(format_table(results))
    say(f"wrote {output_dir / 'results.json'} and {output_dir / 'demo.png'} ({results['wall_seconds']:.0f} s)")
    return results


def format_table(results: dict) -> str:
    low, high = results["ci95_points"]
    skill = results["copilot_skill_test"]
    rows = [
        ("Pilot alone, test accuracy", f"{100 * results['pilot_accuracy']:.1f}%"),
        (f"Pilot + Copilot (λ={results['chosen_lambda']}), test accuracy", f"{100 * results['fused_accuracy']:.1f}%"),
        ("gain (paired, 95% bootstrap interval)", f"{results['gain_points']:+.1f} points [{low:+.1f}, {high:+.1f}]"),
        ("items fixed / broken by the Copilot", f"{results['fixed_by_copilot']} / {results['broken_by_copilot']}"),
        (
            "held-out cross-entropy, Pilot → fused (λ = 1, logit)",
            f"{results['copilot_ce_skill_test']['pilot_ce']:.3f} → {results['copilot_ce_skill_test']['fused_ce']:.3f}",
        ),
        *(
            [("Copilot RMSE skill vs ℓ, held-out (train)", f"{skill:+.3f} ({results['copilot_skill_train']:+.3f})")]
            if results["settings"]["copilot_loss"] != "fused_ce"  # regression skill means nothing for a log-odds f
            else []
        ),
        ("training step time vs plain SFTTrainer", f"{results['training_step_ratio']:.2f}×"),
        ("generation tokens/s, fused vs Pilot", f"{results['tokens_per_second_ratio']:.2f}×"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [e["step"] for e in results["loss_curve"]]
    curves.plot(steps, [e["loss"] for e in results["loss_curve"]], label="Pilot loss (cross-entropy)")
    curves.plot(
        [e["step"] for e in results["copilot_loss_curve"]],
        [e["copilot_loss"] for e in results["copilot_loss_curve"]],
        label=f"Copilot loss ({results['settings']['copilot_loss']})",
    )
    curves.set_xlabel("training step")
    curves.set_title("Joint training")
    curves.legend()
    values = [100 * results["pilot_accuracy"], 100 * results["fused_accuracy"]]
    bars.bar(["Pilot alone", "Pilot + Copilot"], values, color=["#888888", "#1f77b4"])
    for x, value in enumerate(values):
        bars.text(x, value, f"{value:.1f}%", ha="center", va="bottom")
    bars.set_ylabel("test answer accuracy (%)")
    low, high = results["ci95_points"]
    bars.set_title(f"gain {results['gain_points']:+.1f} points [{low:+.1f}, {high:+.1f}]")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
