"""`tcopilot eval` and `tcopilot explain`: the command-line faces of `runner` and `explain`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..cli import UsageError, add_command_parser
from ..commands import GGUF_FILE_HELP
from ..tuner.config import FUSION_MODES
from .benchmarks import DataError, LoadedBenchmark, get_benchmark, load_benchmark, resolve_sources


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated step numbers, got {text!r}") from error


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="the Pilot: a local directory or a hub id")
    group.add_argument("--adapter", required=True, help="a saved Copilot adapter directory")
    group.add_argument("--tokenizer", help="tokenizer directory or hub id (default: --model)")
    group.add_argument("--gguf-file", help=GGUF_FILE_HELP)
    group.add_argument("--fusion-lambda", type=float, help="override the adapter's λ (0 reproduces the Pilot)")
    group.add_argument("--fusion-mode", choices=FUSION_MODES, help="override the adapter's fusion space")
    group.add_argument("--load-in-4bit", action="store_true", help="quantize the Pilot to 4 bits (bitsandbytes)")
    group.add_argument("--device", help="torch device (default: cuda when available, else cpu)")


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        action="append",
        required=required,
        metavar="[NAME=]SOURCE",
        help="benchmark rows in the LLM-Adapters format: a .json/.jsonl file, a folder with test.json, a folder of "
        "such folders (every benchmark in it), or a datasets name; NAME picks the benchmark when the source's name "
        "does not say it. Repeat for several.",
    )
    group.add_argument("--benchmarks", help="comma-separated benchmark names: keep only these from --data")
    group.add_argument("--split", default="test", help="split of a datasets name")
    group.add_argument("--limit", type=_positive_int, help="use only the first N rows of each benchmark")
    group.add_argument(
        "--bad-rows",
        choices=["error", "skip"],
        default="error",
        help="malformed rows (missing fields, wrong types) are always reported with their index; 'error' "
        "refuses the benchmark, 'skip' leaves them out",
    )
    group.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per batch")


def register_eval(subparsers) -> None:
    """Add `tcopilot eval`."""
    parser = add_command_parser(
        subparsers,
        "eval",
        description="Evaluate a Pilot and its Copilot with the LLM-Adapters protocol: generate answers (beam search, "
        "4 beams by default) and extract them per benchmark (the last number for GSM8K, SVAMP, MAWPS, AddSub, "
        "MultiArith and SingleEq; the option letter for AQuA; true/false, solutionN, answerN or optionN for the "
        "commonsense sets). Every batch is decoded twice with the same settings, with the Copilot and without it, "
        "so both accuracies come from the same prompts. Per-example results go to OUTPUT/predictions.jsonl; rerunning "
        "the same command resumes from it. The table is printed and written with the settings to OUTPUT/results.json.",
    )
    _add_model_arguments(parser)
    _add_data_arguments(parser, required=True)
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument(
        "--num-beams", type=_positive_int, help="beam-search width (default: 4; for beauty 20, the largest K ranked)"
    )
    decoding.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        help="new tokens per answer (default: 256 for arithmetic, 32 for commonsense, as in LLM-Adapters)",
    )
    parser.add_argument("--output", default="tcopilot-eval", help="results folder")
    parser.add_argument("--restart", action="store_true", help="discard partial results in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_eval)


def register_explain(subparsers) -> None:
    """Add `tcopilot explain`."""
    parser = add_command_parser(
        subparsers,
        "explain",
        description="With --prompt: trace one answer (the fused model's own, or --reference) and draw, at chosen "
        "steps, the Pilot's top candidates, the Copilot's correction to each and the fused result, marking steps "
        "where the chosen token changed (OUTPUT/explain.png, OUTPUT/explain.json). With --data: along every row's "
        "reference answer, summarise how large the corrections are relative to the Pilot's logit range, how often "
        "they flip the argmax, and whether flips help or hurt (OUTPUT/summary.png, OUTPUT/summary.json).",
    )
    _add_model_arguments(parser)
    _add_data_arguments(parser, required=False)
    single = parser.add_argument_group("one prompt")
    single.add_argument("--prompt", help="the prompt to explain (instead of --data)")
    single.add_argument("--alpaca", action="store_true", help="wrap --prompt in the LLM-Adapters instruction template")
    single.add_argument("--reference", help="trace this answer instead of the fused model's own generation")
    single.add_argument("--steps", type=_steps, help="comma-separated answer steps to draw (0-based)")
    single.add_argument("--max-panels", type=_positive_int, default=4, help="rows drawn when --steps is not given")
    single.add_argument("--max-new-tokens", type=_positive_int, default=32, help="length of the generated answer")
    single.add_argument("--num-beams", type=_positive_int, default=1, help="beams for the generated answer")
    parser.add_argument("--top-k", type=_positive_int, default=5, help="Pilot candidates per step")
    parser.add_argument("--output", default="tcopilot-explain", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_explain)


# ---------------------------------------------------------------------- shared steps


def load_model(args: argparse.Namespace):
    """The Pilot with its Copilot adapter, in eval mode on the chosen device, and its tokenizer."""
    import torch

    from ..commands import load_copilot_adapter, load_pilot, load_tokenizer

    if not os.path.isdir(args.adapter):
        raise UsageError(f"adapter directory not found: {args.adapter}")
    tokenizer = load_tokenizer(args.tokenizer or args.model, None if args.tokenizer else args.gguf_file)
    pilot = load_pilot(args.model, load_in_4bit=args.load_in_4bit, gguf_file=args.gguf_file)
    model = load_copilot_adapter(pilot, args.adapter)
    config = model.peft_config[model.active_adapter]
    try:
        if args.fusion_lambda is not None:
            config.fusion_lambda = args.fusion_lambda
        if args.fusion_mode is not None:
            config.fusion_mode = args.fusion_mode
    except ValueError as error:
        raise UsageError(str(error)) from error
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.load_in_4bit:  # a bitsandbytes model is placed when it is loaded
        model.to(device)
    return model.eval(), tokenizer


def load_benchmarks(args: argparse.Namespace) -> list[LoadedBenchmark]:
    """Resolve and validate `--data`; malformed rows are reported on stderr (and skipped or refused)."""
    try:
        sources = resolve_sources(args.data, split=args.split)
        if args.benchmarks:
            wanted = {get_benchmark(name.strip()).name for name in args.benchmarks.split(",") if name.strip()}
            sources = [source for source in sources if source.spec.name in wanted]
            if not sources:
                raise DataError(f"--benchmarks {args.benchmarks} matches none of the --data sources")
        loaded = [load_benchmark(source, on_bad_rows=args.bad_rows, limit=args.limit) for source in sources]
    except DataError as error:
        raise UsageError(str(error)) from error
    for benchmark in loaded:
        for problem in benchmark.problems:
            print(f"{benchmark.source.spec.name}: skipped {problem}", file=sys.stderr)
    return loaded


def _settings(args: argparse.Namespace, model) -> dict[str, object]:
    """What the results depend on besides the data and decoding; a resumed run must match it."""
    config = model.peft_config[model.active_adapter]
    # Local paths are made absolute, so a rerun from another directory still resumes.
    where = lambda name: os.path.abspath(name) if os.path.exists(name) else name  # noqa: E731
    return {
        "model": where(args.model),
        "adapter": where(args.adapter),
        "tokenizer": where(args.tokenizer or args.model),
        "fusion_lambda": config.fusion_lambda,
        "fusion_mode": config.fusion_mode,
        "inference_feed": config.inference_feed,
        "load_in_4bit": args.load_in_4bit,
        **({"gguf_file": args.gguf_file} if args.gguf_file else {}),  # absent before the option existed
    }


# ---------------------------------------------------------------------- handlers


def run_eval(args: argparse.Namespace) -> int:
    from .runner import PREDICTIONS_FILE, RESULTS_FILE, DecodingSettings, ResumeError, run_evaluation

    if args.benchmarks and args.benchmarks.strip().lower() == "beauty":
        return run_recommendation_eval(args)
    args.num_beams = args.num_beams or 4
    benchmarks = load_benchmarks(args)
    model, tokenizer = load_model(args)
    try:
        report = run_evaluation(
            model,
            tokenizer,
            benchmarks,
            output_dir=args.output,
            settings=_settings(args, model),
            decoding=DecodingSettings(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens),
            batch_size=args.batch_size,
            restart=args.restart,
            progress=not args.no_progress,
        )
    except ResumeError as error:
        raise UsageError(str(error)) from error
    except KeyboardInterrupt:
        where = os.path.join(args.output, PREDICTIONS_FILE)
        print(f"tcopilot eval: finished batches are kept in {where}; rerun the command to resume", file=sys.stderr)
        raise
    print(report.table())
    print(f"\nresults: {os.path.join(args.output, RESULTS_FILE)}")
    return 0


def run_recommendation_eval(args: argparse.Namespace) -> int:
    """`tcopilot eval --benchmarks beauty --data OPENP5_FOLDER`: Hit@K and NDCG@K of the Pilot and the fused model."""
    from .recommendation import RESULTS_FILE as RECOMMENDATION_RESULTS
    from .recommendation import (
        evaluate_recommendation,
        format_recommendation_table,
        leave_one_out,
        load_item_ids,
        load_user_sequences,
    )

    if len(args.data) != 1:
        raise UsageError("--benchmarks beauty reads one --data folder (OpenP5's Beauty files)")
    try:
        users, skipped = load_user_sequences(args.data[0], on_bad_rows=args.bad_rows)
        rows = leave_one_out(users)[args.split if args.split in ("validation", "test") else "test"]
        items = sorted(load_item_ids(args.data[0]))
    except DataError as error:
        raise UsageError(str(error)) from error
    for problem in skipped:
        print(f"beauty: skipped {problem}", file=sys.stderr)
    model, tokenizer = load_model(args)
    try:
        result = evaluate_recommendation(
            model,
            tokenizer,
            rows[: args.limit] if args.limit else rows,
            items,
            output_dir=args.output,
            num_beams=args.num_beams or 20,
            batch_size=args.batch_size,
            restart=args.restart,
            progress=not args.no_progress,
        )
    except DataError as error:
        raise UsageError(str(error)) from error
    print(format_recommendation_table(result))
    print(f"\n{result['users']} users; results: {os.path.join(args.output, RECOMMENDATION_RESULTS)}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from ..data import alpaca_prompt
    from .explain import choose_steps, explain_prompt, summarise_rectification, write_json
    from .figures import draw_explanation, draw_summary

    if (args.prompt is None) == (args.data is None):
        raise UsageError("give either --prompt (one answer, Figure 4) or --data (a dataset summary, Figure 3)")
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise UsageError("tcopilot explain draws with matplotlib: pip install 'tcopilot_peft[eval]'") from error
    benchmarks = load_benchmarks(args) if args.data else []
    model, tokenizer = load_model(args)
    os.makedirs(args.output, exist_ok=True)
    if args.prompt is not None:
        prompt = alpaca_prompt(args.prompt) if args.alpaca else args.prompt
        try:
            explanation = explain_prompt(
                model, tokenizer, prompt, args.reference, args.max_new_tokens, args.num_beams, args.top_k
            )
            steps = choose_steps(explanation.steps, args.steps, args.max_panels)
        except ValueError as error:
            raise UsageError(str(error)) from error
        png, data = os.path.join(args.output, "explain.png"), os.path.join(args.output, "explain.json")
        draw_explanation(explanation, steps, png)
        write_json(explanation.to_dict(shown_steps=steps), data)
        print(f"answer traced ({explanation.answer_source}): {explanation.answer!r}")
        print(
            f"steps where the Copilot changed the chosen token: {explanation.changed_steps or 'none'}; drawn: {steps}"
        )
    else:
        try:
            report = summarise_rectification(
                model, tokenizer, benchmarks, args.batch_size, args.top_k, progress=not args.no_progress
            )
        except ValueError as error:
            raise UsageError(str(error)) from error
        png, data = os.path.join(args.output, "summary.png"), os.path.join(args.output, "summary.json")
        draw_summary(report, png)
        summary = report.to_dict()
        write_json(summary, data)
        print(json.dumps(summary["overall"], indent=2))
    print(f"wrote {png} and {data}")
    return 0
