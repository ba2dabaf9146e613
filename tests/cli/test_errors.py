"""Errors a user makes get one line naming the file, field or line, never a traceback (run as a user runs them)."""

import os
import subprocess
import sys

import pytest
from peft import get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.cli import main
from tests.cli.conftest import instruction_rows, save_pilot, write_rows
from tests.conftest import tiny_t5


UNREACHABLE_HUB = "http://127.0.0.1:9"  # the discard port: connection refused at once, nothing is downloaded


def run_cli(*argv, **env):
    environment = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    result = subprocess.run(
        [sys.executable, "-m", "tcopilot_peft", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, **env},
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.returncode, result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def t5_pilot(tmp_path_factory):
    return save_pilot(tmp_path_factory.mktemp("t5"), tiny_t5)


def test_generate_with_a_copilot_of_another_family(tmp_path, local_pilot, t5_pilot):
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(local_pilot), CopilotConfig()).save_pretrained(tmp_path / "a")
    code, lines = run_cli("generate", "--model", str(t5_pilot), "--adapter", str(tmp_path / "a"), "--prompt", "1+1")
    assert code == 2 and lines[-1].startswith(f"tcopilot generate: error: cannot load the Copilot adapter '{tmp_path}")
    assert "trained for a 'llama' Pilot and cannot run on a 't5' Pilot" in lines[-1]


def test_generate_with_a_folder_that_holds_no_adapter(tmp_path, local_pilot, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--model", str(local_pilot), "--adapter", str(tmp_path / "empty"), "--prompt", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last.startswith("tcopilot generate: error: cannot load the Copilot adapter") and "adapter_config.json" in last
    )


def test_a_dataset_name_with_the_hub_unreachable_is_one_line_and_fast(tmp_path, local_pilot):
    argv = ["train", "--model", str(local_pilot), "--dataset", "someone/no-such-rows", "--output-dir", str(tmp_path)]
    code, lines = run_cli(*argv, HF_ENDPOINT=UNREACHABLE_HUB)
    assert code == 2 and lines == [
        "tcopilot train: error: dataset 'someone/no-such-rows' is not a local file, and the Hugging Face Hub is "
        "unreachable ([Errno 111] Connection refused); set HF_HUB_OFFLINE=1 to read a cached copy"
    ]


def test_a_dataset_name_offline_and_not_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tcopilot_peft.data import load_any_dataset

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"'someone/no-such-rows' is not a local file, and it is not in the cache"):
        load_any_dataset("someone/no-such-rows")


def test_a_truncated_jsonl_file_names_the_line(tmp_path, local_pilot):
    rows = write_rows(tmp_path / "rows.jsonl", instruction_rows(5), jsonl=True)
    rows.write_text(rows.read_text()[:-9])
    code, lines = run_cli("train", "--model", str(local_pilot), "--dataset", str(rows), "--output-dir", "x")
    assert code == 2 and lines[-1] == (
        f"tcopilot train: error: cannot read dataset {rows}: line 5, column 52: Unterminated string starting at "
        "(JSON Lines: one whole row per line)"
    )


def test_a_truncated_json_file_names_the_line(tmp_path):
    from tcopilot_peft.data import load_any_dataset

    rows = tmp_path / "rows.json"
    rows.write_text('[\n  {"prompt": "1+1=", "completion": "2"},\n  {"prompt": "2+2=", "comp')
    with pytest.raises(ValueError, match=r"rows.json: line 3, column 22: Unterminated string .*cut short"):
        load_any_dataset(str(rows))
