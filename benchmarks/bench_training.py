"""Training cost of the Copilot: CopilotSFTTrainer vs plain TRL SFTTrainer, side by side in one process.

Same Pilot (a randomly initialised Llama with LoRA, built from a config), same pre-tokenised data, same seed and
steps for every arm. Two plain arms: TRL's `SFTTrainer` as users run it, and the same loss with the LM head on the
target positions only (`TargetOnlySFTTrainer`), which is what `CopilotSFTTrainer`'s Pilot side does; off a Triton
device TRL projects every position, so only the second ratio isolates the Copilot's cost on a CPU. Two Copilot arms:
a joint step (`copilot_schedule="joint"`, Algorithm 1: Pilot and Copilot both learn), and the default
`copilot_schedule="after_pilot"`, whose run is the Pilot's steps and then four times as many Copilot steps on the
frozen Pilot, run twice: as it is (once the Mistake Log holds an epoch of the frozen Pilot, the Copilot learns from it
alone, `mistake_log_reuse`) and with the Pilot's forward every Copilot step (`mistake_log_reuse=False`), each as its
phases' median steps and the whole run against plain SFT for the same Pilot steps. Prints the median step time of
each arm, the ratios, the Copilot's analytic FLOP share beside them, and the Mistake Log's bytes per token against a
dense |V|-sized 16-bit ℓ.

    python benchmarks/bench_training.py
    python benchmarks/bench_training.py --hidden 512 --layers 12 --vocab 32000 --steps 12
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import peft
import torch
import transformers
import trl
from common import TargetOnlySFTTrainer, common_settings, random_llama, synthetic_dataset
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

import tcopilot_peft
from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tcopilot_peft.costs import cost_model
from tcopilot_peft.demo.pipeline import StepTimer
from tcopilot_peft.mistake_log import SAMPLING_POLICIES, dense_error_bytes_per_token
from tcopilot_peft.toy import char_tokenizer


def build_pilot(args) -> torch.nn.Module:
    pilot = random_llama(args.hidden, args.layers, args.vocab)
    return get_peft_model(pilot, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear"))


def run(trainer_cls, config_cls, model, dataset, settings, **extra) -> tuple[float, object]:
    times, trainer = run_steps(trainer_cls, config_cls, model, dataset, settings, **extra)
    return median_after_warmup(times), trainer


class ReplayMarks(TrainerCallback):
    """Per step: whether the Copilot's step drew from the Mistake Log alone, the Pilot not run."""

    def __init__(self) -> None:
        self.trainer = None
        self.marks: list[bool] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(bool(getattr(self.trainer, "log_replaces_pilot", False)))


def run_steps(trainer_cls, config_cls, model, dataset, settings, **extra) -> tuple[list[float], object]:
    timer, marks = StepTimer(), ReplayMarks()
    trainer = trainer_cls(
        model=model,
        args=config_cls(**settings, **extra),
        train_dataset=dataset,
        processing_class=char_tokenizer(),
        callbacks=[timer, marks],
    )
    marks.trainer = trainer
    trainer.train()
    trainer.replay_marks = marks.marks
    return timer.times, trainer


def after_pilot_run(args, dataset, settings, reuse: bool) -> tuple[float, float, float, float]:
    """The default schedule's run: median Pilot-phase step, median Copilot step with the Pilot's forward, median
    Copilot step from the log alone (nan when none), and the run's total time over the Pilot's steps."""
    model = get_peft_model(build_pilot(args), CopilotConfig(num_layers=args.copilot_layers))
    times, trainer = run_steps(
        CopilotSFTTrainer,
        CopilotSFTConfig,
        model,
        dataset,
        settings,
        copilot_schedule="after_pilot",
        mistake_log_sampling=args.sampling,
        mistake_log_reuse=reuse,
    )
    start = trainer.pilot_steps
    logging = [t for t, replayed in zip(times[start:], trainer.replay_marks[start:]) if not replayed]
    replayed = [t for t, replayed in zip(times[start:], trainer.replay_marks[start:]) if replayed]
    median_replayed = median_after_warmup(replayed) if replayed else float("nan")
    return median_after_warmup(times[:start]), median_after_warmup(logging), median_replayed, sum(times) / start


def median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[min(2, len(times) - 1) :])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--copilot-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampling", default="uniform", choices=SAMPLING_POLICIES)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser.parse_args()


def measure(args) -> tuple[list[tuple[float, ...]], object, CopilotSFTTrainer]:
    """Step times per round (plain, targets-only plain, joint Copilot step; the default schedule's Pilot-phase step,
    Copilot step with the Pilot's forward, Copilot step from the log, and run time per Pilot step; the same run's
    without reuse), and the last round's joint Copilot model and trainer."""
    dataset = synthetic_dataset(args)
    settings = common_settings(args)
    copilot = dict(mistake_log_sampling=args.sampling)
    rounds = []
    for _ in range(2):  # two interleaved rounds, so drift of the machine affects both arms alike
        plain_time, _ = run(SFTTrainer, SFTConfig, build_pilot(args), dataset, settings)
        targets_time, _ = run(TargetOnlySFTTrainer, SFTConfig, build_pilot(args), dataset, settings)
        reused = after_pilot_run(args, dataset, settings, reuse=True)
        not_reused = after_pilot_run(args, dataset, settings, reuse=False)
        model = get_peft_model(build_pilot(args), CopilotConfig(num_layers=args.copilot_layers))
        joint_time, trainer = run(
            CopilotSFTTrainer, CopilotSFTConfig, model, dataset, settings, copilot_schedule="joint", **copilot
        )
        rounds.append((plain_time, targets_time, joint_time, *reused, not_reused[3]))
    return rounds, model, trainer


def main() -> None:
    args = parse_args()
    rounds, model, trainer = measure(args)
    times = tuple(statistics.median(r[i] for r in rounds) for i in range(8))
    plain_time, targets_time, copilot_time = times[:3]

    overhead = copilot_time / targets_time - 1
    target_fraction = (args.length - args.length // 2) / args.length  # the completion tokens carry the loss
    share = cost_model(model).training_share(
        pilot_weights_train=False, target_fraction=target_fraction, dense_errors=args.sampling == "current"
    )
    log_bytes = trainer.mistake_log.bytes_per_token
    dense = dense_error_bytes_per_token(args.vocab)
    print_report(args, trainer, times, share, log_bytes, dense)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "args": vars(args),
                    "plain_step_s": plain_time,
                    "targets_only_plain_step_s": targets_time,
                    "copilot_step_s": copilot_time,
                    "after_pilot_pilot_phase_step_s": times[3],
                    "after_pilot_copilot_step_with_pilot_s": times[4],
                    "after_pilot_copilot_step_from_log_s": times[5],
                    "after_pilot_run_per_pilot_step_s": times[6],
                    "after_pilot_run_per_pilot_step_without_reuse_s": times[7],
                    "overhead": overhead,
                    "flop_share": share,
                    "mistake_log_bytes_per_token": log_bytes,
                    "dense_bytes_per_token": dense,
                    "rounds": rounds,
                },
                handle,
                indent=2,
            )


def print_report(args, trainer, times: tuple[float, ...], share: float, log_bytes: float, dense: int):
    plain_time, targets_time, copilot_time, pilot_phase, with_pilot, from_log, run, run_without_reuse = times
    overhead = copilot_time / targets_time - 1
    target = 1.3 * share + 0.05
    copilot_params = sum(p.numel() for p in trainer.copilot_parameters())
    print(
        f"Pilot: Llama d={args.hidden}, {args.layers} layers, vocab {args.vocab}, LoRA r={args.lora_r}; Copilot "
        f"{args.copilot_layers} layers ({copilot_params / 1e6:.2f}M params); batch {args.batch_size}×{args.length} "
        f"tokens; Mistake Log sampling '{args.sampling}'; {args.steps} steps per arm, 2 interleaved rounds"
    )
    print(
        f"CPU: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"peft {peft.__version__}, "
        f"tcopilot_peft {tcopilot_peft.__version__}\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| plain SFTTrainer step (TRL as is) | {plain_time * 1e3:.0f} ms |")
    print(f"| plain step, LM head on targets only | {targets_time * 1e3:.0f} ms |")
    print(f"| CopilotSFTTrainer joint step (Algorithm 1) | {copilot_time * 1e3:.0f} ms |")
    print(f"| step time ratio vs TRL as is | {copilot_time / plain_time:.2f}× |")
    print(f"| step time ratio vs targets-only plain | {copilot_time / targets_time:.2f}× (overhead {overhead:+.0%}) |")
    print(f"| default schedule: Pilot-phase step / Copilot step with the Pilot's forward / from the log alone | "
          f"{pilot_phase * 1e3:.0f} ms / {with_pilot * 1e3:.0f} ms / {from_log * 1e3:.0f} ms |")  # fmt: skip
    print(
        "| default schedule (4× Copilot steps), whole run vs targets-only plain for the same Pilot steps | "
        f"{run / targets_time:.2f}× ({run_without_reuse / targets_time:.2f}× without `mistake_log_reuse`) |"
    )
    print(f"| Copilot FLOP share of a training token (joint) | {share:.0%} |")
    print(
        f"| target: overhead ≤ 1.3 × share + 5 points | {target:.0%} → {'met' if overhead <= target else 'NOT met'} |"
    )
    print(f"| Mistake Log bytes per token | {log_bytes:.0f} B |")
    print(f"| dense 16-bit ℓ per token | {dense} B |")
    print(f"| Mistake Log / dense | {log_bytes / dense:.2%} (target ≤ 2%) |")


if __name__ == "__main__":
    main()
