"""Where does the Copilot's gap to the same-size logit ensemble come from? (issue 22, the diagnosis and ablation)

Greedy accuracy per seed swings by ±8 points around an unchanged held-out cross-entropy, so this script ranks designs
by **teacher-forced cross-entropy on completion tokens** first: of the Pilot, of the fused prediction
softmax(log p̂ + λ·f), of (f)'s small model alone and of the logit ensemble softmax(log p̂ + w·log p_S). λ and w are
chosen by validation cross-entropy (the 100 validation items); the table reports the test items, never used to choose.

Regime and Pilots as `run_results.py` (the base Pilot, LoRA r=16, 4000 distinct examples, 3 epochs, the same splits
and seeds). Arms, each on the same data, steps and seed:

  default          `CopilotConfig()` trained jointly (Algorithm 1; the Mistake Log's replay of up to 128 rounds);
  fresh            the same Copilot, from the same initial weights, trained for the same steps on the *frozen final*
                   Pilot of `default` (`train_pilot="none"`): its Mistake Log holds no stale states
                   (`fresh_token_hidden`, `fresh_rotary_token`, `fresh_rotary_token_hidden`: those arms'
                   Copilots, trained so);
  current          `default` trained jointly on the round just logged only (`mistake_log_sampling="current"`: the
                   Pilot's exact p̂ of this step, no replay of older states);
  rotary           + positions (`copilot_positions="rotary"`, the Pilot's rope);
  token            + the token at the Copilot's own position (`copilot_same_position="token"`: X̃_t);
  token_hidden     + X̃_t and the pooled Pilot state h_t (`copilot_same_position="token_hidden"`);
  rotary_token     rotary + token (the prototype of the issue, whose token arm had positions too);
  rotary_token_hidden   rotary + token_hidden;
  token_own        `token` trained with `fused_and_own_ce` (registered here, not in the package): the fused
                   cross-entropy plus the cross-entropy of the Copilot's own prediction softmax(f), so f is also a
                   standalone model, as (f)'s small model is, and logit fusion log p̂ + λ·f can form the ensemble;
  pretrained       `init="pretrained"` from a separately pre-trained smaller decoder (`benchmarks/pilots/small`, the
                   paper's own setting; fewer parameters than the default, reported);
  (f)              the small model of the Copilot's size fine-tuned alone (`controls.fine_tuned_small_model`),
                   alone and in the logit ensemble with the Pilot of `default`.

Each (task, seed, arm) unit is kept in the workdir as soon as it finishes; `--resume` skips finished units.

    python benchmarks/diagnose_copilot.py                      # RESULTS_DIAGNOSIS.md (+ .json, per item)
    python benchmarks/diagnose_copilot.py --resume --seeds 0   # one seed first (a prototype), then all three
    python benchmarks/diagnose_copilot.py --quick --output /tmp/diagnosis.md
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from common import LAMBDAS, grid_weight, mean_std, stamped_log
from controls import ensemble_generate, fine_tuned_small_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import tcopilot_peft
from tcopilot_peft.demo import PILOT_DIR
from tcopilot_peft.demo.pipeline import (
    DemoSettings,
    fine_tune,
    generation_budget,
    load_pilot_with_lora,
    score_arm,
)
from tcopilot_peft.demo.tasks import correct, task_splits
from tcopilot_peft.evaluation.diagnostics import completion_batches
from tcopilot_peft.evaluation.statistics import choose_on_validation, paired_gain
from tcopilot_peft.fusion import (
    IGNORE_INDEX,
    OBJECTIVES,
    Objective,
    fused_cross_entropy,
    fused_cross_entropy_from_head,
    head_logsumexp,
    register_objective,
    shift_targets,
)
from tcopilot_peft.tuner import CopilotConfig


HERE = Path(__file__).resolve().parent
SMALL_PILOT = HERE / "pilots" / "small"
OWN_CE = "fused_and_own_ce"


def fused_and_own_cross_entropy(correction, target_ids, prediction):
    """Per token: the fused cross-entropy plus −log softmax(f)_y, the Copilot's own prediction's cross-entropy."""
    f = correction.float()
    own = torch.logsumexp(f, -1) - f.gather(-1, target_ids.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return fused_cross_entropy(correction, target_ids, prediction) + own


def fused_and_own_cross_entropy_from_head(hidden, head_weight, target_ids, prediction):
    """`fused_and_own_cross_entropy` of f = W·u without building f (the Copilot's training path)."""
    u = hidden.to(head_weight.dtype)
    f_y = (u * head_weight[target_ids.clamp_min(0)]).sum(-1).float()
    own = head_logsumexp(u, head_weight) - f_y
    return fused_cross_entropy_from_head(hidden, head_weight, target_ids, prediction) + own


def register_own_ce() -> None:
    """Register `fused_and_own_ce` for this run (once; at run time, so importing the script changes no registry)."""
    if OWN_CE in OBJECTIVES:
        return
    register_objective(
        Objective(
            name=OWN_CE,
            help="the fused cross-entropy plus the cross-entropy of the Copilot's own prediction softmax(f)",
            per_token=fused_and_own_cross_entropy,
            fusion_mode="logit",
            inference_feed="pilot_error",
            fusion_modes=("logit",),
            diagnostics=("copilot_ce_skill",),
            per_token_from_head=fused_and_own_cross_entropy_from_head,
        )
    )


# The landed layout the arms start from, named so that the package's defaults moving does not move the arms.
LANDED = {"copilot_positions": "none", "copilot_same_position": "none"}
# The joint arms: label → CopilotConfig fields (`LANDED` otherwise).
JOINT_ARMS = {
    "default": LANDED,
    "rotary": {**LANDED, "copilot_positions": "rotary"},
    "token": {**LANDED, "copilot_same_position": "token"},
    "token_hidden": {**LANDED, "copilot_same_position": "token_hidden"},
    "rotary_token": {"copilot_positions": "rotary", "copilot_same_position": "token"},
    "rotary_token_hidden": {"copilot_positions": "rotary", "copilot_same_position": "token_hidden"},
    "token_own": {**LANDED, "copilot_same_position": "token", "copilot_loss": OWN_CE},
    "current": LANDED,
    "pretrained": {**LANDED, "init": "pretrained", "pretrained_model_name_or_path": str(SMALL_PILOT)},
}
# Copilots trained on `default`'s final Pilot, frozen: label → the joint arm whose Copilot they train.
FRESH_ARMS = {
    "fresh": "default",
    "fresh_token_hidden": "token_hidden",
    "fresh_rotary_token": "rotary_token",
    "fresh_rotary_token_hidden": "rotary_token_hidden",
    "fresh_rth_lr3e-3": "rotary_token_hidden",
    "fresh_rth_double": "rotary_token_hidden",
    "fresh_rth_x4": "rotary_token_hidden",
}
# Arms that differ in how the Copilot trains, not in what it is: `CopilotSFTConfig` overrides.
TRAINING = {
    "current": {"mistake_log_sampling": "current"},
    "fresh_rth_lr3e-3": {"copilot_learning_rate": 3e-3},
    "fresh_rth_double": {"copilot_steps_factor": 2.0},
    "fresh_rth_x4": {"copilot_steps_factor": 4.0},
}
# (f) arms: the small model trained for this multiple of the Pilot's steps (as long as the Copilot it is set against).
ENSEMBLE_ARMS = {"ensemble": 1.0, "ensemble_double": 2.0, "ensemble_x4": 4.0}
# The order units run in: what the others read (`default`'s Pilot) first, then by what the issue asks first.
ARMS = (
    *("default", "ensemble", "ensemble_double", "ensemble_x4", "token", "token_hidden", "token_own"),
    *(
        "fresh",
        "fresh_token_hidden",
        "fresh_rotary_token",
        "fresh_rotary_token_hidden",
        "fresh_rth_lr3e-3",
        "fresh_rth_double",
        "fresh_rth_x4",
        "current",
        "rotary_token",
        "rotary_token_hidden",
        "rotary",
        "pretrained",
    ),
)
LABELS = {
    "default": "default (feed only, position-free; Mistake Log replay)",
    "ensemble": "(f) logit ensemble with the small model",
    "ensemble_double": "(f), its small model trained for twice the Pilot's steps",
    "ensemble_x4": "(f), its small model trained for four times the Pilot's steps",
    "fresh": "default trained on the frozen final Pilot's fresh states",
    "fresh_token_hidden": "+ X̃_t and h_t, trained on the frozen final Pilot",
    "fresh_rotary_token": "+ rotary positions + X̃_t, trained on the frozen final Pilot",
    "fresh_rotary_token_hidden": "+ rotary positions + X̃_t and h_t, trained on the frozen final Pilot",
    "fresh_rth_lr3e-3": "the same, Copilot learning rate 3e-3 (default 1e-3)",
    "fresh_rth_double": "the same, trained for twice the Pilot's steps",
    "fresh_rth_x4": "the same, trained for four times the Pilot's steps",
    "rotary": "+ rotary positions",
    "token": "+ token X̃_t at its own position",
    "token_hidden": "+ X̃_t and pooled h_t at its own position",
    "rotary_token": "+ rotary positions + X̃_t",
    "rotary_token_hidden": "+ rotary positions + X̃_t and h_t",
    "token_own": "+ X̃_t, trained also on its own prediction's cross-entropy",
    "current": "default trained on the round just logged only (no replay)",
    "pretrained": "init from a separately pre-trained small decoder",
}
BATCH = 32

log = stamped_log("diagnosis")


# ---------------------------------------------------------------------- teacher-forced per-token predictions


@torch.no_grad()
def completion_tokens(forward, tokenizer, rows: list[dict]) -> dict[str, torch.Tensor]:
    """Per completion token of `rows`: what `forward(batch, labels)` returns (a dict of [tokens, V] tensors read at
    the completion positions), the gold token and the item it belongs to."""
    gathered: dict[str, list[torch.Tensor]] = {"gold": [], "item": []}
    for index, (batch, labels) in enumerate(completion_batches(tokenizer, rows, BATCH)):
        targets = shift_targets(labels)
        valid = targets != IGNORE_INDEX
        for name, values in forward(batch, labels).items():
            gathered.setdefault(name, []).append(values[valid].float())
        gathered["gold"].append(targets[valid])
        items = torch.arange(index * BATCH, index * BATCH + len(labels))[:, None].expand_as(valid)
        gathered["item"].append(items[valid])
    return {name: torch.cat(values) for name, values in gathered.items()}


def copilot_forward(model):
    def forward(batch, labels):
        out = model(**batch, labels=labels)
        return {"pilot": out.pilot_logits.log_softmax(-1), "correction": out.copilot_logits}

    return forward


def small_forward(small):
    def forward(batch, labels):
        return {"small": small(**batch).logits.log_softmax(-1)}

    return forward


def item_cross_entropy(log_probs: torch.Tensor, tokens: dict, items: int) -> list[float]:
    """Per item: the summed cross-entropy of its completion tokens (divide by `token_counts` for a mean)."""
    nll = -log_probs.log_softmax(-1).gather(-1, tokens["gold"][:, None]).squeeze(-1)
    return torch.zeros(items).index_add_(0, tokens["item"], nll).tolist()


def token_counts(tokens: dict, items: int) -> list[int]:
    return torch.bincount(tokens["item"], minlength=items).tolist()


def fused_scores(tokens: dict, items: int) -> dict:
    """Per-item summed CE of the Pilot and of the fused prediction at each λ of the grid (and λ = 1, trained for)."""
    grid = sorted({*LAMBDAS, 1.0})
    return {
        "tokens": token_counts(tokens, items),
        "pilot": item_cross_entropy(tokens["pilot"], tokens, items),
        "fused": {str(v): item_cross_entropy(tokens["pilot"] + v * tokens["correction"], tokens, items) for v in grid},
    }


def ensemble_scores(pilot_tokens: dict, small_tokens: dict, items: int) -> dict:
    """Per-item summed CE of the small model alone and of the logit ensemble at each weight w of the grid."""
    both = {**pilot_tokens, "small": small_tokens["small"]}
    return {
        "small": item_cross_entropy(both["small"], both, items),
        "fused": {str(w): item_cross_entropy(both["pilot"] + w * both["small"], both, items) for w in LAMBDAS},
    }


# ---------------------------------------------------------------------- arms


def settings_for(task: str, seed: int, epochs: float) -> DemoSettings:
    return DemoSettings(model=str(PILOT_DIR), task=task, seed=seed, epochs=epochs)


def new_copilot_model(settings: DemoSettings, copilot: dict):
    """The LoRA Pilot with a new Copilot, seeded as `run_results.joint_arm` seeds it."""
    torch.manual_seed(settings.seed)
    pilot, tokenizer = load_pilot_with_lora(settings)
    return get_peft_model(pilot, CopilotConfig(**copilot)), tokenizer


def scored(model, tokenizer, splits: dict) -> dict:
    model.eval()
    return {
        name: fused_scores(completion_tokens(copilot_forward(model), tokenizer, rows), len(rows))
        for name, rows in splits.items()
    }


def joint_unit(settings: DemoSettings, splits: dict, train, workdir: Path, arm: str) -> dict:
    """One joint arm: Algorithm 1 with `CopilotConfig(**JOINT_ARMS[arm])`, scored teacher-forced."""
    model, tokenizer = new_copilot_model(settings, JOINT_ARMS[arm])
    began = time.perf_counter()
    options = {"copilot_schedule": "joint", **TRAINING.get(arm, {})}
    trainer, _ = fine_tune(model, tokenizer, train, settings, workdir / arm, **options)
    seconds = time.perf_counter() - began
    # Kept for a later accuracy pass; `default`'s is also the Pilot the `fresh` arms and `ensemble` read.
    model.save_pretrained(workdir / arm / "adapter")
    copilot = model.base_model.copilot_model[model.active_adapter]
    return {
        **scored(model, tokenizer, splits),
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "copilot_parameters": sum(p.numel() for p in copilot.parameters()),
    }


def load_trained_lora(model, adapter: Path) -> None:
    """Copy the Pilot's LoRA weights of a saved adapter into `model` (whose Copilot may be configured otherwise)."""
    saved = {k: v for k, v in load_file(adapter / "adapter_model.safetensors").items() if ".lora_" in k}
    state = model.state_dict()
    # The saved keys omit the LoRA adapter's name: `….lora_A.weight` is `….lora_A.<name>.weight` in the model.
    named = {re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", k): k for k in state if ".lora_" in k}
    if set(named) != set(saved):
        raise ValueError(f"{adapter}: its LoRA weights do not match the Pilot's LoRA layers.")
    model.load_state_dict({named[k]: v for k, v in saved.items()}, strict=False)


def fresh_unit(settings: DemoSettings, splits: dict, train, workdir: Path, arm: str) -> dict:
    """The Copilot of `FRESH_ARMS[arm]` from its initial weights, trained for the Pilot's steps (times the arm's
    `copilot_steps_factor`) on `default`'s final Pilot, frozen (`train_pilot="none"`), with the arm's `TRAINING`
    overrides."""
    model, tokenizer = new_copilot_model(settings, JOINT_ARMS[FRESH_ARMS[arm]])
    load_trained_lora(model, workdir / "default" / "adapter")
    began = time.perf_counter()
    options = {"train_pilot": "none", **TRAINING.get(arm, {})}
    trainer, _ = fine_tune(model, tokenizer, train, settings, workdir / arm, **options)
    seconds = time.perf_counter() - began
    model.save_pretrained(workdir / arm / "adapter")  # kept for a later accuracy pass
    return {**scored(model, tokenizer, splits), "steps": trainer.state.global_step, "seconds": seconds}


def small_model_of(arm: str, settings: DemoSettings, train, workdir: Path):
    """The small model of an (f) arm, trained for its `ENSEMBLE_ARMS` multiple of the Pilot's steps."""
    copilot_layers = json.loads((workdir / "default" / "adapter" / "adapter_config.json").read_text())["num_layers"]
    output = workdir / ("f" if arm == "ensemble" else f"f_{arm}")
    return fine_tuned_small_model(settings, train, output, copilot_layers, ENSEMBLE_ARMS[arm])


def ensemble_unit(settings: DemoSettings, splits: dict, train, workdir: Path, arm: str) -> dict:
    """(f): a small model of the Copilot's depth fine-tuned alone (as `run_results.ensemble_arm`), alone and in the
    logit ensemble with `default`'s Pilot."""
    began = time.perf_counter()
    small, tokenizer = small_model_of(arm, settings, train, workdir)
    seconds = time.perf_counter() - began
    base = AutoModelForCausalLM.from_pretrained(PILOT_DIR, dtype=torch.float32)
    pilot = PeftModel.from_pretrained(base, workdir / "default" / "adapter").eval()
    result = {"seconds": seconds, "small_parameters": sum(p.numel() for p in small.parameters())}
    for name, rows in splits.items():
        pilot_tokens = completion_tokens(copilot_forward(pilot), tokenizer, rows)
        small_tokens = completion_tokens(small_forward(small), tokenizer, rows)
        result[name] = ensemble_scores(pilot_tokens, small_tokens, len(rows))
    return result


def run_unit(task: str, seed: int, arm: str, sizes: dict, workdir: Path) -> dict:
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    settings = settings_for(task, seed, sizes["epochs"])
    scoring = {"validation": splits["validation"].to_list(), "test": splits["test"].to_list()}
    unit_dir = workdir / f"{task}-{seed}"
    if arm in FRESH_ARMS:
        return fresh_unit(settings, scoring, splits["train"], unit_dir, arm)
    if arm in ENSEMBLE_ARMS:
        return ensemble_unit(settings, scoring, splits["train"], unit_dir, arm)
    return joint_unit(settings, scoring, splits["train"], unit_dir, arm)


# ---------------------------------------------------------------------- accuracy (`--accuracy`)


def accuracy_unit(task: str, seed: int, arm: str, sizes: dict, workdir: Path) -> dict:
    """Greedy answer accuracy on the test items of a kept arm, λ (w for the ensemble) chosen by validation accuracy,
    beside the same Pilot alone (as `run_results.py` scores it)."""
    splits = task_splits(task, sizes["train"], sizes["validation"], sizes["test"], seed=1000)
    settings = settings_for(task, seed, sizes["epochs"])
    tokenizer = AutoTokenizer.from_pretrained(PILOT_DIR)
    budget = generation_budget(tokenizer, splits["train"])
    rows = {"validation": splits["validation"].to_list(), "test": splits["test"].to_list()}
    unit_dir = workdir / f"{task}-{seed}"
    if arm in ENSEMBLE_ARMS:
        return ensemble_accuracy(arm, settings, splits["train"], rows, unit_dir, tokenizer, budget)
    if not (unit_dir / arm / "adapter").exists():  # a unit run before adapters were kept: the same seed retrains it
        run_unit(task, seed, arm, sizes, workdir)
    base = AutoModelForCausalLM.from_pretrained(PILOT_DIR, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, unit_dir / arm / "adapter").eval()
    config = model.peft_config[model.active_adapter]
    grid = {}
    for value in LAMBDAS:
        config.fusion_lambda = value
        grid[str(value)] = statistics.mean(score_arm(model, tokenizer, rows["validation"], budget, "fused"))
    best = choose_on_validation(grid, grid_weight)
    config.fusion_lambda = float(best)
    return {
        "pilot": score_arm(model, tokenizer, rows["test"], budget, "pilot"),
        "fused": score_arm(model, tokenizer, rows["test"], budget, "fused"),
        "chosen": best,
        "grid": grid,
    }


def ensemble_accuracy(arm: str, settings, train, rows: dict, unit_dir: Path, tokenizer, budget: int) -> dict:
    """(f)'s logit ensemble with `default`'s Pilot, w chosen by validation accuracy."""
    small, _ = small_model_of(arm, settings, train, unit_dir)
    base = AutoModelForCausalLM.from_pretrained(PILOT_DIR, dtype=torch.float32)
    pilot = PeftModel.from_pretrained(base, unit_dir / "default" / "adapter").eval()
    prompts = {name: [r["prompt"] for r in split] for name, split in rows.items()}

    def accuracy(weight: float, split: str) -> list[bool]:
        return correct(ensemble_generate(pilot, small, weight, tokenizer, prompts[split], budget), rows[split])

    with pilot.disable_adapter():  # the Pilot: its LoRA on, the Copilot off
        grid = {str(w): statistics.mean(accuracy(w, "validation")) for w in LAMBDAS}
        best = choose_on_validation(grid, grid_weight)
        fused = accuracy(float(best), "test")
    return {"pilot": score_arm(pilot, tokenizer, rows["test"], budget, "pilot"), "fused": fused, "chosen": best}


def accuracy_table(units: dict) -> list[str]:
    lines = [
        "Greedy answer accuracy on the test items (`--accuracy`), λ and w chosen by validation accuracy:",
        "",
        "| arm | seeds | Pilot alone (%) | arm (%) | paired gain (points) | per seed | λ / w chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        seeds = [s for s in units if arm in units[s]]
        if not seeds:
            continue
        gains = [paired_gain(units[s][arm]["pilot"], units[s][arm]["fused"])["gain_points"] for s in seeds]
        label = LABELS[arm]
        pilot = mean_std([100 * statistics.mean(units[s][arm]["pilot"]) for s in seeds])
        lines.append(
            f"| {label} | {', '.join(seeds)} | {pilot}"
            f" | {mean_std([100 * statistics.mean(units[s][arm]['fused']) for s in seeds])} | {mean_std(gains)} | "
            f"{', '.join(f'{g:+.1f}' for g in gains)} | {', '.join(units[s][arm]['chosen'] for s in seeds)} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------- tables


def mean_ce(sums: list[float], tokens: list[int]) -> float:
    return sum(sums) / sum(tokens)


def chosen(unit: dict, tokens: list[int]) -> str:
    """The λ (or w) with the lowest validation cross-entropy."""
    grid = unit["validation"]["fused"]
    return min(grid, key=lambda v: (mean_ce(grid[v], tokens), float(v)))


def arm_skills(seed_units: dict, arm: str) -> dict:
    """CE skills of one arm in one seed, against the Pilot it corrects: on the test items at λ = 1 and at λ chosen on
    validation, and on the validation items at that λ (what a design is chosen by)."""
    unit = seed_units[arm]
    reference = seed_units["default"] if arm in ENSEMBLE_ARMS else unit
    tokens = {split: reference[split]["tokens"] for split in ("validation", "test")}
    pilot = mean_ce(reference["test"]["pilot"], tokens["test"])
    value = chosen(unit, tokens["validation"])
    skills = {"pilot_ce": pilot, "chosen": value}
    skills["chosen_skill"] = 1 - mean_ce(unit["test"]["fused"][value], tokens["test"]) / pilot
    fused, alone = unit["validation"]["fused"][value], reference["validation"]["pilot"]
    skills["validation_skill"] = 1 - mean_ce(fused, tokens["validation"]) / mean_ce(alone, tokens["validation"])
    if arm in ENSEMBLE_ARMS:
        skills["small_skill"] = 1 - mean_ce(unit["test"]["small"], tokens["test"]) / pilot
    else:
        skills["unit_skill"] = 1 - mean_ce(unit["test"]["fused"]["1.0"], tokens["test"]) / pilot
    return skills


def chosen_item_ce(units: dict, seed: str, arm: str) -> list[float]:
    """Per test item: the arm's mean CE per token at its λ chosen on validation."""
    unit, reference = units[seed][arm], units[seed]["default"]
    sums = unit["test"]["fused"][chosen(unit, reference["validation"]["tokens"])]
    return [s / t for s, t in zip(sums, reference["test"]["tokens"], strict=True)]


def per_item_difference(units: dict, seeds: list[str], arm: str) -> str:
    """Paired per-item difference of test CE (arm at its chosen λ − default at its chosen λ), pooled over seeds: mean
    and a 95 % normal interval, in nats per token ×100."""
    differences = [
        a - b
        for seed in seeds
        for a, b in zip(chosen_item_ce(units, seed, arm), chosen_item_ce(units, seed, "default"), strict=True)
    ]
    mean = statistics.mean(differences)
    half = 1.96 * statistics.stdev(differences) / len(differences) ** 0.5
    return f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]"


def per_seed(skills: list[dict], key: str) -> str:
    return ", ".join(f"{100 * k[key]:.1f}" for k in skills)


def ensemble_rows(units: dict, arm: str) -> list[str]:
    """An (f) arm's rows: the logit ensemble, and its small model alone."""
    seeds = [s for s in units if arm in units[s]]
    if not seeds:
        return []
    skills = [arm_skills(units[s], arm) for s in seeds]
    return [
        f"| {LABELS[arm]} | {', '.join(seeds)} | {mean_std([100 * k['validation_skill'] for k in skills])} | "
        f"{mean_std([100 * k['chosen_skill'] for k in skills])} | {per_seed(skills, 'chosen_skill')} | – | "
        f"w {', '.join(k['chosen'] for k in skills)} | – | "
        f"{statistics.mean(units[s][arm]['seconds'] for s in seeds):.0f} |",
        f"|     its small model alone | {', '.join(seeds)} | – | "
        f"{mean_std([100 * k['small_skill'] for k in skills])} | {per_seed(skills, 'small_skill')} | – | – | – | – |",
    ]


def task_table(task: str, units: dict) -> list[str]:
    """One task's rows: each arm over the seeds it was run on (a prototype arm may have one seed, a confirmed one
    three), its paired difference against `default` on those same seeds."""
    lines = [
        f"### task `{task}` (base Pilot)",
        "",
        "| arm | seeds | validation CE skill (%) | test CE skill at λ chosen on validation (%) | per seed | "
        "at λ = 1 (%) | λ chosen | paired per-item CE vs default (×100 nats/token) | training (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in [a for a in ARMS if a not in ENSEMBLE_ARMS]:
        seeds = [s for s in units if arm in units[s]]
        if not seeds:
            continue
        skills = [arm_skills(units[s], arm) for s in seeds]
        difference = "–" if arm == "default" else per_item_difference(units, seeds, arm)
        lines.append(
            f"| {LABELS[arm]} | {', '.join(seeds)} | {mean_std([100 * k['validation_skill'] for k in skills])} | "
            f"{mean_std([100 * k['chosen_skill'] for k in skills])} | "
            f"{per_seed(skills, 'chosen_skill')} | "
            f"{mean_std([100 * k['unit_skill'] for k in skills])} | {', '.join(k['chosen'] for k in skills)} | "
            f"{difference} | {statistics.mean(units[s][arm]['seconds'] for s in seeds):.0f} |"
        )
    for arm in ENSEMBLE_ARMS:
        lines += ensemble_rows(units, arm)
    pilot = [arm_skills(units[s], "default")["pilot_ce"] for s in units if "default" in units[s]]
    spread = f" ± {statistics.stdev(pilot):.3f}" if len(pilot) > 1 else ""
    lines += ["", f"The Pilot of `default`: test CE {statistics.mean(pilot):.3f}{spread} nats/token.", ""]
    return lines


def render(results: dict, args, sizes: dict, wall: float) -> list[str]:
    lines = [
        "# Diagnosis: where the Copilot's gap to the same-size ensemble comes from (held-out cross-entropy)",
        "",
        "Generated by " + ", then ".join(f"`{c}`" for c in results["commands"]) + " (each unit by the first command "
        f"that names it) in {wall / 60:.0f} minutes of compute on {platform.machine()} "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tcopilot_peft {tcopilot_peft.__version__}. Per-item sums are in `{args.output.with_suffix('.json').name}`.",
        "",
        f"Regime of `RESULTS.md`: the base Pilot, LoRA r=16, {sizes['train']} training examples, {sizes['epochs']:g} "
        f"epochs. Training times are wall-clock on a shared 2-core CPU (other work ran beside some units). "
        f"Teacher-forced cross-entropy on the completion tokens of the {sizes['test']} test items; λ (w for "
        f"the ensemble) ∈ {sorted({*LAMBDAS, 1.0})} chosen by the CE of the {sizes['validation']} validation items. "
        "Skill = 1 − CE / the Pilot's CE on the same tokens. Every arm of a seed corrects the same Pilot: the joint "
        "arms' Pilots train identically (same seed, data and steps; the Copilot does not touch the Pilot's "
        "gradients), and the ensemble, its small model and the `fresh` arms read the Pilot of `default`.",
        "",
    ]
    for task, units in results["units"].items():
        if any("default" in units[s] for s in units):
            lines += task_table(task, units)
        if results.get("accuracy", {}).get(task):
            lines += accuracy_table(results["accuracy"][task])
    return lines


# ---------------------------------------------------------------------- main


def rounded(value):
    """`value` with every float to 6 significant digits (the committed per-item file; the workdir keeps full ones)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A smoke run (small data, one epoch).")
    parser.add_argument("--tasks", nargs="+", default=["count_then_max", "sort_then_reverse"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--accuracy", action="store_true", help="Score greedy accuracy of the named arms' kept units.")
    parser.add_argument("--resume", action="store_true", help="Keep the finished units of an interrupted run.")
    parser.add_argument("--render-only", action="store_true", help="Rewrite the output from the kept units only.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tcopilot-diagnosis"))
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_DIAGNOSIS.md")
    args = parser.parse_args()
    register_own_ce()
    sizes = dict(train=4000, validation=100, test=300, epochs=3.0)
    if args.quick:
        sizes = dict(train=300, validation=30, test=60, epochs=1.0)
    partial = args.workdir / "partial.json"
    if (args.resume or args.render_only) and partial.exists():
        results = json.loads(partial.read_text())
    elif args.render_only:
        sys.exit(f"--render-only needs the kept units of a run, {partial}, which does not exist.")
    else:
        results = {"units": {}, "seconds": 0.0}
    command = " ".join(["python benchmarks/diagnose_copilot.py", *sys.argv[1:]])
    earlier = results.get("commands", []) + ([results.pop("command")] if "command" in results else [])
    results["commands"] = list(dict.fromkeys(earlier + ([] if args.render_only else [command])))
    args.workdir.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.render_only else args.seeds:
        for task in args.tasks:
            for arm in args.arms:
                kind, run = ("accuracy", accuracy_unit) if args.accuracy else ("units", run_unit)
                units = results.setdefault(kind, {}).setdefault(task, {}).setdefault(str(seed), {})
                if arm in units:
                    continue
                log(f"{task} seed {seed}: {arm}{' (accuracy)' if args.accuracy else ''}")
                began = time.perf_counter()
                units[arm] = run(task, seed, arm, sizes, args.workdir)
                results["seconds"] += time.perf_counter() - began
                partial.write_text(json.dumps(results))
    args.output.with_suffix(".json").write_text(json.dumps(rounded(results)))
    lines = render(results, args, sizes, results["seconds"])
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
