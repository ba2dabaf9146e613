"""Fused (Pilot + Copilot) vs Pilot-alone inference cost, measured side by side in one process.

Prints generation tokens/s at batch 1 and a large batch, forward time, and the Copilot's parameter count and FLOP
share, as a markdown table (and JSON with --json). The Pilot is a randomly initialised Llama built from a config, so
nothing is downloaded; speed does not depend on the weights' values.

    python benchmarks/bench_inference.py                       # defaults: 12-layer d=512 Pilot, 3-layer Copilot
    python benchmarks/bench_inference.py --device cuda --hidden 2048 --layers 16 --vocab 32000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import peft
import torch
import transformers
from common import random_llama, seconds
from peft import get_peft_model

import tcopilot_peft
from tcopilot_peft import CopilotConfig
from tcopilot_peft.costs import cost_model
from tcopilot_peft.tuner.config import FUSION_MODES


def build_models(args):
    pilot = random_llama(args.hidden, args.layers, args.vocab).to(args.device, dtype=getattr(torch, args.dtype))
    pilot.eval()
    model = get_peft_model(pilot, CopilotConfig(num_layers=args.copilot_layers, fusion_mode=args.fusion_mode))
    with torch.no_grad():  # a trained-looking Copilot: non-zero corrections, so fusion is not short-circuited
        model.base_model.copilot_model["default"].output_proj.weight.normal_(std=0.02)
    return model.eval()


def timed_pair(model, fn, repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of `fn` with the Copilot off and on, interleaved so drift affects both alike."""
    pilot_times, fused_times = [], []
    for repeat in range(repeats + 1):  # the first round is a warm-up
        with model.disable_adapter():
            pilot = seconds(fn, device)
        fused = seconds(fn, device)
        if repeat:
            pilot_times.append(pilot)
            fused_times.append(fused)
    return statistics.median(pilot_times), statistics.median(fused_times)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--copilot-layers", type=int, default=3)
    parser.add_argument("--fusion-mode", choices=FUSION_MODES, help="default: the Copilot objective's own")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--forward-batch", type=int, default=8)
    parser.add_argument("--forward-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser.parse_args()


def measure_rows(model, args) -> list[dict]:
    """Pilot-alone and fused times of greedy generation at each batch size, then of one forward pass."""
    generator = torch.Generator().manual_seed(0)
    rows = []

    def measure(label, batch, run):
        with torch.inference_mode():
            pilot_time, fused_time = timed_pair(model, run, args.repeats, args.device)
        rows.append({"what": label, "batch": batch, "pilot_s": pilot_time, "fused_s": fused_time})

    for batch in args.batch_sizes:
        ids = torch.randint(3, args.vocab, (batch, args.prompt_length), generator=generator).to(args.device)
        kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        measure("generate (greedy)", batch, lambda ids=ids, kwargs=kwargs: model.generate(input_ids=ids, **kwargs))
    ids = torch.randint(3, args.vocab, (args.forward_batch, args.forward_length), generator=generator)
    ids = ids.to(args.device)
    measure(f"forward (length {args.forward_length})", args.forward_batch, lambda: model(input_ids=ids))
    return rows


def print_table(rows: list[dict], args) -> None:
    """The Markdown table; adds each row's speed ratio (and tokens/s for generation) to it."""
    print("| what | batch | Pilot alone | Pilot + Copilot | fused / Pilot speed |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = row["pilot_s"] / row["fused_s"]
        row["speed_ratio"] = ratio
        if row["what"].startswith("generate"):
            tokens = row["batch"] * args.new_tokens
            row["pilot_tokens_per_s"], row["fused_tokens_per_s"] = tokens / row["pilot_s"], tokens / row["fused_s"]
            cells = f"{row['pilot_tokens_per_s']:.0f} tok/s | {row['fused_tokens_per_s']:.0f} tok/s"
        else:
            cells = f"{row['pilot_s'] * 1e3:.1f} ms | {row['fused_s'] * 1e3:.1f} ms"
        print(f"| {row['what']} | {row['batch']} | {cells} | {ratio:.2f}× |")


def main() -> None:
    args = parse_args()
    model = build_models(args)
    flop_share = cost_model(model).inference_share()
    copilot_params = sum(p.numel() for p in model.base_model.copilot_model.parameters())
    pilot_params = sum(p.numel() for p in model.base_model.model.parameters())
    rows = measure_rows(model, args)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    fusion_mode = model.peft_config[model.active_adapter].fusion_mode
    print(
        f"Pilot: Llama d={args.hidden}, {args.layers} layers, vocab {args.vocab}, {pilot_params / 1e6:.1f}M params; "
        f"Copilot: {args.copilot_layers} layers, {copilot_params / 1e6:.2f}M params "
        f"({copilot_params / pilot_params:.1%} of the Pilot); fusion '{fusion_mode}'"
    )
    print(f"Copilot FLOP share per generated token: {flop_share:.1%} (ideal fused/Pilot speed {1 - flop_share:.2f}×)")
    print(
        f"Device: {args.device} ({device_name}), {args.dtype}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}, "
        f"tcopilot_peft {tcopilot_peft.__version__}, "
        f"threads {torch.get_num_threads()}\n"
    )
    print_table(rows, args)
    if args.json:
        summary = {
            "args": vars(args),
            "device": device_name,
            "pilot_params": pilot_params,
            "copilot_params": copilot_params,
            "copilot_flop_share": flop_share,
            "rows": rows,
        }
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
