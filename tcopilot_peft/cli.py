"""The `tcopilot` command (also `python -m tcopilot_peft`).

Subcommands register themselves from their own modules (`register(subparsers)`), so each feature keeps its
command-line code beside its implementation. Errors a user can fix (a missing path, a bad dataset) are raised as
`UsageError` and printed as one line with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys


class UsageError(Exception):
    """A problem with the command's input that the user can fix; printed as one line, exit status 2."""


# (module, function) pairs; each function takes the subparsers object and adds its own subcommand.
SUBCOMMANDS = (
    ("tcopilot_peft.commands", "register_train"),
    ("tcopilot_peft.commands", "register_generate"),
    ("tcopilot_peft.demo", "register"),
    ("tcopilot_peft.evaluation.cli", "register_eval"),
    ("tcopilot_peft.evaluation.cli", "register_explain"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcopilot", description="Transformer Copilot on the Hugging Face stack: train, generate, evaluate."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name, function_name in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and error.name.startswith("tcopilot_peft"):
                continue  # a subcommand whose module is not part of this build
            raise
        getattr(module, function_name)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
