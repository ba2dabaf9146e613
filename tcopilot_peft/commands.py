"""`tcopilot train` and `tcopilot generate`, and the model loading they (and `examples/sft_copilot.py`) share."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import shutil
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field

import torch

from .cli import UsageError, add_command_parser
from .fusion import COPILOT_LOSSES
from .generation import generate_arms
from .tuner.config import FUSION_MODES
from .tuner.families import default_lora_targets


GGUF_FILE_HELP = (
    "read the Pilot (and, without --tokenizer, its tokenizer) from this GGUF file in the --model folder or hub repo "
    "(transformers dequantizes it; needs pip install 'tcopilot_peft[gguf]')"
)


def add_objective_arguments(parser: argparse.ArgumentParser) -> None:
    """`--copilot-loss` and `--fusion-mode`, shared by `tcopilot train` and `tcopilot demo`."""
    parser.add_argument(
        "--copilot-loss",
        choices=COPILOT_LOSSES,
        default="fused_ce",
        help="the Copilot's objective: fused_ce (default) or the paper's rmse (with its probability-space fusion)",
    )
    parser.add_argument("--fusion-mode", choices=FUSION_MODES, help="default: the objective's own")


def check_model_path(name_or_path: str, gguf_file: str | None = None) -> None:
    """Refuse a local model path (or GGUF file in it) that does not exist, and a GGUF file without `gguf`."""
    if looks_local(name_or_path) and not os.path.exists(name_or_path):
        raise UsageError(f"model path not found: {name_or_path}")
    if gguf_file is None:
        return
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, gguf_file)):
        raise UsageError(f"GGUF file not found: {os.path.join(name_or_path, gguf_file)}")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("reading a GGUF file needs the gguf package: pip install 'tcopilot_peft[gguf]'")


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """The tokenizer of a local directory or hub id (or of a GGUF file in it), with a pad token."""
    from transformers import AutoTokenizer

    check_model_path(name_or_path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, gguf_file=gguf_file)
    except OSError as error:
        raise UsageError(f"cannot load tokenizer {name_or_path!r}: {str(error).splitlines()[0]}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pilot(
    name_or_path: str,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    lora_r: int = 0,
    lora_alpha: int | None = None,
    lora_dropout: float = 0.05,
    lora_target_modules: list[str] | None = None,
    dtype: str = "auto",
    gguf_file: str | None = None,
):
    """A Pilot (causal LM, or encoder-decoder such as T5) from a local directory or hub id, or from the GGUF file
    `gguf_file` in it (transformers dequantizes it to a plain model), optionally quantized (bitsandbytes) and/or
    with LoRA.

    A quantized Pilot trains only through LoRA (QLoRA), so `load_in_4bit`/`load_in_8bit` with `lora_r=0` gives a
    Pilot that can carry a Copilot for inference or a Copilot-only phase, not Pilot training.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    check_model_path(name_or_path, gguf_file)
    quantization = None
    if load_in_4bit or load_in_8bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=load_in_4bit,
            load_in_8bit=load_in_8bit,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
        )
    try:
        pilot = pilot_class(name_or_path, gguf_file).from_pretrained(
            name_or_path,
            gguf_file=gguf_file,
            quantization_config=quantization,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
        )
    except (OSError, ValueError) as error:  # a missing file, or a GGUF architecture transformers cannot read
        raise UsageError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from error
    if quantization is not None and lora_r:
        pilot = prepare_model_for_kbit_training(pilot, use_gradient_checkpointing=False)
    if lora_r:
        pilot = get_peft_model(
            pilot,
            LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha or 2 * lora_r,
                lora_dropout=lora_dropout,
                target_modules=lora_target_modules or default_lora_targets(pilot),
                task_type="SEQ_2_SEQ_LM" if pilot.config.is_encoder_decoder else "CAUSAL_LM",
            ),
        )
    return pilot


def add_copilot(pilot, config):
    """`get_peft_model(pilot, config)` for a Copilot `config`, on a plain or a LoRA-tuned Pilot.

    PEFT warns "You are trying to modify a model with PEFT for a second time" whenever the model already holds PEFT
    layers. A Copilot on a LoRA-tuned Pilot is meant to keep those layers (its adapter records the LoRA config and
    re-creates it on loading), so for this call the warning says nothing true and is silenced.
    """
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are trying to modify a model with PEFT for a second time")
        return get_peft_model(pilot, config)


def load_copilot_adapter(pilot, adapter: str):
    """`PeftModel.from_pretrained(pilot, adapter)`, with what a user can fix (no such folder, no adapter_config.json,
    a Copilot trained for another Pilot family or shape, an unreadable weights file) as one-line `UsageError`s."""
    from peft import PeftModel

    if not os.path.isdir(adapter):
        raise UsageError(f"adapter directory not found: {adapter}")
    try:
        return PeftModel.from_pretrained(pilot, adapter)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the Copilot adapter {adapter!r}: {str(error).splitlines()[0]}") from error


def pilot_class(name_or_path: str, gguf_file: str | None = None):
    """`AutoModelForSeq2SeqLM` for an encoder-decoder checkpoint (T5), else `AutoModelForCausalLM`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(name_or_path, gguf_file=gguf_file)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}") from error
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(name)


# ---------------------------------------------------------------------- tcopilot train


@dataclass
class TrainArguments:
    """What `tcopilot train` reads besides the Copilot's and the trainer's settings, whose options are generated from
    `CopilotConfig` and `CopilotSFTConfig` (`train_dataclasses`)."""

    _argument_group_name = "model and data"

    model: str = field(metadata={"help": "Pilot: local directory or hub id"})
    dataset: str = field(metadata={"help": "local .json/.jsonl file or a datasets name"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer (default: --model's)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the Pilot (0: train all its weights)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "quantize the Pilot to 4 bits (QLoRA)"})
    gguf_file: str | None = field(default=None, metadata={"help": GGUF_FILE_HELP})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "train into a non-empty --output-dir: its checkpoint-N folders are deleted first (so a later "
            "--resume cannot pick up the old run) and files of the same names are replaced"
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from the last checkpoint-N in --output-dir (the Pilot, the Copilot, their optimisers "
            "and the Mistake Log come back); --max-steps/--epochs count the whole run"
        },
    )


# The command's own defaults where they differ from `CopilotSFTConfig`'s: LoRA's usual learning rate, and a batch
# and length a CPU runs.
TRAIN_DEFAULTS = dict(learning_rate=2e-4, per_device_train_batch_size=4, gradient_accumulation_steps=4, max_length=256)
# Short spellings kept from before the options were generated: option -> (the field it sets, its type).
TRAIN_ALIASES = {"--batch-size": ("per_device_train_batch_size", int), "--epochs": ("num_train_epochs", float)}


def copilot_options() -> type:
    """A dataclass of the `CopilotConfig` fields a user sets, with their help and defaults: PEFT's bookkeeping fields
    and those filled in when the adapter is created are left out, and `copilot_loss` is the trainer's option (which
    sets both). `--num-layers` is also `--copilot-layers` (the spelling before the options were generated)."""
    from peft import PeftConfig

    from .trainer import CopilotSFTConfig
    from .tuner import CopilotConfig

    hints = typing.get_type_hints(CopilotConfig)
    skipped = set(PeftConfig.__dataclass_fields__) | set(CopilotSFTConfig.__dataclass_fields__)
    specs = []
    for spec in dataclasses.fields(CopilotConfig):
        if spec.name in skipped or spec.metadata.get("help", "").startswith("Set on creation"):
            continue
        metadata = dict(
            spec.metadata,
            **({"aliases": ["--copilot-layers", "--copilot_layers"]} if spec.name == "num_layers" else {}),
        )
        specs.append((spec.name, _cli_type(hints[spec.name]), field(default=spec.default, metadata=metadata)))
    return dataclasses.make_dataclass(
        "CopilotOptions", specs, namespace={"_argument_group_name": "Copilot (CopilotConfig)"}
    )


def _cli_type(hint):
    """`X | Y | None` -> `X | None`: the command line takes the first form of a field that accepts several."""
    members = [member for member in typing.get_args(hint) if member is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(members) > 1:
        return members[0] | None
    return hint


def train_dataclasses() -> tuple[type, type, type]:
    """The dataclasses `tcopilot train`'s options come from: `TrainArguments`, the Copilot's, the trainer's."""
    from .trainer import CopilotSFTConfig

    return TrainArguments, copilot_options(), CopilotSFTConfig


def register_train(subparsers) -> None:
    from transformers import HfArgumentParser

    parser = add_command_parser(
        subparsers,
        "train",
        description="Joint Pilot + Copilot supervised fine-tuning on a local JSON/JSONL file or a datasets name, "
        "in TRL prompt/completion, conversational, or LLM-Adapters instruction/output form. Every field of "
        "CopilotConfig and CopilotSFTConfig (TRL's SFTConfig, transformers' TrainingArguments) is an option, "
        "spelt with - or _; --output-dir is required.",
        parents=[HfArgumentParser(train_dataclasses(), add_help=False)],
    )
    for alias, (dest, kind) in TRAIN_ALIASES.items():
        option = "--" + dest.replace("_", "-")
        parser.add_argument(alias, dest=dest, type=kind, default=argparse.SUPPRESS, help=f"the same as {option}")
    parser.set_defaults(handler=run_train, **TRAIN_DEFAULTS)


def parse_train_options(args: argparse.Namespace):
    """`(TrainArguments, CopilotConfig, CopilotSFTConfig)` from the parsed command line, as
    `HfArgumentParser.parse_args_into_dataclasses` builds them."""
    from .tuner import CopilotConfig

    if args.output_dir is None:
        raise UsageError("--output-dir is required")
    script_type, options_type, training_type = train_dataclasses()
    script, options = (
        dtype(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(dtype) if spec.init})
        for dtype in (script_type, options_type)
    )
    given = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(training_type) if spec.init}
    if given["activation_checkpointing"] is None:
        # TRL sets `gradient_checkpointing`, which transformers 5 renamed: pass it under the new name, as
        # `TrainingArguments` itself would after a FutureWarning the user could do nothing about.
        given["activation_checkpointing"], given["gradient_checkpointing"] = given["gradient_checkpointing"], None
    try:  # a `TrainingArguments` or `CopilotConfig` check (their `__post_init__`)
        training = training_type(**given)
        copilot = CopilotConfig(copilot_loss=training.copilot_loss, **dataclasses.asdict(options))
    except ValueError as error:
        raise UsageError(str(error)) from error
    return script, copilot, training


def run_train(args: argparse.Namespace) -> int:
    from .data import load_any_dataset, to_trl_format
    from .trainer import CopilotSFTTrainer

    script, copilot_config, training = parse_train_options(args)
    check_model_path(script.model, script.gguf_file)
    resume_from = training.resume_from_checkpoint or prepare_output_dir(training.output_dir, script)
    try:
        dataset = to_trl_format(load_any_dataset(script.dataset))
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    tokenizer = load_tokenizer(script.tokenizer or script.model, None if script.tokenizer else script.gguf_file)
    pilot = load_pilot(
        script.model, load_in_4bit=script.load_in_4bit, lora_r=script.lora_r, gguf_file=script.gguf_file
    )
    model = add_copilot(pilot, copilot_config)
    if model.base_model.encoder_decoder:
        trainer = seq2seq_trainer(model, tokenizer, dataset, seq2seq_options(args), training.max_length)
    else:
        trainer = CopilotSFTTrainer(model=model, args=training, train_dataset=dataset, processing_class=tokenizer)
    if resume_from:
        print(f"tcopilot train: resuming from {resume_from}", file=sys.stderr)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        where = os.path.join(training.output_dir, f"interrupted-step-{trainer.state.global_step}")
        trainer.save_model(where)
        print(
            f"tcopilot train: interrupted; the Copilot adapter so far is saved in {where} (rerun with --resume to "
            "continue from the last checkpoint-N)",
            file=sys.stderr,
        )
        return 130
    trainer.save_model(training.output_dir)
    print(f"saved the Copilot adapter to {training.output_dir}")
    return 0


def prepare_output_dir(output_dir: str, script: TrainArguments) -> str | None:
    """Refuse to train over a non-empty folder unless `--overwrite` or `--resume` says what to do with it; returns
    the checkpoint to resume from (with `--resume`), else None."""
    from transformers.trainer_utils import get_last_checkpoint

    if script.overwrite and script.resume:
        raise UsageError("--overwrite and --resume exclude each other")
    held = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    if script.resume:
        last = get_last_checkpoint(output_dir) if held else None
        if last is None:
            raise UsageError(f"--resume: {output_dir} holds no checkpoint-N folder to resume from")
        return last
    if held and not script.overwrite:
        raise UsageError(
            f"--output-dir {output_dir} is not empty (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}"
            "); give --overwrite to train over it, or --resume to continue its last checkpoint"
        )
    for name in held:
        if re.fullmatch(r"checkpoint-\d+", name) and os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name))
    return None


def seq2seq_options(args: argparse.Namespace) -> dict:
    """`CopilotSeq2SeqConfig` keyword arguments for an encoder-decoder Pilot: the options set on the command line (or
    by the command's defaults) that it shares with `CopilotSFTConfig`; the rest keep `Seq2SeqTrainingArguments`'
    own defaults (TRL's SFT defaults, such as gradient checkpointing, are not carried over)."""
    from .trainer import CopilotSeq2SeqConfig, CopilotSFTConfig

    sft_defaults = {spec.name: spec.default for spec in dataclasses.fields(CopilotSFTConfig)}
    shared = [spec.name for spec in dataclasses.fields(CopilotSeq2SeqConfig) if spec.init and hasattr(args, spec.name)]
    chosen = {name: getattr(args, name) for name in shared if getattr(args, name) != sft_defaults.get(name)}
    return {"logging_steps": args.logging_steps, **chosen}


def seq2seq_trainer(model, tokenizer, dataset, options: dict, max_length: int):
    """`CopilotSeq2SeqTrainer` on prompt/completion rows: the encoder reads the prompt, the decoder the completion."""
    from transformers import DataCollatorForSeq2Seq

    from .trainer import CopilotSeq2SeqConfig, CopilotSeq2SeqTrainer

    if not {"prompt", "completion"} <= set(dataset.column_names):
        raise UsageError(
            "an encoder-decoder Pilot trains on prompt/completion rows; the dataset has "
            f"{sorted(dataset.column_names)}"
        )

    def tokenize(row: dict) -> dict:
        source = tokenizer(row["prompt"], truncation=True, max_length=max_length)
        target = tokenizer(row["completion"] + tokenizer.eos_token, truncation=True, max_length=max_length)
        return {
            "input_ids": source["input_ids"],
            "attention_mask": source["attention_mask"],
            "labels": target["input_ids"],
        }

    rows = dataset.map(tokenize, remove_columns=dataset.column_names)
    return CopilotSeq2SeqTrainer(
        model=model,
        args=CopilotSeq2SeqConfig(**options),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model.base_model.model),
        processing_class=tokenizer,
    )


# ---------------------------------------------------------------------- tcopilot generate


def register_generate(subparsers) -> None:
    parser = add_command_parser(
        subparsers,
        "generate",
        description="Load a Pilot and a saved Copilot adapter; print, per prompt, the Pilot's and the fused output.",
    )
    parser.add_argument("--model", required=True, help="Pilot: local directory or hub id")
    parser.add_argument("--adapter", required=True, help="a saved Copilot adapter directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--tokenizer", help="tokenizer (defaults to --model)")
    parser.add_argument("--gguf-file", help=GGUF_FILE_HELP)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--num-beams", type=int, default=1, help="beam-search width (1: greedy)")
    parser.add_argument("--fusion-lambda", type=float, help="override the adapter's λ")
    parser.add_argument("--load-in-4bit", action="store_true", help="quantize the Pilot to 4 bits (bitsandbytes)")
    parser.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.adapter):
        raise UsageError(f"adapter directory not found: {args.adapter}")
    tokenizer = load_tokenizer(args.tokenizer or args.model, None if args.tokenizer else args.gguf_file)
    tokenizer.padding_side = "left"
    pilot = load_pilot(args.model, load_in_4bit=args.load_in_4bit, gguf_file=args.gguf_file)
    model = load_copilot_adapter(pilot, args.adapter).eval()
    if args.fusion_lambda is not None:
        model.peft_config[model.active_adapter].fusion_lambda = args.fusion_lambda
    settings = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False)
    completions, _ = generate_arms(model, tokenizer, args.prompt, ("pilot", "fused"), **settings)
    for prompt, alone, fused in zip(args.prompt, completions["pilot"], completions["fused"]):
        print(f"prompt:          {prompt}")
        print(f"Pilot:           {alone}")
        print(f"Pilot + Copilot: {fused}\n")
    return 0
