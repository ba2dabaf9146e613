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
    plain_sft,
)
from tcopilot_peft.demo.tasks import task_splits
from tcopilot_peft.tuner import CopilotConfig


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


def run_task(task: str, seeds: list[int], sizes: dict, workdir: Path) -> dict:
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    validation, test = splits["validation"].to_list(), splits["test"].to_list()
    runs = {}
    for seed in seeds:
        log(f"{task} seed {seed}: joint training (b)")
        settings = DemoSettings(model=str(PILOT_DIR), task=task, seed=seed, epochs=sizes["epochs"])
        pilot, tokenizer = load_pilot_with_lora(settings)
        model = get_peft_model(pilot, CopilotConfig())
        trainer, timer = fine_tune(model, tokenizer, splits["train"], settings, workdir / f"{task}-{seed}")
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
        skill_test = copilot_skill(model, tokenizer, test[:200])
        skill_train = copilot_skill(model, tokenizer, splits["train"].select(range(200)).to_list())

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
        phase_fusion, _ = choose_fusion(model, tokenizer, validation, settings, modes=chosen_mode)
        _, phase_ok, _ = test_arms(model, tokenizer, test, settings)
        skill_phase = copilot_skill(model, tokenizer, test[:200])

        log(f"{task} seed {seed}: current-batch-only replay (h)")
        current_pilot, _ = load_pilot_with_lora(settings)
        current = get_peft_model(current_pilot, CopilotConfig())
        fine_tune(
            current, tokenizer, splits["train"], settings, workdir / f"{task}-{seed}-h", mistake_log_sampling="current"
        )
        current.eval()
        current_fusion, _ = choose_fusion(current, tokenizer, validation, settings, modes=chosen_mode)
        current_pilot_ok, current_ok, _ = test_arms(current, tokenizer, test, settings)

        log(f"{task} seed {seed}: compute-matched plain SFT (d), {joint_seconds:.0f} s budget")
        matched, matched_tokenizer, matched_steps, plain_step = compute_matched_sft(
            settings, splits["train"], joint_seconds, workdir / f"{task}-{seed}-d"
        )
        completions, _ = generate_both(
            matched, matched_tokenizer, [r["prompt"] for r in test], settings.max_new_tokens, arms=("fused",)
        )
        # The "fused" arm is a plain generate() here: this model has no Copilot, and the "pilot" arm's
        # disable_adapter() would switch off its LoRA, i.e. score the Pilot before fine-tuning.
        matched_ok = correct(completions["fused"], test)

        runs[seed] = {
            "pilot": pilot_ok,
            "joint": fused_ok,
            "joint_fusion": fusion,
            "validation_grid": grid,
            "feed_pilot_error": feed_ok,
            "feed_fusion": feed_fusion,
            "feed_grid": feed_grid,
            "copilot_only_phase": phase_ok,
            "phase_fusion": phase_fusion,
            "current_replay_pilot": current_pilot_ok,
            "current_replay": current_ok,
            "current_fusion": current_fusion,
            "compute_matched": matched_ok,
            "compute_matched_steps": matched_steps,
            "joint_steps": trainer.state.global_step,
            "skill_test": skill_test,
            "skill_train": skill_train,
            "skill_after_phase": skill_phase,
            "step_ratio": statistics.median(timer.times[2:]) / plain_step,
            "tokens_per_second_ratio": speed["fused"] / speed["pilot"],
            "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
            "adapter": str(adapter_dir),
        }
        if seed == seeds[0]:
            costs = cost_model(model)
            runs["costs"] = {
                "copilot_parameters": sum(p.numel() for p in model.base_model.copilot_model.parameters()),
                "pilot_parameters": sum(p.numel() for p in model.base_model.model.parameters()),
                "training_flop_share": costs.training_share(pilot_weights_train=False, target_fraction=0.75),
                "inference_flop_share": costs.inference_share(),
            }
        del model, current, matched

    log(f"{task}: transfer to sibling Pilots (g)")
    for index, seed in enumerate(seeds):
        sibling_seed = seeds[(index + 1) % len(seeds)]
        if sibling_seed == seed:
            break
        settings = DemoSettings(model=str(PILOT_DIR), task=task, seed=sibling_seed, epochs=sizes["epochs"])
        # The sibling: the Pilot fine-tuned (its LoRA) under another seed, as saved with that run's adapter; then the
        # Copilot weights of this seed's run replace the sibling's own Copilot.
        base = AutoModelForCausalLM.from_pretrained(PILOT_DIR)
        transferred = PeftModel.from_pretrained(base, workdir / f"{task}-{sibling_seed}-copilot")
        own = load_file(workdir / f"{task}-{seed}-copilot" / "adapter_model.safetensors")
        marker = "copilot_model."
        copilot_weights = {key.split(marker, 1)[1]: value for key, value in own.items() if marker in key}
        transferred.base_model.copilot_model["default"].load_state_dict(copilot_weights)
        tokenizer = AutoTokenizer.from_pretrained(PILOT_DIR)
        mode, value = runs[seed]["joint_fusion"].split("/")
        config = transferred.peft_config["default"]
        config.fusion_mode, config.fusion_lambda = mode, float(value)
        sibling_ok, transfer_ok, _ = test_arms(transferred.eval(), tokenizer, test, settings)
        runs[seed]["transfer_sibling"] = sibling_seed
        runs[seed]["transfer_sibling_pilot"] = sibling_ok
        runs[seed]["transfer"] = transfer_ok
    return runs


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def accuracy_points(items: list[bool]) -> float:
    return 100 * sum(items) / len(items)


def task_table(task: str, runs: dict, seeds: list[int]) -> list[str]:
    lines = [
        f"### Task `{task}`",
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
    skills = [runs[s]["skill_test"] for s in seeds]
    lines.append(
        f"Copilot skill 1 − RMSE(f, ℓ)/RMSE(0, ℓ), teacher-forced: held-out {mean_std([100 * x for x in skills])} %, "
        f"training prompts {mean_std([100 * runs[s]['skill_train'] for s in seeds])} %, after the Copilot-only phase "
        f"{mean_std([100 * runs[s]['skill_after_phase'] for s in seeds])} % (held-out). λ/mode chosen on validation: "
        + ", ".join(f"seed {s}: {runs[s]['joint_fusion']}" for s in seeds)
        + "."
    )
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["sort_then_reverse", "count_then_max"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tcopilot-results"))
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    sizes = dict(train=2000, validation=100, test=300, epochs=2.0)
    if args.quick:
        sizes = dict(train=300, validation=30, test=60, epochs=1.0)
    began = time.perf_counter()
    results = {task: run_task(task, args.seeds, sizes, args.workdir) for task in args.tasks}
    wall = time.perf_counter() - began
    (args.output.with_suffix(".json")).write_text(json.dumps(results, indent=1, default=str))
    lines = ["# Results: does the Copilot help, when, and at what cost?", ""]
    lines += [
        f"Generated by `python benchmarks/run_results.py{' --quick' if args.quick else ''}` "
        f"in {wall / 60:.0f} minutes "
        f"on {platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}, tcopilot_peft "
        f"{tcopilot_peft.__version__}. Per-item results are in `{args.output.with_suffix('.json').name}`.",
        "",
        f"Regime: the bundled pretrained Pilot, LoRA r=16, {sizes['train']} distinct training examples, "
        f"{sizes['epochs']:g} epochs; {sizes['validation']} validation and {sizes['test']} test items per task; "
        f"seeds {args.seeds}. λ ∈ {list(LAMBDAS)} × mode ∈ {list(MODES)} chosen on validation.",
        "",
    ]
    for task in args.tasks:
        lines += task_table(task, results[task], args.seeds)
    costs = results[args.tasks[0]]["costs"]
    runs = [results[t][s] for t in args.tasks for s in args.seeds]
    lines += [
        "### Cost",
        "",
        "| measure | value |",
        "|---|---|",
        f"| Copilot parameters (share of the Pilot) | {costs['copilot_parameters'] / 1e6:.2f}M "
        f"({costs['copilot_parameters'] / costs['pilot_parameters']:.0%}) |",
        f"| Copilot FLOP share, training / generation | {costs['training_flop_share']:.0%} / "
        f"{costs['inference_flop_share']:.0%} |",
        f"| training step time, CopilotSFTTrainer / SFTTrainer | {mean_std([r['step_ratio'] for r in runs])}× |",
        f"| generation tokens/s, fused / Pilot (batch 64, greedy) | "
        f"{mean_std([r['tokens_per_second_ratio'] for r in runs])}× |",
        f"| Mistake Log bytes per token | {statistics.mean(r['mistake_log_bytes_per_token'] for r in runs):.0f} |",
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
