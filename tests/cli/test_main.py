"""`tcopilot` itself: the command table, `--help` and `--version` without loading torch, shown defaults."""

import subprocess
import sys

import pytest

import tcopilot_peft
from tcopilot_peft.cli import COMMANDS, main


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    code = "import sys; from tcopilot_peft.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
    code += "    print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', file=sys.stderr)"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_without_loading_torch():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name, (_, summary) in COMMANDS.items():
        assert name in result.stdout and summary.split()[0] in result.stdout
    assert result.stderr.strip() == "torch not loaded"


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tcopilot {tcopilot_peft.__version__}"
    assert result.stderr.strip() == "torch not loaded"


def test_an_unknown_command_is_refused_without_loading_torch():
    result = run_cli("trian")
    assert result.returncode == 2 and "invalid choice: 'trian'" in result.stderr
    assert result.stderr.strip().endswith("torch not loaded")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    parser_help = capsys.readouterr().out
    assert "usage: tcopilot " + command in parser_help
    from tcopilot_peft.cli import build_parser

    subparsers = next(a for a in build_parser(command)._actions if a.dest == "command")
    for action in subparsers.choices[command]._actions:
        assert action.help, f"{command} {action.option_strings} has no help"


def test_the_package_registers_the_peft_method_when_peft_is_imported_after_it():
    code = (
        "import tcopilot_peft, sys\nassert 'peft' not in sys.modules\nfrom peft import PeftType\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING\nprint(PEFT_TYPE_TO_CONFIG_MAPPING['COPILOT'].__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "CopilotConfig"
