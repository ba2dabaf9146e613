"""`tcopilot demo`: the whole method offline in minutes, from a small pretrained Pilot shipped with the package."""

from __future__ import annotations

import argparse
import os

from ..cli import add_command_parser
from ..commands import add_objective_arguments
from .pretrain import PILOT_DIR


QUICK = dict(train_size=600, validation_size=60, test_size=100, epochs=1.0, overhead_steps=6, lambda_grid=(0.5, 1.0))


def register(subparsers) -> None:
    parser = add_command_parser(
        subparsers,
        "demo",
        description="Fine-tune a small pretrained Pilot with LoRA + Copilot on a bundled reasoning-style task, choose "
        "λ on validation data, and compare Pilot alone vs Pilot + Copilot on held-out prompts (paired). Writes "
        "results.json and demo.png. With --model/--dataset the same pipeline runs on any checkpoint and dataset.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1-minute version (smaller data, one epoch)")
    parser.add_argument("--model", default=str(PILOT_DIR), help="Pilot directory or hub id (default: bundled)")
    parser.add_argument("--dataset", help="prompt/completion or LLM-Adapters JSON/JSONL (default: bundled task)")
    parser.add_argument("--task", default="sort_then_reverse", help="bundled task when no --dataset is given")
    parser.add_argument("--output-dir", default="tcopilot-demo", help="where results.json and demo.png go")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data split, initialisation)")
    parser.add_argument("--copilot-layers", type=int, help="Copilot depth (default: a quarter of the Pilot's)")
    add_objective_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import UsageError
    from .pipeline import DemoSettings, run_demo

    if not os.path.exists(args.model) and (args.model.startswith((".", "/")) or args.model == str(PILOT_DIR)):
        raise UsageError(f"model path not found: {args.model}")
    if args.dataset and not os.path.exists(args.dataset):
        raise UsageError(f"dataset file not found: {args.dataset}")
    settings = DemoSettings(
        model=args.model,
        dataset=args.dataset,
        task=args.task,
        output_dir=args.output_dir,
        seed=args.seed,
        copilot_layers=args.copilot_layers,
        copilot_loss=args.copilot_loss,
        fusion_mode=args.fusion_mode,
        **(QUICK if args.quick else {}),
    )
    try:
        run_demo(settings)
    except ValueError as error:
        raise UsageError(str(error)) from error
    return 0
