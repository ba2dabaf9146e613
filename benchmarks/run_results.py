"""Regenerate benchmarks/RESULTS.md: whether, when and at what cost the Copilot helps, in the paper's regime.

The regime is a *pretrained* Pilot (the package's demo Pilot, pre-trained on a broad synthetic skill mixture)
fine-tuned with LoRA for a few epochs on a finite set of thousands of distinct examples. For every task and seed, on
the same data and steps:

  (a) the Pilot alone (the same fine-tuned model with the Copilot off);
  (b) Pilot + Copilot trained jointly (Algorithm 1), λ and fusion mode chosen on the validation split;
  (b′) the same Copilot fed onehot(ŷ) − p̂ of the generated token instead of its own output at inference;
  (c) a Copilot-only phase: one more epoch of Copilot training on the final, frozen Pilot;
  (d) a compute-matched Pilot: plain SFT of a fresh LoRA Pilot for as much wall time as (b) took;
  (g) the Copilot of seed s loaded onto the Pilot of seed s+1 (a sibling) without retraining;
  (h) ablations: λ × fusion mode on validation (the grid is in the JSON), and current-batch-only replay.

λ and modes are chosen on validation data, never on test data; gains are paired (same items, Copilot on vs off).

    python benchmarks/run_results.py                 # the committed RESULTS.md
    python benchmarks/run_results.py --quick         # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import copy
import functools
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
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tcopilot_peft
from tcopilot_peft.costs import cost_model
from tcopilot_peft.demo import PILOT_DIR
from tcopilot_peft.demo.pipeline import (
    DemoSettings,
    copilot_skill,
    correct,
    fine_tune,
    generate_both,
    load_pilot_with_lora,
    paired_gain,
    pilot_calibration,
    plain_sft,
)
from tcopilot_peft.demo.tasks import task_splits
from tcopilot_peft.trainer.config import COPILOT_LOSSES
from tcopilot_peft.tuner import CopilotConfig


sys.path.insert(0, str(Path(__file__).resolve().parent))
from controls import copilot_layer_indices, ensemble_generate, expanded_pilot, small_model  # noqa: E402


LAMBDAS = (0.3, 0.5, 0.8, 1.0, 2.0, 4.0)
MODES = ("prob", "logit")
HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(f"[results {time.strftime('%H:%M:%S')}] {message}", flush=True)


def choose_fusion(model, tokenizer, validation, settings, feed="copilot", modes=MODES):
    """Best (λ, mode) on validation for the given inference feed; returns the choice and the whole grid."""
    config = model.peft_config[model.active_adapter]
    config.inference_feed = feed
    grid = {}
    for mode in modes:
        config.fusion_mode = mode
        for value in LAMBDAS:
            config.fusion_lambda = value
            completions, _ = generate_both(
                model, tokenizer, [r["prompt"] for r in validation], settings.max_new_tokens, arms=("fused",)
            )
            grid[f"{mode}/{value}"] = sum(correct(completions["fused"], validation)) / len(validation)
    best = max(grid, key=lambda k: (grid[k], -abs(float(k.split("/")[1]) - 1.0)))
    mode, value = best.split("/")
    config.fusion_mode, config.fusion_lambda = mode, float(value)
    return best, grid


def test_arms(model, tokenizer, test, settings):
    completions, speed = generate_both(model, tokenizer, [r["prompt"] for r in test], settings.max_new_tokens)
    return correct(completions["pilot"], test), correct(completions["fused"], test), speed


def compute_matched_sft(settings, train, seconds_budget, output_dir):
    """Plain SFT of a fresh LoRA Pilot for about `seconds_budget` of training steps (the probe times one step)."""
    _, _, probe = plain_sft(settings, train, output_dir / "probe", max_steps=8)
    step = statistics.median(probe.times[2:])
    steps = max(1, int(seconds_budget / step))
    model, tokenizer, _ = plain_sft(
        settings, train, output_dir, max_steps=steps, lr_scheduler_type="cosine", warmup_steps=0.05
    )
    return model, tokenizer, steps, step


def control_arms(model, tokenizer, settings, train, validation, test, workdir: Path, copilot_layers: int) -> dict:
    """(e) the parameter-matched larger Pilot and (f) the logit ensemble with a small model of the Copilot's size."""
    from peft import LoraConfig

    results = {}
    log(f"{settings.task} seed {settings.seed}: parameter-matched larger Pilot (e), +{copilot_layers} layers")
    torch.manual_seed(settings.seed)
    larger, new_layers = expanded_pilot(settings.model, copilot_layers)
    results["param_matched_parameters"] = sum(p.numel() for p in larger.parameters())
    larger = get_peft_model(
        larger, LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, target_modules="all-linear")
    )
    for name, parameter in larger.named_parameters():
        if any(f".layers.{index}." in name for index in new_layers):
            parameter.requires_grad_(True)  # the added layers train fully, like the Copilot's
    larger, _, _ = plain_sft(
        settings,
        train,
        workdir / "e",
        max_steps=-1,
        model=larger,
        num_train_epochs=settings.epochs,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
    )
    completions, _ = generate_both(
        larger, tokenizer, [r["prompt"] for r in test], settings.max_new_tokens, arms=("fused",)
    )
    results["param_matched"] = correct(completions["fused"], test)  # a plain generate(): this model has no Copilot

    log(f"{settings.task} seed {settings.seed}: small model of the Copilot's size, fine-tuned alone, ensembled (f)")
    torch.manual_seed(settings.seed)
    pretrained = AutoModelForCausalLM.from_pretrained(settings.model)
    num_pilot_layers = pretrained.config.num_hidden_layers
    results["pretrained_pilot_parameters"] = sum(p.numel() for p in pretrained.parameters())
    small = small_model(settings.model, copilot_layer_indices(num_pilot_layers, copilot_layers))
    results["small_parameters"] = sum(p.numel() for p in small.parameters())
    small, _, _ = plain_sft(
        settings,
        train,
        workdir / "f",
        max_steps=-1,
        model=small,
        num_train_epochs=settings.epochs,
        learning_rate=settings.copilot_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
    )
    completions, _ = generate_both(
        small, tokenizer, [r["prompt"] for r in test], settings.max_new_tokens, arms=("fused",)
    )
    results["small_alone"] = correct(completions["fused"], test)
    grid = {}
    with model.disable_adapter():  # the Pilot (a): its LoRA on, the Copilot off
        for weight in LAMBDAS:
            outputs = ensemble_generate(
                model, small, weight, tokenizer, [r["prompt"] for r in validation], settings.max_new_tokens
            )
            grid[weight] = sum(correct(outputs, validation)) / len(validation)
        best = max(LAMBDAS, key=lambda w: (grid[w], -abs(w - 1.0)))
        outputs = ensemble_generate(
            model, small, best, tokenizer, [r["prompt"] for r in test], settings.max_new_tokens
        )
    results["ensemble"] = correct(outputs, test)
    results["ensemble_weight"] = best
    results["ensemble_grid"] = grid
    return results


def run_task(
    pilot_dir: Path, task: str, seeds: list[int], sizes: dict, workdir: Path, arms: set[str], **trainer_overrides
) -> dict:
    """All arms for one Pilot and task over `seeds`; `trainer_overrides` change the joint training (ablations)."""
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    validation, test = splits["validation"].to_list(), splits["test"].to_list()
    runs = {}
    for seed in seeds:
        log(f"{task} seed {seed}: joint training (b)")
        settings = DemoSettings(model=str(pilot_dir), task=task, seed=seed, epochs=sizes["epochs"])
        pilot, tokenizer = load_pilot_with_lora(settings)
        model = get_peft_model(pilot, CopilotConfig())
        trainer, timer = fine_tune(
            model, tokenizer, splits["train"], settings, workdir / f"{task}-{seed}", **trainer_overrides
        )
        model.eval()
        joint_seconds = sum(timer.times)
        adapter_dir = workdir / f"{task}-{seed}-copilot"
        model.save_pretrained(adapter_dir)

        fusion, grid = choose_fusion(model, tokenizer, validation, settings)
        pilot_ok, fused_ok, speed = test_arms(model, tokenizer, test, settings)
        chosen_mode = (fusion.split("/")[0],)
        feed_fusion, feed_grid = choose_fusion(
            model, tokenizer, validation, settings, feed="pilot_error", modes=chosen_mode
        )
        _, feed_ok, _ = test_arms(model, tokenizer, test, settings)
        model.peft_config["default"].inference_feed = "copilot"
        mode, value = fusion.split("/")
        model.peft_config["default"].fusion_mode, model.peft_config["default"].fusion_lambda = mode, float(value)
        skill_test = copilot_skill(model, tokenizer, test[:200])
        skill_train = copilot_skill(model, tokenizer, splits["train"].select(range(200)).to_list())
        calibration = {
            "test": pilot_calibration(model, tokenizer, test[:200]),
            "train": pilot_calibration(model, tokenizer, splits["train"].select(range(200)).to_list()),
        }
        run = {
            "pilot": pilot_ok,
            "joint": fused_ok,
            "joint_fusion": fusion,
            "validation_grid": grid,
            "feed_pilot_error": feed_ok,
            "feed_fusion": feed_fusion,
            "feed_grid": feed_grid,
            "joint_steps": trainer.state.global_step,
            "joint_seconds": joint_seconds,
            "skill_test": skill_test,
            "skill_train": skill_train,
            "pilot_calibration": calibration,
            "tokens_per_second_ratio": speed["fused"] / speed["pilot"],
            "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
            "adapter": str(adapter_dir),
        }
        copilot_layers = model.base_model.copilot_model["default"].config.num_layers
        if seed == seeds[0]:
            costs = cost_model(model)
            runs["costs"] = {
                "copilot_parameters": sum(p.numel() for p in model.base_model.copilot_model.parameters()),
                "pilot_parameters": sum(  # the pretrained Pilot's own weights, not its LoRA
                    p.numel() for n, p in model.base_model.model.named_parameters() if "lora_" not in n
                ),
                "training_flop_share": costs.training_share(pilot_weights_train=False, target_fraction=0.75),
                "inference_flop_share": costs.inference_share(),
            }

        if "ensemble" in arms:
            run.update(
                control_arms(
                    model,
                    tokenizer,
                    settings,
                    splits["train"],
                    validation,
                    test,
                    workdir / f"{task}-{seed}",
                    copilot_layers,
                )
            )

        if "compute" in arms:
            log(f"{task} seed {seed}: compute-matched plain SFT (d), {joint_seconds:.0f} s budget")
            matched, matched_tokenizer, matched_steps, plain_step = compute_matched_sft(
                settings, splits["train"], joint_seconds, workdir / f"{task}-{seed}-d"
            )
            completions, _ = generate_both(
                matched, matched_tokenizer, [r["prompt"] for r in test], settings.max_new_tokens, arms=("fused",)
            )
            # The "fused" arm is a plain generate() here: this model has no Copilot, and the "pilot" arm's
            # disable_adapter() would switch off its LoRA, i.e. score the Pilot before fine-tuning.
            run["compute_matched"] = correct(completions["fused"], test)
            run["compute_matched_steps"] = matched_steps
            run["step_ratio"] = statistics.median(timer.times[2:]) / plain_step
            del matched

        if "phase" in arms:
            log(f"{task} seed {seed}: Copilot-only phase on the final Pilot (c)")
            fine_tune(
                model,
                tokenizer,
                splits["train"],
                settings,
                workdir / f"{task}-{seed}-c",
                num_train_epochs=1.0,
                train_pilot="none",
            )
            model.eval()
            run["phase_fusion"], _ = choose_fusion(model, tokenizer, validation, settings, modes=chosen_mode)
            _, run["copilot_only_phase"], _ = test_arms(model, tokenizer, test, settings)
            run["skill_after_phase"] = copilot_skill(model, tokenizer, test[:200])

        if "current" in arms:
            log(f"{task} seed {seed}: current-batch-only replay (h)")
            current_pilot, _ = load_pilot_with_lora(settings)
            current = get_peft_model(current_pilot, CopilotConfig())
            fine_tune(
                current,
                tokenizer,
                splits["train"],
                settings,
                workdir / f"{task}-{seed}-h",
                mistake_log_sampling="current",
            )
            current.eval()
            run["current_fusion"], _ = choose_fusion(current, tokenizer, validation, settings, modes=chosen_mode)
            run["current_replay_pilot"], run["current_replay"], _ = test_arms(current, tokenizer, test, settings)
            del current
        runs[seed] = run
        del model

    if "transfer" not in arms:
        return runs
    log(f"{task}: transfer to sibling Pilots (g)")
    for index, seed in enumerate(seeds):
        sibling_seed = seeds[(index + 1) % len(seeds)]
        if sibling_seed == seed:
            break
        settings = DemoSettings(model=str(pilot_dir), task=task, seed=sibling_seed, epochs=sizes["epochs"])
        # The sibling: the Pilot fine-tuned (its LoRA) under another seed, as saved with that run's adapter; then the
        # Copilot weights of this seed's run replace the sibling's own Copilot.
        base = AutoModelForCausalLM.from_pretrained(pilot_dir)
        transferred = PeftModel.from_pretrained(base, workdir / f"{task}-{sibling_seed}-copilot")
        own = load_file(workdir / f"{task}-{seed}-copilot" / "adapter_model.safetensors")
        marker = "copilot_model."
        copilot_weights = {key.split(marker, 1)[1]: value for key, value in own.items() if marker in key}
        transferred.base_model.copilot_model["default"].load_state_dict(copilot_weights)
        tokenizer = AutoTokenizer.from_pretrained(pilot_dir)
        mode, value = runs[seed]["joint_fusion"].split("/")
        config = transferred.peft_config["default"]
        config.fusion_mode, config.fusion_lambda = mode, float(value)
        sibling_ok, transfer_ok, _ = test_arms(transferred.eval(), tokenizer, test, settings)
        runs[seed]["transfer_sibling"] = sibling_seed
        runs[seed]["transfer_sibling_pilot"] = sibling_ok
        runs[seed]["transfer"] = transfer_ok
    return runs


def skill_against_pilot_progress(pilot_dir: Path, task: str, sizes: dict, workdir: Path, copilot_steps: int) -> list:
    """Why the Copilot gains or not: train a fresh Copilot alone (`train_pilot="none"`, the same number of steps) on
    the frozen Pilot at several points of its fine-tuning, and measure the Copilot's held-out skill beside the
    Pilot's token accuracy and calibration. No accuracy claim is made from this (λ is not chosen here)."""
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    test, train = splits["test"].to_list()[:200], splits["train"]
    settings = DemoSettings(model=str(pilot_dir), task=task, seed=0, epochs=sizes["epochs"])
    total = int(sizes["epochs"] * len(train) / settings.batch_size)
    rows = []
    for fraction in (0.0, 0.1, 0.3, 1.0):
        steps = int(round(fraction * total))
        log(f"{task}: Copilot skill on a Pilot fine-tuned for {steps} of {total} steps")
        if steps:
            pilot, tokenizer, _ = plain_sft(
                settings,
                train,
                workdir / f"progress-{steps}",
                max_steps=steps,
                lr_scheduler_type="cosine",
                warmup_steps=0.05,
            )
        else:
            pilot, tokenizer = load_pilot_with_lora(settings)
        row = {"pilot_steps": steps, "pilot_total_steps": total, "copilot_steps": copilot_steps}
        for loss in COPILOT_LOSSES:
            torch.manual_seed(0)
            model = get_peft_model(copy.deepcopy(pilot), CopilotConfig())
            fine_tune(
                model,
                tokenizer,
                train,
                settings,
                workdir / f"progress-{steps}-{loss}",
                train_pilot="none",
                max_steps=copilot_steps,
                copilot_loss=loss,
            )
            model.eval()
            row[f"skill_test_{loss}"] = copilot_skill(model, tokenizer, test)
            row[f"skill_train_{loss}"] = copilot_skill(model, tokenizer, train.select(range(200)).to_list())
        row.update({f"pilot_{k}": v for k, v in pilot_calibration(model, tokenizer, test).items()})
        rows.append(row)
    return rows


def progress_table(task: str, rows: list) -> list[str]:
    lines = [
        f"### Why: the Copilot's skill against how far the Pilot is fine-tuned (base Pilot, `{task}`, seed 0)",
        "",
        f"A fresh Copilot trained alone for {rows[0]['copilot_steps']} steps on the frozen Pilot, taken at several "
        "points of a plain LoRA fine-tuning on the same data, with the paper's per-token L2 loss (`rmse`, the "
        "default) and with the squared loss (`mse`). Teacher-forced, on completion tokens; skill on held-out "
        "(training) prompts.",
        "",
        "| Pilot fine-tuning steps | Pilot token accuracy (%) | Pilot calibration error (points) "
        "| Copilot skill, loss `rmse` (%) | Copilot skill, loss `mse` (%) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['pilot_steps']} of {row['pilot_total_steps']} | {100 * row['pilot_token_accuracy']:.1f} | "
            f"{100 * row['pilot_expected_calibration_error']:.1f} | "
            + " | ".join(
                f"{100 * row[f'skill_test_{loss}']:+.1f} ({100 * row[f'skill_train_{loss}']:+.1f})"
                for loss in COPILOT_LOSSES
            )
            + " |"
        )
    lines.append("")
    return lines


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def accuracy_points(items: list[bool]) -> float:
    return 100 * sum(items) / len(items)


def task_table(title: str, runs: dict, seeds: list[str]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| arm | test accuracy (%) | gain vs (a), paired (points) | per seed | fixed / broken |",
    ]
    lines.append("|---|---|---|---|---|")

    def row(name, key, reference="pilot"):
        accuracies = [accuracy_points(runs[s][key]) for s in seeds if key in runs[s]]
        if not accuracies:
            return
        gains = [paired_gain(runs[s][reference], runs[s][key])["gain_points"] for s in seeds if key in runs[s]]
        fixed = sum(paired_gain(runs[s][reference], runs[s][key])["fixed_by_copilot"] for s in seeds if key in runs[s])
        broken = sum(
            paired_gain(runs[s][reference], runs[s][key])["broken_by_copilot"] for s in seeds if key in runs[s]
        )
        per_seed = ", ".join(f"{g:+.1f}" for g in gains)
        lines.append(f"| {name} | {mean_std(accuracies)} | {mean_std(gains)} | {per_seed} | {fixed} / {broken} |")

    row("(a) Pilot alone", "pilot")
    row("(b) Pilot + Copilot, joint (Algorithm 1)", "joint")
    row("(b′) same, inference feed onehot(ŷ) − p̂", "feed_pilot_error")
    row("(c) + Copilot-only phase on the final Pilot", "copilot_only_phase")
    row("(d) compute-matched Pilot (plain SFT, same wall time)", "compute_matched")
    row("(e) parameter-matched larger Pilot (+ Copilot-sized layers)", "param_matched")
    row("(f) logit ensemble: Pilot + separately fine-tuned small model", "ensemble")
    row("    the small model of (f) alone", "small_alone")
    row("(h) joint, current-batch-only replay", "current_replay", reference="current_replay_pilot")
    transfer_seeds = [s for s in seeds if "transfer" in runs[s]]
    if transfer_seeds:
        accuracies = [accuracy_points(runs[s]["transfer"]) for s in transfer_seeds]
        gains = [
            paired_gain(runs[s]["transfer_sibling_pilot"], runs[s]["transfer"])["gain_points"] for s in transfer_seeds
        ]
        lines.append(
            f"| (g) Copilot on a sibling Pilot (vs that sibling alone) | {mean_std(accuracies)} | {mean_std(gains)} | "
            f"{', '.join(f'{g:+.1f}' for g in gains)} | |"
        )
    lines.append("")
    lines.append(
        "Copilot skill 1 − RMSE(f, ℓ)/RMSE(0, ℓ), teacher-forced: held-out "
        f"{mean_std([100 * runs[s]['skill_test'] for s in seeds])} %, training prompts "
        f"{mean_std([100 * runs[s]['skill_train'] for s in seeds])} %"
        + (
            f", after the Copilot-only phase {mean_std([100 * runs[s]['skill_after_phase'] for s in seeds])} % "
            "(held-out)"
            if all("skill_after_phase" in runs[s] for s in seeds)
            else ""
        )
        + ". λ/mode chosen on validation: "
        + ", ".join(f"seed {s}: {runs[s]['joint_fusion']}" for s in seeds)
        + "; with the onehot(ŷ) − p̂ feed: "
        + ", ".join(f"seed {s}: {runs[s]['feed_fusion']}" for s in seeds)
        + "."
    )
    calibration = [runs[s]["pilot_calibration"] for s in seeds]
    lines.append(
        "The Pilot, teacher-forced on completion tokens: token accuracy "
        f"{mean_std([100 * c['train']['token_accuracy'] for c in calibration])} % on training prompts, "
        f"{mean_std([100 * c['test']['token_accuracy'] for c in calibration])} % held-out; expected calibration error "
        f"{mean_std([100 * c['train']['expected_calibration_error'] for c in calibration])} / "
        f"{mean_std([100 * c['test']['expected_calibration_error'] for c in calibration])} points."
    )
    if all("ensemble_weight" in runs[s] for s in seeds):
        first = runs[seeds[0]]
        lines.append(
            f"Parameters: Copilot {runs['costs']['copilot_parameters'] / 1e3:.0f}k; the larger Pilot (e) adds "
            f"{(first['param_matched_parameters'] - first['pretrained_pilot_parameters']) / 1e3:.0f}k to the Pilot's "
            f"{first['pretrained_pilot_parameters'] / 1e3:.0f}k; the small model "
            f"(f) has {first['small_parameters'] / 1e3:.0f}k. Ensemble weight chosen on validation: "
            + ", ".join(f"seed {s}: {runs[s]['ensemble_weight']}" for s in seeds)
            + "."
        )
    lines.append(
        "Joint training: "
        + ", ".join(f"seed {s}: {runs[s]['joint_steps']} steps in {runs[s]['joint_seconds']:.0f} s" for s in seeds)
        + (
            f"; compute-matched Pilot steps: {', '.join(str(runs[s]['compute_matched_steps']) for s in seeds)}"
            if all("compute_matched_steps" in runs[s] for s in seeds)
            else ""
        )
        + "."
    )
    lines.append("")
    return lines


PILOTS = {"base": PILOT_DIR, "small": HERE / "pilots" / "small"}
ALL_ARMS = ("compute", "ensemble", "phase", "current", "transfer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["sort_then_reverse", "count_then_max"])
    parser.add_argument("--pilots", nargs="+", default=list(PILOTS), choices=list(PILOTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--base-pilot-arms",
        nargs="*",
        default=["compute", "ensemble", "phase", "transfer"],
        choices=ALL_ARMS,
        help="Optional arms run on the base Pilot ('compute' is (d)); (a), (b), (b′) always run.",
    )
    parser.add_argument(
        "--small-pilot-arms",
        nargs="*",
        default=["compute"],
        choices=ALL_ARMS,
        help="Optional arms also run on the small Pilot.",
    )
    parser.add_argument(
        "--mse-ablation-tasks",
        nargs="*",
        default=["count_then_max"],
        help="Tasks on which the base Pilot's arms (a), (b), (b′) are rerun with copilot_loss='mse'.",
    )
    parser.add_argument("--resume", action="store_true", help="Keep the finished blocks of an interrupted run.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tcopilot-results"))
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    sizes = dict(train=4000, validation=100, test=300, epochs=1.0)
    if args.quick:
        sizes = dict(train=300, validation=30, test=60, epochs=1.0)
    missing = [name for name in args.pilots if not (PILOTS[name] / "config.json").exists()]
    if missing:
        sys.exit(
            f"Pilot(s) {missing} not found; rebuild: python -m tcopilot_peft.demo.pretrain --output-dir "
            f"{PILOTS['small']} --hidden-size 96 --layers 3"
        )
    began = time.perf_counter()
    # Finished (Pilot, task) blocks are kept in the workdir as they complete: --resume skips them after a crash.
    partial = args.workdir / "partial.json"
    results = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    results.pop("wall_seconds_so_far", None)
    previous_seconds = results.pop("seconds", 0.0)

    def block(key: str, compute) -> None:
        """Compute one block of results unless a resumed run already has it; save it as soon as it exists."""
        if key in results:
            log(f"{key}: kept from {partial}")
            return
        results[key] = compute()
        partial.write_text(json.dumps({**results, "seconds": previous_seconds + time.perf_counter() - began}))

    def task_block(name: str, task: str, arms: set[str], **overrides):
        workdir = args.workdir / (name if not overrides else "-".join(f"{k}={v}" for k, v in overrides.items()))
        runs = run_task(PILOTS[name], task, args.seeds, sizes, workdir, arms, **overrides)
        return {str(k): v for k, v in runs.items()}

    for name in args.pilots:
        arms = set(args.base_pilot_arms) if name == "base" else set(args.small_pilot_arms)
        for task in args.tasks:
            block(f"{name}/{task}", functools.partial(task_block, name, task, arms))
    for task in args.mse_ablation_tasks:
        block(f"base/{task}/copilot_loss=mse", functools.partial(task_block, "base", task, set(), copilot_loss="mse"))
    block(
        "progress",
        lambda: skill_against_pilot_progress(
            PILOTS[args.pilots[0]], args.tasks[-1], sizes, args.workdir / "progress", 25 if args.quick else 100
        ),
    )
    progress = results["progress"]
    wall = previous_seconds + time.perf_counter() - began
    (args.output.with_suffix(".json")).write_text(json.dumps(results, indent=1, default=str))
    lines = ["# Results: does the Copilot help, when, and at what cost?", ""]
    lines += [
        f"Generated by `{' '.join(['python benchmarks/run_results.py', *sys.argv[1:]])}` "
        f"in {wall / 60:.0f} minutes of compute"
        + (" (an interrupted run, resumed: its finished blocks were kept)" if args.resume else "")
        + " "
        f"on {platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}, tcopilot_peft "
        f"{tcopilot_peft.__version__}. Per-item results are in `{args.output.with_suffix('.json').name}`.",
        "",
        f"Regime: a pretrained Pilot, LoRA r=16, {sizes['train']} distinct training examples, "
        f"{sizes['epochs']:g} epochs; {sizes['validation']} validation and {sizes['test']} test items per task; "
        f"seeds {args.seeds}. λ ∈ {list(LAMBDAS)} × mode ∈ {list(MODES)} chosen on validation. Pilots: "
        + "; ".join(
            f"{name} ({_parameters(PILOTS[name]) / 1e3:.0f}k parameters, `{PILOTS[name].relative_to(HERE.parent)}`)"
            for name in args.pilots
        )
        + ".",
        "",
    ]
    for key, runs in results.items():
        if "/" in key:
            name, task, *ablation = key.split("/")
            title = f"{name} Pilot, task `{task}`" + (f", ablation `{ablation[0]}`" if ablation else "")
            lines += task_table(title, runs, [str(s) for s in args.seeds])
    lines += progress_table(args.tasks[-1], progress)
    lines += ["### Cost", "", "| measure | " + " | ".join(f"{name} Pilot" for name in args.pilots) + " |"]
    lines.append("|---|" + "---|" * len(args.pilots))

    def cost_row(label, value):
        cells = []
        for name in args.pilots:
            costs = results[f"{name}/{args.tasks[0]}"]["costs"]
            runs = [
                results[f"{name}/{t}"][str(s)]
                for t in args.tasks
                for s in args.seeds
                if "step_ratio" in results[f"{name}/{t}"][str(s)]
            ]
            cells.append(value(costs, runs))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    cost_row(
        "Copilot parameters (share of the Pilot)",
        lambda c, r: f"{c['copilot_parameters'] / 1e3:.0f}k ({c['copilot_parameters'] / c['pilot_parameters']:.0%})",
    )
    cost_row(
        "Copilot FLOP share, training / generation",
        lambda c, r: f"{c['training_flop_share']:.0%} / {c['inference_flop_share']:.0%}",
    )
    cost_row(
        "training step time, CopilotSFTTrainer / SFTTrainer", lambda c, r: f"{mean_std([x['step_ratio'] for x in r])}×"
    )
    cost_row(
        "generation tokens/s, fused / Pilot (batch 64, greedy)",
        lambda c, r: f"{mean_std([x['tokens_per_second_ratio'] for x in r])}×",
    )
    cost_row(
        "Mistake Log bytes per token",
        lambda c, r: f"{statistics.mean(x['mistake_log_bytes_per_token'] for x in r):.0f}",
    )
    lines.append("")
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    sys.stdout.flush()


def _parameters(pilot_dir: Path) -> int:
    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(pilot_dir).parameters())


if __name__ == "__main__":
    main()
