"""The `tcopilot` command (also `python -m tcopilot_peft`).

Subcommands live in their own modules, beside their implementation; `COMMANDS` names each one's module, the function
that adds its parser (`register(subparsers)`) and its one-line summary. Only the module of the command being run is
imported, so `tcopilot --help` and `tcopilot --version` answer at once without loading torch. Errors a user can fix
(a missing path, a bad dataset) are raised as `UsageError` and printed as one line with exit status 2, without a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__


class UsageError(Exception):
    """A problem with the command's input that the user can fix; printed as one line, exit status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, except where there is nothing to show (unset, a plain flag) or
    the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


# name -> ("module:function" that adds the subcommand's parser, the summary `tcopilot --help` lists)
COMMANDS = {
    "train": ("tcopilot_peft.commands:register_train", "fine-tune a Pilot with a Transformer Copilot (Algorithm 1)"),
    "generate": (
        "tcopilot_peft.commands:register_generate",
        "generate with a Pilot and its Copilot, beside the Pilot alone",
    ),
    "demo": ("tcopilot_peft.demo:register", "run Transformer Copilot end to end offline and report whether it helped"),
    "eval": (
        "tcopilot_peft.evaluation.cli:register_eval",
        "accuracy of the Pilot alone and with its Copilot on the paper's benchmarks",
    ),
    "explain": (
        "tcopilot_peft.evaluation.cli:register_explain",
        "draw the Copilot's token-level corrections (the paper's Figures 3 and 4)",
    ),
    "convert": ("tcopilot_peft.gguf_pilot:register_convert", "save a GGUF Pilot as a normal model folder"),
}

# bitsandbytes' CPU backend logs a kernel-download warning when it is imported (PEFT imports it); it concerns only
# 4-bit Pilots, so it is shown only to a command that quantizes.
BITSANDBYTES_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
FOUR_BIT_FLAGS = ("--load-in-4bit", "--load_in_4bit")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `tcopilot` parser: every subcommand listed, only `command`'s options built (its module imported)."""
    parser = argparse.ArgumentParser(
        prog="tcopilot", description="Transformer Copilot on the Hugging Face stack: train, generate, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target, summary) in COMMANDS.items():
        if name != command:
            subparsers.add_parser(name, help=summary, add_help=False)
            continue
        module_name, function_name = target.split(":")
        getattr(importlib.import_module(module_name), function_name)(subparsers)
    return parser


def add_command_parser(subparsers, name: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand's parser with the shared help layout (defaults shown) and its summary from `COMMANDS`."""
    return subparsers.add_parser(
        name, help=COMMANDS[name][1], description=description, formatter_class=HelpFormatter, **kwargs
    )


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word; `tcopilot` itself takes only flags)."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not any(arg.startswith(FOUR_BIT_FLAGS) for arg in argv):
        logging.getLogger(BITSANDBYTES_KERNEL_LOGGER).setLevel(logging.ERROR)
    args = build_parser(chosen_command(argv)).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"tcopilot {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tcopilot {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
