"""Regenerate benchmarks/RESULTS.md: whether, when and at what cost the Copilot helps, in the paper's regime.

The regime is a *pretrained* Pilot (the package's demo Pilot, pre-trained on a broad synthetic skill mixture)
fine-tuned with LoRA for 3 epochs (the paper's) on a finite set of thousands of distinct examples. For every task and
seed, on the same data, steps and seed:

  (a) the Pilot alone (the same fine-tuned model with the Copilot off);
  (b) Pilot + Copilot with the package's defaults (`CopilotConfig()`: the fused cross-entropy objective, logit
      fusion, the onehot(ŷ) − p̂ feed, rotary positions and X̃_t, h_t at the Copilot's own position; trained after
      the Pilot, on the finished Pilot, frozen, for as many steps: `copilot_schedule="after_pilot"`); λ chosen on
      the validation split;
  (b′) the same Copilot read with Algorithm 2's feed (its own previous output) at inference;
  (p) the paper's method (`PAPER`: regression onto ℓ, probability fusion, Algorithm 2's feed, the position-free
      layout with no same-position path, trained jointly as Algorithm 1); λ and fusion mode chosen on validation;
  (h) the default Copilot with `copilot_holdout_fraction=0.1` (its Pilot never trains on the withheld tenth);
  (e) a parameter-matched larger Pilot (as many extra layers as the Copilot has, trained fully beside the LoRA);
  (f) a logit ensemble of the Pilot (a) with a separately fine-tuned small model of the Copilot's size;
  (g) the default Copilot of seed s loaded onto the Pilot of seed s+1 (a sibling) without retraining.

λ, modes and ensemble weights are chosen on validation data, never on test data; gains are paired (same items).
Accuracy is answer-level: the number after the last "answer" in the generation, with a generation budget that fits
the longest training completion.

    python benchmarks/run_results.py                 # the committed RESULTS.md
    python benchmarks/run_results.py --quick         # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import peft
import torch
import transformers
import trl
from common import LAMBDAS, grid_weight, mean_std, stamped_log
from controls import ensemble_generate, expanded_pilot, fine_tuned_small_model
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tcopilot_peft
from tcopilot_peft.costs import cost_model
from tcopilot_peft.demo import PILOT_DIR
from tcopilot_peft.demo.pipeline import (
    DemoSettings,
    fine_tune,
    generation_budget,
    load_pilot_with_lora,
    plain_sft,
    score_arm,
)
from tcopilot_peft.demo.tasks import correct, task_splits
from tcopilot_peft.evaluation.diagnostics import copilot_ce_skill, copilot_rmse_skill, pilot_calibration
from tcopilot_peft.evaluation.statistics import choose_on_validation, paired_gain
from tcopilot_peft.generation import generate_greedy
from tcopilot_peft.tuner import CopilotConfig


HERE = Path(__file__).resolve().parent
PILOTS = {"base": PILOT_DIR, "small": HERE / "pilots" / "small"}
OPTIONAL_ARMS = ("paper", "holdout", "param_matched", "ensemble", "transfer")
HOLDOUT_FRACTION = 0.1
# The paper's objective is tried in both fusion spaces, its own (Eq. 8) first, so a tie goes to the paper's.
PAPER_OBJECTIVE_MODES = ("prob", "logit")
# (p), the paper's Copilot: its objective and layout (trained jointly: `copilot_schedule="joint"`).
PAPER = {"copilot_loss": "rmse", "copilot_positions": "none", "copilot_same_position": "none"}


log = stamped_log("results")


def choose_fusion(model, tokenizer, validation, budget: int, feed: str, modes: tuple[str, ...]) -> tuple[str, dict]:
    """Best (mode, λ) on validation for the given inference feed; sets it on the model and returns it and the grid."""
    config = model.peft_config[model.active_adapter]
    config.inference_feed = feed
    grid = {}
    for mode in modes:
        config.fusion_mode = mode
        for value in LAMBDAS:
            config.fusion_lambda = value
            grid[f"{mode}/{value}"] = statistics.mean(score_arm(model, tokenizer, validation, budget, "fused"))
    best = choose_on_validation(grid, grid_weight)
    config.fusion_mode, value = best.split("/")
    config.fusion_lambda = float(value)
    return best, grid


# ---------------------------------------------------------------------- arms


def joint_arm(settings, splits, workdir: Path, copilot: dict, feeds: tuple[str, ...], **trainer_overrides) -> dict:
    """Algorithm 1 with `CopilotConfig(**copilot)`; per inference feed, fusion chosen on validation, test scored.

    Returns the Pilot-alone and fused per-item results, the teacher-forced diagnostics and the run's costs.
    """
    validation, test, budget = splits["validation"].to_list(), splits["test"].to_list(), splits["budget"]
    torch.manual_seed(settings.seed)
    pilot, tokenizer = load_pilot_with_lora(settings)
    model = get_peft_model(pilot, CopilotConfig(**copilot))
    trainer, timer = fine_tune(model, tokenizer, splits["train"], settings, workdir, **trainer_overrides)
    model.eval()
    model.save_pretrained(workdir / "copilot")
    config = model.peft_config[model.active_adapter]
    # The fused cross-entropy trains a log-odds correction, meaningful in logit space only.
    modes = ("logit",) if config.copilot_loss == "fused_ce" else PAPER_OBJECTIVE_MODES
    train_rows = splits["train"].select(range(200)).to_list()
    run = {
        "pilot": score_arm(model, tokenizer, test, budget, "pilot"),
        "copilot_loss": config.copilot_loss,
        "ce_skill_test": copilot_ce_skill(model, tokenizer, test[:200]),
        "ce_skill_train": copilot_ce_skill(model, tokenizer, train_rows),
        "rmse_skill_test": copilot_rmse_skill(model, tokenizer, test[:200]),
        "pilot_calibration": pilot_calibration(model, tokenizer, test[:200]),
        "steps": trainer.state.global_step,
        "pilot_steps": trainer.pilot_steps,
        "copilot_steps": trainer.copilot_steps,
        "seconds": sum(timer.times),
        "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
        "adapter": str(workdir / "copilot"),
        "feeds": {},
    }
    for feed in feeds:
        fusion, grid = choose_fusion(model, tokenizer, validation, budget, feed, modes)
        completions, speed = generate_greedy(model, tokenizer, [r["prompt"] for r in test], budget)
        run["feeds"][feed] = {
            "fused": correct(completions["fused"], test),
            "fusion": fusion,
            "validation_grid": grid,
            "tokens_per_second_ratio": speed["fused"] / speed["pilot"],
        }
    run["costs"] = _costs(model)
    return run


def training_time_ratio(run: dict) -> float:
    """The default arm's whole training time over plain SFT's for the same Pilot steps (its median step × steps)."""
    return run["default"]["seconds"] / (run["plain_step_seconds"] * run["default"]["pilot_steps"])


def _costs(model) -> dict:
    costs = cost_model(model)
    return {
        "copilot_parameters": sum(p.numel() for p in model.base_model.copilot_model.parameters()),
        "pilot_parameters": sum(  # the pretrained Pilot's own weights, not its LoRA
            p.numel() for n, p in model.base_model.model.named_parameters() if "lora_" not in n
        ),
        "training_flop_share": costs.training_share(pilot_weights_train=False, target_fraction=0.75),
        "inference_flop_share": costs.inference_share(),
    }


def plain_step_seconds(settings, splits, workdir: Path) -> float:
    """Median step time of plain TRL SFT of the same LoRA Pilot on the same batches (for the overhead ratio)."""
    _, _, probe = plain_sft(settings, splits["train"], workdir / "probe", max_steps=10)
    return statistics.median(probe.times[2:])


def param_matched_arm(settings, splits, workdir: Path, copilot_layers: int) -> dict:
    """(e): the pretrained Pilot deepened by `copilot_layers` identity-initialised layers that train fully."""
    torch.manual_seed(settings.seed)
    larger, new_layers = expanded_pilot(settings.model, copilot_layers)
    added = sum(p.numel() for p in larger.parameters())
    larger = get_peft_model(
        larger, LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, target_modules="all-linear")
    )
    for name, parameter in larger.named_parameters():
        if any(f".layers.{index}." in name for index in new_layers):
            parameter.requires_grad_(True)  # the added layers train fully, like the Copilot's
    larger, tokenizer, _ = plain_sft(
        settings,
        splits["train"],
        workdir / "e",
        max_steps=-1,
        model=larger,
        num_train_epochs=settings.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
    )
    # A plain generate() ("fused" arm of a model without a Copilot); the "pilot" arm would disable its LoRA.
    return {
        "param_matched": score_arm(larger, tokenizer, splits["test"].to_list(), splits["budget"], "fused"),
        "param_matched_parameters": added,
    }


def ensemble_arm(
    settings, splits, workdir: Path, copilot_layers: int, pilot_model, tokenizer, steps_factor: float
) -> dict:
    """(f): log p_P + w · log p_S with a small model of the Copilot's size fine-tuned alone for `steps_factor` × the
    Pilot's steps, w chosen on validation."""
    validation, test, budget = splits["validation"].to_list(), splits["test"].to_list(), splits["budget"]
    small, _ = fine_tuned_small_model(settings, splits["train"], workdir / "f", copilot_layers, steps_factor)
    small_parameters = sum(p.numel() for p in small.parameters())
    prompts = [r["prompt"] for r in validation]
    with pilot_model.disable_adapter():  # the Pilot (a): its LoRA on, the Copilot off
        grid = {
            f"w/{w}": sum(correct(ensemble_generate(pilot_model, small, w, tokenizer, prompts, budget), validation))
            / len(validation)
            for w in LAMBDAS
        }
        weight = grid_weight(choose_on_validation(grid, grid_weight))
        outputs = ensemble_generate(pilot_model, small, weight, tokenizer, [r["prompt"] for r in test], budget)
    return {
        "ensemble": correct(outputs, test),
        "ensemble_weight": weight,
        "ensemble_grid": grid,
        "small_alone": score_arm(small, tokenizer, test, budget, "fused"),
        "small_parameters": small_parameters,
        "small_steps_factor": steps_factor,
    }


def transfer_arm(pilot_dir: Path, own_adapter: str, sibling_adapter: str, fusion: str, splits) -> dict:
    """(g): the sibling Pilot (another seed's fine-tuned LoRA, as saved with its adapter) with this seed's Copilot."""
    base = AutoModelForCausalLM.from_pretrained(pilot_dir)
    transferred = PeftModel.from_pretrained(base, sibling_adapter)
    own = load_file(Path(own_adapter) / "adapter_model.safetensors")
    marker = "copilot_model."
    weights = {key.split(marker, 1)[1]: value for key, value in own.items() if marker in key}
    transferred.base_model.copilot_model[transferred.active_adapter].load_state_dict(weights)
    tokenizer = AutoTokenizer.from_pretrained(pilot_dir)
    config = transferred.peft_config[transferred.active_adapter]
    mode, value = fusion.split("/")
    config.fusion_mode, config.fusion_lambda = mode, float(value)
    test, budget = splits["test"].to_list(), splits["budget"]
    transferred.eval()
    return {
        "transfer_sibling_pilot": score_arm(transferred, tokenizer, test, budget, "pilot"),
        "transfer": score_arm(transferred, tokenizer, test, budget, "fused"),
    }


# ---------------------------------------------------------------------- one (Pilot, task) block


def run_block(
    pilot_dir: Path, task: str, seeds: list[int], sizes: dict, workdir: Path, arms: set[str], runs: dict, save
) -> dict:
    """Every seed of one (Pilot, task) block not already in `runs` (an interrupted block's finished seeds), `save()`
    after each, then the transfers, which read every seed's adapter."""
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    tokenizer = AutoTokenizer.from_pretrained(pilot_dir)
    splits["budget"] = generation_budget(tokenizer, splits["train"])
    for seed in seeds:
        if str(seed) in runs:
            log(f"{task} seed {seed}: kept from the workdir")
            continue
        settings = DemoSettings(model=str(pilot_dir), task=task, seed=seed, epochs=sizes["epochs"])
        seed_dir = workdir / f"{task}-{seed}"
        log(f"{task} seed {seed}: (a)/(b)/(b′) the Pilot, then the default Copilot on it")
        run = {"default": joint_arm(settings, splits, seed_dir / "b", {}, feeds=("pilot_error", "copilot"))}
        run["plain_step_seconds"] = plain_step_seconds(settings, splits, seed_dir)
        if "paper" in arms:
            log(f"{task} seed {seed}: (p) the paper's method")
            run["paper"] = joint_arm(
                settings, splits, seed_dir / "p", PAPER, feeds=("copilot",), copilot_schedule="joint"
            )
        if "holdout" in arms:
            log(f"{task} seed {seed}: (h) default Copilot, copilot_holdout_fraction={HOLDOUT_FRACTION}")
            run["holdout"] = joint_arm(
                settings,
                splits,
                seed_dir / "h",
                {},
                feeds=("pilot_error",),
                copilot_holdout_fraction=HOLDOUT_FRACTION,
            )
        copilot_layers = json.loads((seed_dir / "b" / "copilot" / "adapter_config.json").read_text())["num_layers"]
        if "param_matched" in arms:
            log(f"{task} seed {seed}: (e) parameter-matched larger Pilot, +{copilot_layers} layers")
            run.update(param_matched_arm(settings, splits, seed_dir, copilot_layers))
        if "ensemble" in arms:
            log(f"{task} seed {seed}: (f) logit ensemble with a small model of the Copilot's size")
            base = AutoModelForCausalLM.from_pretrained(pilot_dir)
            pilot_model = PeftModel.from_pretrained(base, seed_dir / "b" / "copilot").eval()
            # Its small model trains for as many steps as the default's Copilot learns for.
            steps_factor = run["default"]["copilot_steps"] / run["default"]["pilot_steps"]
            run.update(ensemble_arm(settings, splits, seed_dir, copilot_layers, pilot_model, tokenizer, steps_factor))
        runs[str(seed)] = run
        save()
    if "transfer" in arms and len(seeds) > 1:
        log(f"{task}: (g) transfer to sibling Pilots")
        for index, seed in enumerate(seeds):
            sibling = str(seeds[(index + 1) % len(seeds)])
            own = runs[str(seed)]["default"]
            runs[str(seed)]["transfer_arm"] = transfer_arm(
                pilot_dir,
                own["adapter"],
                runs[sibling]["default"]["adapter"],
                own["feeds"]["pilot_error"]["fusion"],
                splits,
            )
    runs["budget"] = splits["budget"]
    return runs


# ---------------------------------------------------------------------- tables


def accuracy_points(items: list[bool]) -> float:
    return 100 * sum(items) / len(items)


# Each row: label, then how to find (reference, arm) per-item results in one seed's run (None when not run).
ROWS = (
    ("(a) Pilot alone", lambda r: (r["default"]["pilot"], r["default"]["pilot"])),
    (
        "(b) Pilot + Copilot, defaults (fused CE, logit fusion, rotary, X̃_t and h_t; after the Pilot)",
        lambda r: (r["default"]["pilot"], r["default"]["feeds"]["pilot_error"]["fused"]),
    ),
    (
        "(b′) same Copilot, Algorithm 2's feed (its own previous output)",
        lambda r: (r["default"]["pilot"], r["default"]["feeds"]["copilot"]["fused"]),
    ),
    (
        "(p) the paper's method (RMSE onto ℓ, prob fusion, Algorithm 2's feed, position-free, joint)",
        lambda r: (r["paper"]["pilot"], r["paper"]["feeds"]["copilot"]["fused"]) if "paper" in r else None,
    ),
    (
        f"(h) defaults + copilot_holdout_fraction={HOLDOUT_FRACTION} (vs its own Pilot)",
        lambda r: (r["holdout"]["pilot"], r["holdout"]["feeds"]["pilot_error"]["fused"]) if "holdout" in r else None,
    ),
    (
        "(h) vs the Pilot (a) trained on all the data",
        lambda r: (r["default"]["pilot"], r["holdout"]["feeds"]["pilot_error"]["fused"]) if "holdout" in r else None,
    ),
    (
        "(e) parameter-matched larger Pilot (+ Copilot-sized layers)",
        lambda r: (r["default"]["pilot"], r["param_matched"]) if "param_matched" in r else None,
    ),
    (
        "(f) logit ensemble: Pilot + separately fine-tuned small model",
        lambda r: (r["default"]["pilot"], r["ensemble"]) if "ensemble" in r else None,
    ),
    (
        "    the small model of (f) alone",
        lambda r: (r["default"]["pilot"], r["small_alone"]) if "small_alone" in r else None,
    ),
    (
        "(g) the default Copilot on a sibling Pilot (vs that sibling alone)",
        lambda r: (
            (r["transfer_arm"]["transfer_sibling_pilot"], r["transfer_arm"]["transfer"])
            if "transfer_arm" in r
            else None
        ),
    ),
)


def task_table(title: str, runs: dict, seeds: list[str]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| arm | test accuracy (%) | gain vs its reference, paired (points) | per seed | fixed / broken |",
        "|---|---|---|---|---|",
    ]
    for label, find in ROWS:
        pairs = [find(runs[s]) for s in seeds]
        if any(pair is None for pair in pairs):
            continue
        gains = [paired_gain(reference, arm) for reference, arm in pairs]
        per_seed = ", ".join(f"{g['gain_points']:+.1f}" for g in gains)
        lines.append(
            f"| {label} | {mean_std([accuracy_points(arm) for _, arm in pairs])} | "
            f"{mean_std([g['gain_points'] for g in gains])} | {per_seed} | "
            f"{sum(g['fixed_by_copilot'] for g in gains)} / {sum(g['broken_by_copilot'] for g in gains)} |"
        )
    lines += ["", *skill_lines(runs, seeds), ""]
    return lines


def skill_lines(runs: dict, seeds: list[str]) -> list[str]:
    def ce(arm: str, split: str) -> str:
        values = [runs[s][arm][f"ce_skill_{split}"] for s in seeds]
        pilot = statistics.mean(v["pilot_ce"] for v in values)
        fused = statistics.mean(v["fused_ce"] for v in values)
        return f"{pilot:.3f} → {fused:.3f} (skill {mean_std([100 * v['skill'] for v in values])} %)"

    lines = [
        "Teacher-forced on completion tokens (200 items): the Copilot's skill in its loss's metric, cross-entropy of "
        f"softmax(log p̂ + f) vs the Pilot's, held-out {ce('default', 'test')}, training prompts "
        f"{ce('default', 'train')}; its RMSE skill vs ℓ (the paper's metric, which it is not trained for) "
        f"{mean_std([100 * runs[s]['default']['rmse_skill_test'] for s in seeds])} %."
    ]
    if all("paper" in runs[s] for s in seeds):
        lines.append(
            f"The paper's objective (p): cross-entropy held-out {ce('paper', 'test')}; RMSE skill "
            f"{mean_std([100 * runs[s]['paper']['rmse_skill_test'] for s in seeds])} %."
        )
    choices = [
        ("(b)", "default", "pilot_error"),
        ("(b′)", "default", "copilot"),
        ("(p)", "paper", "copilot"),
        ("(h)", "holdout", "pilot_error"),
    ]
    chosen = [
        f"{name} " + ", ".join(runs[s][arm]["feeds"][feed]["fusion"] for s in seeds)
        for name, arm, feed in choices
        if all(arm in runs[s] for s in seeds)
    ]
    if all("ensemble_weight" in runs[s] for s in seeds):
        chosen.append("(f) weight " + ", ".join(str(runs[s]["ensemble_weight"]) for s in seeds))
    lines.append("Chosen on validation (mode/λ per seed): " + "; ".join(chosen) + ".")
    calibration = [runs[s]["default"]["pilot_calibration"] for s in seeds]
    lines.append(
        f"The Pilot: teacher-forced token accuracy {mean_std([100 * c['token_accuracy'] for c in calibration])} %, "
        f"expected calibration error {mean_std([100 * c['expected_calibration_error'] for c in calibration])} points "
        f"(held-out). Training: the Pilot's {runs[seeds[0]]['default']['pilot_steps']} steps, then the Copilot's "
        f"{runs[seeds[0]]['default']['steps'] - runs[seeds[0]]['default']['pilot_steps']}; generation budget "
        f"{runs['budget']} new tokens."
    )
    first = runs[seeds[0]]
    if "small_parameters" in first and "param_matched_parameters" in first:
        lines.append(
            f"Parameters: Copilot {first['default']['costs']['copilot_parameters'] / 1e3:.0f}k; the larger Pilot "
            f"(e) has {first['param_matched_parameters'] / 1e3:.0f}k in all (the Pilot "
            f"{first['default']['costs']['pilot_parameters'] / 1e3:.0f}k); the small model (f) "
            f"{first['small_parameters'] / 1e3:.0f}k."
        )
    return lines


def cost_lines(results: dict, blocks: list[str]) -> list[str]:
    lines = ["### Cost of the default Copilot", "", "| measure | " + " | ".join(blocks) + " |"]
    lines.append("|---|" + "---|" * len(blocks))

    def row(label, value):
        cells = []
        for key in blocks:
            runs = [r for s, r in results[key].items() if s.isdigit()]
            cells.append(value(runs))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row(
        "Copilot parameters (share of the Pilot)",
        lambda r: (
            f"{r[0]['default']['costs']['copilot_parameters'] / 1e3:.0f}k "
            f"({r[0]['default']['costs']['copilot_parameters'] / r[0]['default']['costs']['pilot_parameters']:.0%})"
        ),
    )
    row(
        "Copilot FLOP share, training / generation",
        lambda r: (
            f"{r[0]['default']['costs']['training_flop_share']:.0%} / "
            f"{r[0]['default']['costs']['inference_flop_share']:.0%}"
        ),
    )
    row(
        "training time for the Pilot's steps, CopilotSFTTrainer (both phases) / SFTTrainer",
        lambda r: f"{mean_std([training_time_ratio(x) for x in r])}×",
    )
    row(
        "generation tokens/s, fused / Pilot (batch 64, greedy)",
        lambda r: f"{mean_std([x['default']['feeds']['pilot_error']['tokens_per_second_ratio'] for x in r])}×",
    )
    row(
        "Mistake Log bytes per token",
        lambda r: f"{statistics.mean(x['default']['mistake_log_bytes_per_token'] for x in r):.0f}",
    )
    return [*lines, ""]


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["sort_then_reverse", "count_then_max"])
    parser.add_argument("--pilots", nargs="+", default=list(PILOTS), choices=list(PILOTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument(
        "--base-pilot-arms",
        nargs="*",
        default=list(OPTIONAL_ARMS),
        choices=OPTIONAL_ARMS,
        help="Arms run on the base Pilot besides (a), (b) and (b′).",
    )
    parser.add_argument(
        "--small-pilot-arms",
        nargs="*",
        default=["paper"],
        choices=OPTIONAL_ARMS,
        help="Arms run on the small Pilot besides (a), (b) and (b′).",
    )
    parser.add_argument("--resume", action="store_true", help="Keep the finished blocks of an interrupted run.")
    parser.add_argument("--render-only", action="store_true", help="Rewrite the output from the saved blocks only.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tcopilot-results"))
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    sizes = dict(train=4000, validation=100, test=300, epochs=args.epochs)
    if args.quick:
        sizes = dict(train=300, validation=30, test=60, epochs=1.0)
    missing = [name for name in args.pilots if not (PILOTS[name] / "config.json").exists()]
    if missing:
        sys.exit(
            f"Pilot(s) {missing} not found; rebuild: python -m tcopilot_peft.demo.pretrain --output-dir "
            f"{PILOTS['small']} --hidden-size 96 --layers 3"
        )
    began = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Finished (Pilot, task) blocks are kept in the workdir as they complete: --resume skips them after a crash.
    partial = args.workdir / "partial.json"
    if args.render_only and not partial.exists():
        sys.exit(f"--render-only needs the saved blocks of a run, {partial}, which does not exist.")
    results = json.loads(partial.read_text()) if (args.resume or args.render_only) and partial.exists() else {}
    previous_seconds = results.pop("seconds", 0.0)
    for name in [] if args.render_only else args.pilots:
        arms = set(args.base_pilot_arms) if name == "base" else set(args.small_pilot_arms)
        for task in args.tasks:
            key = f"{name}/{task}"
            if key in results:
                kept = sorted(int(s) for s in results[key] if s.isdigit())
                if kept != sorted(args.seeds):
                    sys.exit(
                        f"{partial}: block {key} was computed for seeds {kept}, not {args.seeds}; rerun without "
                        "--resume, or with those seeds."
                    )
                log(f"{key}: kept from {partial}")
                continue
            # A block's finished seeds are kept under `unfinished` until the block is whole.
            runs = results.setdefault("unfinished", {}).setdefault(key, {})

            def save():
                seconds = previous_seconds + time.perf_counter() - began
                partial.write_text(json.dumps({**results, "seconds": seconds}))

            results[key] = run_block(PILOTS[name], task, args.seeds, sizes, args.workdir / name, arms, runs, save)
            results[key]["command"] = " ".join(["python benchmarks/run_results.py", *sys.argv[1:]])
            del results["unfinished"][key]
            save()
    results.pop("unfinished", None)
    wall = previous_seconds + time.perf_counter() - began
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    lines = render(results, args, sizes, wall)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def render(results: dict, args, sizes: dict, wall: float) -> list[str]:
    seeds = [str(s) for s in args.seeds]
    lines = [
        "# Results: does the Copilot help, when, and at what cost?",
        "",
        "Generated by "
        + ", then ".join(f"`{c}`" for c in dict.fromkeys(runs["command"] for runs in results.values()))
        + f" (each block is computed by the first command that names it; a later one keeps it) in {wall / 60:.0f} "
        f"minutes of compute on "
        f"{platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}, tcopilot_peft "
        f"{tcopilot_peft.__version__}. Per-item results are in `{args.output.with_suffix('.json').name}`.",
        "",
        f"Regime: a pretrained Pilot, LoRA r=16, {sizes['train']} distinct training examples, {sizes['epochs']:g} "
        f"epochs; {sizes['validation']} validation and {sizes['test']} test items per task; seeds {args.seeds}. "
        f"Answer-level accuracy (the number after the last `answer`). λ ∈ {list(LAMBDAS)} (× mode ∈ [prob, logit] "
        "for the paper's objective) chosen on validation. Pilots: "
        + "; ".join(
            f"{name} ({_parameters(PILOTS[name]) / 1e3:.0f}k parameters, `{PILOTS[name].relative_to(HERE.parent)}`)"
            for name in dict.fromkeys(key.split("/")[0] for key in results)
        )
        + ".",
        "",
        "Steps of the default (b), the Pilot's and then the Copilot's on the finished Pilot (`copilot_steps_factor`), "
        "per block: "
        + "; ".join(f"{key} {phase_steps(runs, seeds)}" for key, runs in results.items())
        + ". (f)'s small model trains alone for as many steps as (b)'s Copilot.",
        "",
        OTHER_BLOCKS,
        "",
    ]
    for key, runs in results.items():
        name, task = key.split("/")
        lines += task_table(f"{name} Pilot, task `{task}`", runs, seeds)
    return lines + targets_lines(results, seeds) + cost_lines(results, list(results))


def phase_steps(runs: dict, seeds: list[str]) -> str:
    """The default arm's Pilot and Copilot steps, `P + C`, as its seeds ran them (one value when they agree)."""
    # Blocks from before `copilot_steps` was recorded ran after the Pilot: their Copilot had the remaining steps.
    defaults = [runs[s]["default"] for s in seeds]
    phases = {f"{r['pilot_steps']} + {r.get('copilot_steps', r['steps'] - r['pilot_steps'])}" for r in defaults}
    return " / ".join(sorted(phases))


OTHER_BLOCKS = (
    "Two more blocks have scripts of their own, so this file regenerates alone: an encoder-decoder (T5) Pilot in "
    "`RESULTS_T5.md` (`run_seq2seq.py`), and sequential recommendation on Amazon Beauty with T5 and decoder-only "
    "Pilots in `RESULTS_BEAUTY.md` (`run_recommendation.py`)."
)


def targets_lines(results: dict, seeds: list[str]) -> list[str]:
    """The default Copilot against the targets of the issue that set it: ≥ +3 points with every seed positive, at
    least the logit ensemble (f), and ≥ 70 % of its gain kept on a sibling Pilot (g)."""
    lines = [
        "### The default Copilot against its targets",
        "",
        "| block | (b) gain (points) | ≥ +3 with every seed positive | (b) − (f) ensemble (points) "
        "| (g) gain kept on a sibling (its points) |",
        "|---|---|---|---|---|",
    ]
    for key, runs in results.items():
        gains = [
            paired_gain(runs[s]["default"]["pilot"], runs[s]["default"]["feeds"]["pilot_error"]["fused"])[
                "gain_points"
            ]
            for s in seeds
        ]
        met = statistics.mean(gains) >= 3 and all(g > 0 for g in gains)
        versus = "–"
        if all("ensemble" in runs[s] for s in seeds):
            ensemble = [paired_gain(runs[s]["default"]["pilot"], runs[s]["ensemble"])["gain_points"] for s in seeds]
            versus = f"{statistics.mean(gains) - statistics.mean(ensemble):+.1f}"
        kept = "–"
        if all("transfer_arm" in runs[s] for s in seeds):
            transfer = [
                paired_gain(runs[s]["transfer_arm"]["transfer_sibling_pilot"], runs[s]["transfer_arm"]["transfer"])
                for s in seeds
            ]
            sibling = statistics.mean(t["gain_points"] for t in transfer)
            # A fraction of no gain is undefined; the sibling's own points say what transfers in absolute terms.
            kept = f"{sibling / statistics.mean(gains):.0%} ({sibling:+.1f})" if statistics.mean(gains) else "–"
        lines.append(
            f"| {key} | {statistics.mean(gains):+.1f} ({', '.join(f'{g:+.1f}' for g in gains)}) | "
            f"{'yes' if met else 'no'} | {versus} | {kept} |"
        )
    return [*lines, ""]


def _parameters(pilot_dir: Path) -> int:
    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(pilot_dir).parameters())


if __name__ == "__main__":
    main()
