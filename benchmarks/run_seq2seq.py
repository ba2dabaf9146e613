"""The Copilot on an encoder-decoder Pilot (issue: T5 and FLAN-T5 Pilots): a pretrained FLAN-T5-shaped Pilot
(`benchmarks/pilots/t5`, built offline by `python -m tcopilot_peft.demo.pretrain --architecture t5 --output-dir
benchmarks/pilots/t5 --steps 2000 --layers 3`) fully fine-tuned, as the paper fine-tunes T5 Pilots, on a bundled task.
For every seed, on the same data, steps and seed:

  (a) the Pilot alone (the same fine-tuned model with the Copilot off);
  (b) Pilot + Copilot trained with `CopilotSeq2SeqTrainer` and the package's defaults (the Pilot's steps, then as
      many Copilot steps on the finished Pilot, frozen: `copilot_schedule="after_pilot"`); λ chosen on validation;
  (f) a logit ensemble of the Pilot (a) with a small T5 of the Copilot's depth (the Pilot's embeddings and head, its
      encoder and decoder blocks at the indices the Copilot copies) fine-tuned alone; w chosen on validation.
  (h) with `--hidden`, an ablation: (b) with `copilot_same_position="hidden"` (the Pilot's pooled decoder state at
      the Copilot's own position added to its stream); paired against (b).
  (t) with `--token-hidden`, an ablation: (b) with `copilot_same_position="token_hidden"` (the decoder's input token
      at the Copilot's own position, and that pooled state); paired against (b).

An ablation arm trains only its Copilot, for as many steps as (b)'s, on (b)'s finished Pilot (saved in the unit's
workdir as `b/pilot`, loaded, frozen: `train_pilot="none"`), so the two arms correct the same Pilot. A workdir from
before (b)'s Pilot was saved has none: the arm then retrains the whole seeded run (Pilot and Copilot), whose Pilot
may differ from (b)'s; which of the two ran, and whether the Pilot-alone answers equal (b)'s, is recorded and reported.

Greedy decoding; answer-level accuracy; gains paired per item. Writes `benchmarks/RESULTS_T5.md` (and `.json`). Each
(task, seed) unit is kept in the workdir as it finishes; `--resume` keeps the finished ones.

    python benchmarks/run_seq2seq.py --epochs 6 --resume   # the committed RESULTS_T5.md
    python benchmarks/run_seq2seq.py --epochs 6 --resume --hidden   # + the (h) ablation of every seed
    python benchmarks/run_seq2seq.py --epochs 6 --resume --token-hidden   # + the (t) ablation of every seed
    python benchmarks/run_seq2seq.py --quick               # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from common import LAMBDAS, grid_weight, mean_std, seq2seq_rows, stamped_log
from common import training_options as common_training_options
from controls import copilot_layer_indices, seq2seq_ensemble_generate, small_seq2seq
from peft import get_peft_model
from torch import nn
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
)

import tcopilot_peft
from tcopilot_peft import CopilotConfig, CopilotSeq2SeqConfig, CopilotSeq2SeqTrainer
from tcopilot_peft.demo.pipeline import StepTimer
from tcopilot_peft.demo.tasks import correct, task_splits
from tcopilot_peft.evaluation.statistics import choose_on_validation, paired_gain
from tcopilot_peft.generation import generate_greedy


HERE = Path(__file__).resolve().parent
PILOT = HERE / "pilots" / "t5"
log = stamped_log("t5")
# The ablation arms: (b) with another `copilot_same_position`, keyed by that value (which also names the arm's fields
# in the results), with the arm's letter.
ABLATIONS = {"hidden": "h", "token_hidden": "t"}
# Where (b)'s finished Pilot is kept in a unit's workdir, for the ablation arms to reuse.
FINISHED_PILOT = Path("b") / "pilot"


def training_options(seed: int, epochs: float, output_dir: Path, **overrides) -> dict:
    return common_training_options(seed, epochs, output_dir, 32, 1e-3, 10, **overrides)


def score(model, tokenizer, rows: list[dict], budget: int, arm: str) -> list[bool]:
    completions, _ = generate_greedy(model, tokenizer, [r["prompt"] for r in rows], budget, arms=(arm,))
    return correct(completions[arm], rows)


def joint_arm(
    splits, seed: int, epochs: float, workdir: Path, copilot: CopilotConfig | None = None, arm: str = "b"
) -> tuple[dict, nn.Module]:
    """(a) and (b): one training run (the Pilot, then its Copilot); λ on validation; the test split scored with the
    Copilot off and on. (b)'s finished Pilot is kept in the workdir (`FINISHED_PILOT`). `copilot` replaces the default
    Copilot (an ablation arm, `arm` its letter, retrained whole; the Pilot's phase is unchanged)."""
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(PILOT), copilot or CopilotConfig())
    run, _ = trained_run(model, splits, training_options(seed, epochs, workdir / arm))
    if copilot is None:
        model.base_model.model.save_pretrained(workdir / FINISHED_PILOT)
    return run, model


def trained_run(model, splits, options: dict) -> tuple[dict, CopilotSeq2SeqTrainer]:
    """Train `model` (Pilot and Copilot, or as `options` say) with `CopilotSeq2SeqTrainer`, choose λ on validation
    and score the test split with the Copilot off and on."""
    tokenizer = AutoTokenizer.from_pretrained(PILOT)
    timer = StepTimer()
    trainer = CopilotSeq2SeqTrainer(
        model=model,
        args=CopilotSeq2SeqConfig(**options),
        train_dataset=seq2seq_rows(tokenizer, splits["train"]),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model.base_model.model),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    model.eval()
    validation, test, budget = splits["validation"].to_list(), splits["test"].to_list(), splits["budget"]
    config = model.peft_config[model.active_adapter]
    grid = {}
    for value in LAMBDAS:
        config.fusion_lambda = value
        grid[f"lambda/{value}"] = statistics.mean(score(model, tokenizer, validation, budget, "fused"))
    config.fusion_lambda = grid_weight(choose_on_validation(grid, grid_weight))
    completions, speed = generate_greedy(model, tokenizer, [r["prompt"] for r in test], budget)
    run = {
        "pilot": correct(completions["pilot"], test),
        "fused": correct(completions["fused"], test),
        "lambda": config.fusion_lambda,
        "validation_grid": grid,
        "tokens_per_second_ratio": speed["fused"] / speed["pilot"],
        "seconds": sum(timer.times),
        "pilot_steps": trainer.pilot_steps,
        "copilot_steps": trainer.copilot_steps,
        "copilot_parameters": sum(p.numel() for p in model.base_model.copilot_model.parameters()),
        "pilot_parameters": sum(p.numel() for p in model.base_model.model.parameters()),
        "copilot_layers": config.num_layers,
        "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
    }
    return run, trainer


def ablation_arm(splits, seed: int, epochs: float, workdir: Path, same_position: str, b: dict) -> dict:
    """An ablation arm (`ABLATIONS`): (b) with `copilot_same_position=same_position`. Its Copilot alone trains, for
    (b)'s Copilot steps, on (b)'s finished Pilot (frozen), when the workdir keeps it; otherwise the whole seeded run is
    retrained. Which ran, and whether its Pilot-alone answers equal (b)'s (`b`, its run), is recorded."""
    copilot, arm = CopilotConfig(copilot_same_position=same_position), ABLATIONS[same_position]
    finished = workdir / FINISHED_PILOT
    if (finished / "config.json").exists():
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(finished), copilot)
        factor = b["copilot_steps"] / b["pilot_steps"]  # the configured steps are the Pilot's
        options = training_options(seed, epochs, workdir / arm, train_pilot="none", copilot_steps_factor=factor)
        run, _ = trained_run(model, splits, options)
        source = "reused"
    else:
        run, _ = joint_arm(splits, seed, epochs, workdir, copilot, arm)
        source = "retrained"
    return {
        same_position: run["fused"],
        f"{same_position}_lambda": run["lambda"],
        f"{same_position}_same_pilot": run["pilot"] == b["pilot"],
        f"{same_position}_pilot_source": source,
        f"{same_position}_copilot_steps": run["copilot_steps"],
    }


def plain_step_seconds(splits, seed: int, workdir: Path) -> float:
    """Median step time of a plain `Seq2SeqTrainer` on the same Pilot, data and batch (for the overhead ratio)."""
    tokenizer = AutoTokenizer.from_pretrained(PILOT)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_pretrained(PILOT)
    timer = StepTimer()
    options = training_options(seed, 1.0, workdir / "plain", max_steps=10)
    Seq2SeqTrainer(
        model=model,
        args=transformers.Seq2SeqTrainingArguments(**options),
        train_dataset=seq2seq_rows(tokenizer, splits["train"]),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        callbacks=[timer],
    ).train()
    return statistics.median(timer.times[2:])


def ensemble_arm(splits, seed: int, epochs: float, workdir: Path, copilot_model, copilot_layers: int) -> dict:
    """(f): the Pilot (a) (the joint run's, Copilot off) with a small T5 fine-tuned alone for `epochs`; w on
    validation."""
    tokenizer = AutoTokenizer.from_pretrained(PILOT)
    torch.manual_seed(seed)
    pilot_layers = AutoModelForSeq2SeqLM.from_pretrained(PILOT).config.num_decoder_layers
    small = small_seq2seq(PILOT, copilot_layer_indices(pilot_layers, copilot_layers))
    Seq2SeqTrainer(
        model=small,
        args=transformers.Seq2SeqTrainingArguments(**training_options(seed, epochs, workdir / "f")),
        train_dataset=seq2seq_rows(tokenizer, splits["train"]),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=small),
    ).train()
    small.eval()
    validation, test, budget = splits["validation"].to_list(), splits["test"].to_list(), splits["budget"]

    def ensemble(weight: float, prompts: list[str]) -> list[str]:
        return seq2seq_ensemble_generate(copilot_model, small, weight, tokenizer, prompts, budget)

    with copilot_model.disable_adapter():
        prompts = [r["prompt"] for r in validation]
        grid = {f"w/{w}": statistics.mean(correct(ensemble(w, prompts), validation)) for w in LAMBDAS}
        weight = grid_weight(choose_on_validation(grid, grid_weight))
        outputs = ensemble(weight, [r["prompt"] for r in test])
    return {
        "ensemble": correct(outputs, test),
        "ensemble_weight": weight,
        "ensemble_grid": grid,
        "small_parameters": sum(p.numel() for p in small.parameters()),
    }


def run_task(task: str, seeds: list[int], sizes: dict, workdir: Path, runs: dict, save, ablations: list[str]) -> dict:
    """Every seed of `task` not already in `runs` (a resumed run's finished units), then each of the `ablations` arms
    (`ABLATIONS` keys) of each seed not already there; `save()` after each unit."""
    tokenizer = AutoTokenizer.from_pretrained(PILOT)
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    splits["budget"] = max(len(tokenizer(r["completion"]).input_ids) for r in splits["train"]) + 8
    runs["budget"] = splits["budget"]
    for seed in seeds:
        if str(seed) in runs:
            log(f"{task} seed {seed}: kept from the workdir")
            continue
        seed_dir = workdir / f"{task}-{seed}"
        log(f"{task} seed {seed}: (a)/(b) the Pilot, then the Copilot on it")
        run, model = joint_arm(splits, seed, sizes["epochs"], seed_dir)
        run["plain_step_seconds"] = plain_step_seconds(splits, seed, seed_dir)
        log(f"{task} seed {seed}: (f) logit ensemble")
        # Its small model trains for as many steps as (b)'s Copilot learns for.
        epochs = sizes["epochs"] * run["copilot_steps"] / run["pilot_steps"]
        run.update(ensemble_arm(splits, seed, epochs, seed_dir, model, run["copilot_layers"]))
        runs[str(seed)] = run
        save()
    for same_position in ablations:
        for seed in seeds:
            run = runs[str(seed)]
            if same_position not in run:
                log(f"{task} seed {seed}: ({ABLATIONS[same_position]}) copilot_same_position={same_position!r}")
                seed_dir = workdir / f"{task}-{seed}"
                run.update(ablation_arm(splits, seed, sizes["epochs"], seed_dir, same_position, run))
                save()
    return runs


def arm_row(name: str, per_seed: list[dict], arm: str) -> str:
    """One table row: the arm's test accuracy, and its paired gain over the Pilot alone (none for the Pilot)."""
    accuracy = mean_std([100 * statistics.mean(r[arm]) for r in per_seed])
    if arm == "pilot":
        return f"| {name} | {accuracy} | – | – |"
    gains = [paired_gain(r["pilot"], r[arm]) for r in per_seed]
    listed = ", ".join(f"{g['gain_points']:+.1f}" for g in gains)
    fixed, broken = sum(g["fixed_by_copilot"] for g in gains), sum(g["broken_by_copilot"] for g in gains)
    return f"| {name} | {accuracy} | {mean_std([g['gain_points'] for g in gains])} ({listed}) | {fixed} / {broken} |"


def ablation_rows(per_seed: list[dict], same_position: str) -> list[str]:
    """An ablation arm's row, with its paired gain over (b), where every seed has it. Its Pilot per seed: (b)'s reused
    or retrained (runs from before the choice existed retrained)."""
    if not all(same_position in r for r in per_seed):
        return []
    arm = ABLATIONS[same_position]
    versus = [paired_gain(r["fused"], r[same_position])["gain_points"] for r in per_seed]
    listed = ", ".join(f"{g:+.1f}" for g in versus)
    lambdas = [r[f"{same_position}_lambda"] for r in per_seed]
    same = [r[f"{same_position}_same_pilot"] for r in per_seed]
    sources = [r.get(f"{same_position}_pilot_source", "retrained") for r in per_seed]
    return [
        arm_row(f'({arm}) ablation: `copilot_same_position="{same_position}"`', per_seed, same_position),
        f"| ({arm}) − (b), paired | – | {mean_std(versus)} ({listed}) | λ {lambdas}; same Pilot as (b): {same}; "
        f"(b)'s Pilot: {sources} |",
    ]


def task_lines(task: str, per_seed: list[dict]) -> list[str]:
    first = per_seed[0]
    time_ratio = statistics.mean(r["seconds"] / (r["plain_step_seconds"] * r["pilot_steps"]) for r in per_seed)
    return [
        f"## Task `{task}`",
        "",
        "| arm | test accuracy (%) | gain over (a), points: mean ± sd (per seed) | items fixed / broken |",
        "|---|---|---|---|",
        arm_row("(a) Pilot alone", per_seed, "pilot"),
        arm_row("(b) Pilot + Copilot (defaults)", per_seed, "fused"),
        arm_row("(f) logit ensemble with a small T5", per_seed, "ensemble"),
        *(row for same_position in ABLATIONS for row in ablation_rows(per_seed, same_position)),
        "",
        f"λ per seed: {[r['lambda'] for r in per_seed]}; ensemble w: {[r['ensemble_weight'] for r in per_seed]}."
        f" Copilot {first['copilot_parameters'] / 1e3:.0f}k parameters ({first['copilot_layers']} T5 decoder blocks) "
        f"beside a {first['pilot_parameters'] / 1e3:.0f}k-parameter Pilot; the small T5 of (f) has "
        f"{first['small_parameters'] / 1e3:.0f}k.",
        "",
        "| cost | value |",
        "|---|---|",
        "| training time for the Pilot's steps, CopilotSeq2SeqTrainer (both phases) / Seq2SeqTrainer | "
        f"{time_ratio:.2f}× |",
        "| generation tokens/s, fused / Pilot (batch 64, greedy) | "
        f"{statistics.mean(r['tokens_per_second_ratio'] for r in per_seed):.2f}× |",
        f"| Mistake Log bytes per token | {statistics.mean(r['mistake_log_bytes_per_token'] for r in per_seed):.0f} |",
        "",
    ]


def render(results: dict, sizes: dict, seeds: list[int], wall: float, command: str) -> list[str]:
    lines = [
        "# Results: the Copilot on an encoder-decoder (T5-shaped) Pilot",
        "",
        f"Generated by `{command}` in {wall / 60:.0f} minutes of compute on {platform.machine()} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tcopilot_peft {tcopilot_peft.__version__}. Per-item results are in `RESULTS_T5.json`.",
        "",
        f"Regime: the pretrained FLAN-T5-shaped Pilot `{PILOT.name}` (its `pretraining.json` says how it was "
        f"built), fully fine-tuned (as the paper fine-tunes T5 Pilots) on {sizes['train']} distinct examples for "
        f"{sizes['epochs']:g} epochs; {sizes['validation']} validation and {sizes['test']} test items; seeds {seeds}. "
        f"Greedy decoding, answer-level accuracy. λ and w ∈ {list(LAMBDAS)} chosen on validation.",
        "",
    ]
    for task, runs in results.items():
        lines += task_lines(task, [runs[str(s)] for s in seeds])
    return lines


def main() -> None:
    global PILOT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["count_then_max"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--pilot", type=Path, default=HERE / "pilots" / "t5", help="a pretrained T5 Pilot directory")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tcopilot-results-t5"))
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_T5.md")
    parser.add_argument("--resume", action="store_true", help="keep the finished (task, seed) units of the workdir")
    parser.add_argument(
        "--hidden", action="store_true", help="add the (h) ablation arm: copilot_same_position='hidden'"
    )
    parser.add_argument(
        "--token-hidden", action="store_true", help="add the (t) ablation arm: copilot_same_position='token_hidden'"
    )
    args = parser.parse_args()
    PILOT = args.pilot
    if not (PILOT / "config.json").exists():
        sys.exit(f"The T5 Pilot is not at {PILOT}; build it with the command in this script's docstring.")
    sizes = dict(train=4000, validation=100, test=300, epochs=args.epochs)
    if args.quick:
        sizes = dict(train=200, validation=20, test=40, epochs=1.0)
    began = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    partial = args.workdir / "partial.json"
    saved = json.loads(partial.read_text()) if args.resume and partial.exists() else {}
    previous_seconds = saved.pop("seconds", 0.0)
    results = {task: saved.get(task, {}) for task in args.tasks}

    def save() -> None:
        partial.write_text(json.dumps({**results, "seconds": previous_seconds + time.perf_counter() - began}))

    for task in args.tasks:
        ablations = [name for name, wanted in (("hidden", args.hidden), ("token_hidden", args.token_hidden)) if wanted]
        run_task(task, args.seeds, sizes, args.workdir, results[task], save, ablations)
    wall = previous_seconds + time.perf_counter() - began
    command = " ".join(["python benchmarks/run_seq2seq.py", *sys.argv[1:]])
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = render(results, sizes, args.seeds, wall, command)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
