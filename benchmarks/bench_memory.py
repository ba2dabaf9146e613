"""Peak resident memory (CPU RSS) of fused generation against the Pilot's own, and of a long CopilotSFTTrainer run.

Generation: each (Pilot, arm) pair runs in a fresh process that builds the same Pilot + Copilot (a randomly
initialised Llama built from a config, so nothing is downloaded) and generates the same prompts once, with the
Copilot off (`pilot`) or on (`fused`). A thread samples the resident set every millisecond; the table shows the
resident set before `generate`, its peak during it, and the difference, the memory generation itself needs. The
process's lifetime peak (`ru_maxrss`) is printed beside them.

Training: `CopilotSFTTrainer` (LoRA Pilot) for many steps with a Mistake Log byte budget small enough to fill early;
the resident set and the log's bytes every `--sample-every` steps. The log stays within its budget, and the resident
set stops growing once the log is full.

    python benchmarks/bench_memory.py                      # about 2 minutes on 2 CPU cores
    python benchmarks/bench_memory.py --steps 800 --sample-every 50 --json memory.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import subprocess
import sys
import threading
import time

import psutil
import torch
from common import random_llama  # noqa: E402  (benchmarks/ is the script directory)
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tcopilot_peft.toy import char_tokenizer


MIB = 2**20
# (hidden, layers, vocab, Copilot layers: a quarter of the Pilot's)
PILOTS = {"tiny": (256, 8, 16000, 2), "small": (512, 12, 32000, 3)}


def resident() -> int:
    return psutil.Process().memory_info().rss


def lifetime_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class PeakSampler:
    """The highest resident set seen while the `with` block runs (sampled by a thread every millisecond)."""

    def __enter__(self) -> PeakSampler:
        self.peak, self._done = resident(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, resident())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident())


def measure_generation(pilot: str, arm: str, args) -> dict:
    """One generation in this (fresh) process: resident set before, peak during, lifetime peak after."""
    hidden, layers, vocab, copilot_layers = PILOTS[pilot]
    model = get_peft_model(random_llama(hidden, layers, vocab).eval(), CopilotConfig(num_layers=copilot_layers))
    with torch.no_grad():  # non-zero corrections, as from a trained Copilot
        model.base_model.active_network.output_proj.weight.normal_(std=0.02)
    ids = torch.randint(3, vocab, (args.batch_size, args.prompt_length), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    gc.collect()
    before = resident()
    off = model.disable_adapter() if arm == "pilot" else contextlib.nullcontext()
    with torch.inference_mode(), off, PeakSampler() as sampler:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
    return {"pilot": pilot, "arm": arm, "before": before, "peak": sampler.peak, "lifetime_peak": lifetime_peak()}


class MemoryLog(TrainerCallback):
    """Every `every` steps: the resident set and the Mistake Log's bytes."""

    def __init__(self, every: int) -> None:
        self.every, self.trainer, self.samples = every, None, []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            log = self.trainer.mistake_log
            self.samples.append({"step": state.global_step, "rss": resident(), "log_bytes": log.total_bytes})


def measure_training(args) -> dict:
    """A long CopilotSFTTrainer run on a small LoRA Pilot, sampled by `MemoryLog`."""
    hidden, layers, vocab = 128, 4, 4000
    pilot = get_peft_model(random_llama(hidden, layers, vocab), LoraConfig(r=8, target_modules="all-linear"))
    model = get_peft_model(pilot, CopilotConfig(num_layers=1))
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.steps * args.train_batch_size):
        ids = torch.randint(4, vocab, (args.train_length,), generator=generator).tolist()
        half = args.train_length // 2
        rows.append({"input_ids": ids, "completion_mask": [0] * half + [1] * (args.train_length - half)})
    memory = MemoryLog(args.sample_every)
    trainer = CopilotSFTTrainer(
        model=model,
        args=CopilotSFTConfig(
            output_dir="/tmp/tcopilot-bench-memory", max_steps=args.steps, per_device_train_batch_size=
            args.train_batch_size, learning_rate=1e-4, save_strategy="no", report_to=[], disable_tqdm=True,
            dataloader_pin_memory=False, logging_steps=10**6, seed=0, max_length=None,
            mistake_log_max_bytes=args.log_budget_mib * MIB,
        ),
        train_dataset=Dataset.from_list(rows), processing_class=char_tokenizer(), callbacks=[memory],
    )  # fmt: skip
    memory.trainer = trainer
    trainer.train()
    return {"samples": memory.samples, "budget": trainer.mistake_log.max_bytes, "lifetime_peak": lifetime_peak()}


def in_fresh_process(args, *what: str) -> dict:
    """Run this script's `--child` mode in a new Python process and return what it printed (JSON)."""
    command = [sys.executable, __file__, *sys.argv[1:], "--child", *what]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def print_generation(rows: list[dict], args) -> None:
    print(
        f"Generation: batch {args.batch_size}, prompt {args.prompt_length} tokens, {args.new_tokens} new tokens, "
        "greedy; default Copilot (logit fusion, pilot_error feed), a quarter of the Pilot's layers\n"
    )
    print("| Pilot | arm | RSS before | peak during generate | generate's own | lifetime peak (ru_maxrss) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        hidden, layers, vocab, _ = PILOTS[row["pilot"]]
        cells = [row["before"], row["peak"], row["peak"] - row["before"], row["lifetime_peak"]]
        sizes = " | ".join(f"{value / MIB:.0f} MiB" for value in cells)
        print(f"| {row['pilot']} (d={hidden}, {layers} layers, vocab {vocab}) | {row['arm']} | {sizes} |")
    for pilot in PILOTS:
        own = {row["arm"]: row["peak"] - row["before"] for row in rows if row["pilot"] == pilot}
        print(f"\n{pilot}: generate's own memory, fused − Pilot: {(own['fused'] - own['pilot']) / MIB:+.1f} MiB")


def print_training(result: dict, args) -> None:
    samples, budget = result["samples"], result["budget"]
    print(
        f"\nTraining: CopilotSFTTrainer, Llama d=128, 4 layers, vocab 4000, LoRA r=8, 1-layer Copilot; batch "
        f"{args.train_batch_size}×{args.train_length} tokens, {args.steps} steps; Mistake Log budget "
        f"{budget / MIB:.0f} MiB\n"
    )
    print("| step | RSS | Mistake Log |")
    print("|---|---|---|")
    for sample in samples:
        print(f"| {sample['step']} | {sample['rss'] / MIB:.0f} MiB | {sample['log_bytes'] / MIB:.2f} MiB |")
    full = next((i for i, s in enumerate(samples) if s["log_bytes"] > 0.9 * budget), None)
    largest = max(s["log_bytes"] for s in samples)
    print(f"\nMistake Log at most {largest / MIB:.2f} MiB of its {budget / MIB:.0f} MiB budget at every sample")
    if full is None:
        print("The log never filled: raise --steps or lower --log-budget-mib to see the plateau.")
        return
    after = [s["rss"] for s in samples[full:]]
    first, last = samples[full]["step"], samples[-1]["step"]
    print(
        f"RSS once the log is full (steps {first}–{last}): {min(after) / MIB:.0f}–{max(after) / MIB:.0f} MiB; "
        f"last sample − first: {(after[-1] - after[0]) / MIB:+.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--sample-every", type=int, default=20, help="training steps between RSS samples")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=64)
    parser.add_argument("--log-budget-mib", type=int, default=16, help="the Mistake Log's byte budget, MiB")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args()
    if args.child:
        result = measure_training(args) if args.child[0] == "training" else measure_generation(*args.child, args)
        print(json.dumps(result))
        return

    began = time.perf_counter()
    print(f"CPU: {psutil.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    generation = [in_fresh_process(args, pilot, arm) for pilot in PILOTS for arm in ("pilot", "fused")]
    print_generation(generation, args)
    training = in_fresh_process(args, "training")
    print_training(training, args)
    print(f"\n({time.perf_counter() - began:.0f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "generation": generation, "training": training}, handle, indent=2)


if __name__ == "__main__":
    main()
