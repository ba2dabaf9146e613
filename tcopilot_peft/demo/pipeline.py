"""The demo pipeline: fine-tune a pretrained Pilot with LoRA + Copilot on a finite task, then measure honestly.

Steps: load the Pilot (the package's pretrained one, or `--model`); split the task into train / validation / test;
fine-tune with `CopilotSFTTrainer` (its default schedule: the Pilot, then the Copilot on the finished Pilot); choose
λ on the validation split; on the test split generate with and without the Copilot from the same model and prompts
(paired), and report the gain with a bootstrap interval, the Copilot's held-out skill, the training time against
plain `SFTTrainer` for the same Pilot steps and the fused vs Pilot tokens/s. Writes `results.json` and `demo.png`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from ..evaluation.diagnostics import copilot_ce_skill, copilot_rmse_skill
from ..evaluation.statistics import choose_on_validation, paired_gain
from ..generation import generate_greedy
from ..trainer import CopilotSFTConfig, CopilotSFTTrainer
from ..tuner import CopilotConfig
from .report import format_table, plot_results
from .tasks import answer_of, correct, task_splits


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


# ---------------------------------------------------------------------- measurements


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
    """`CopilotSFTTrainer` (its default schedule unless `overrides` say otherwise); returns the trainer and the
    per-step timer."""
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


def score_arm(model, tokenizer, rows: list[dict], max_new_tokens: int, arm: str) -> list[bool]:
    """Per-row correctness of one arm's greedy answers ("pilot": the Copilot off; "fused": the model as it is)."""
    completions, _ = generate_greedy(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens, arms=(arm,))
    return correct(completions[arm], rows)


def choose_lambda(model, tokenizer, validation: list[dict], settings: DemoSettings):
    """λ with the best fused accuracy on the validation split (`choose_on_validation`); the test split is never
    looked at. Returns the Pilot's validation accuracy, the score per λ, and the choice."""
    config = model.peft_config[model.active_adapter]
    pilot = statistics.mean(score_arm(model, tokenizer, validation, settings.max_new_tokens, "pilot"))
    scores = {}
    for value in settings.lambda_grid:
        config.fusion_lambda = value
        scores[value] = statistics.mean(score_arm(model, tokenizer, validation, settings.max_new_tokens, "fused"))
    return pilot, scores, choose_on_validation(scores)


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


def training_record(trainer: CopilotSFTTrainer, timer: StepTimer, plain_step: float) -> dict:
    """What the demo reports of its training run: time, its ratio to plain SFT's for the same Pilot steps
    (`plain_step` seconds a step), the Mistake Log's size, and both loss curves."""
    history = trainer.state.log_history
    return {
        "train_seconds": sum(timer.times),
        "pilot_steps": trainer.pilot_steps,
        "copilot_steps": trainer.copilot_steps,
        "training_time_ratio": sum(timer.times) / (plain_step * trainer.pilot_steps),
        "plain_sft_step_seconds": plain_step,
        "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
        "loss_curve": [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e],
        "copilot_loss_curve": [
            {"step": e["step"], "copilot_loss": e["copilot_loss"]} for e in history if "copilot_loss" in e
        ],
    }


def run_demo(settings: DemoSettings) -> dict:
    output_dir = Path(settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    torch.manual_seed(settings.seed)
    splits = load_splits(settings)
    say(f"data: {len(splits['train'])} train / {len(splits['validation'])} validation / {len(splits['test'])} test")
    model, tokenizer, pilot_params, copilot_params = pilot_and_copilot(settings)
    settings.max_new_tokens = settings.max_new_tokens or generation_budget(tokenizer, splits["train"])

    say("fine-tuning the Pilot, then the Copilot on the finished Pilot (CopilotSFTTrainer's default schedule)")
    trainer, timer = fine_tune(model, tokenizer, splits["train"], settings, output_dir / "checkpoints")
    model.save_pretrained(output_dir / "copilot")
    model.eval()

    validation = splits["validation"].to_list()
    test = splits["test"].to_list()
    say(f"choosing λ on the validation split from {list(settings.lambda_grid)}")
    val_pilot, val_scores, best = choose_lambda(model, tokenizer, validation, settings)
    model.peft_config[model.active_adapter].fusion_lambda = best

    say(f"test split: Pilot alone and Pilot + Copilot (λ={best}) on the same {len(test)} prompts")
    completions, speed = generate_greedy(model, tokenizer, [r["prompt"] for r in test], settings.max_new_tokens)
    pilot_correct = correct(completions["pilot"], test)
    fused_correct = correct(completions["fused"], test)
    gain = paired_gain(pilot_correct, fused_correct, seed=settings.seed)
    say("measuring the Copilot's held-out skill and the training overhead")
    skill_test = copilot_rmse_skill(model, tokenizer, test)
    skill_train = copilot_rmse_skill(
        model, tokenizer, splits["train"].select(range(min(400, len(splits["train"])))).to_list()
    )
    ce_skill = copilot_ce_skill(model, tokenizer, test)
    plain_step = plain_sft_step_time(settings, splits["train"], output_dir)
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
        **training_record(trainer, timer, plain_step),
        "pilot_tokens_per_second": speed["pilot"],
        "fused_tokens_per_second": speed["fused"],
        "tokens_per_second_ratio": speed["fused"] / speed["pilot"],
        "copilot_parameters": copilot_params,
        "pilot_parameters": pilot_params,
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
