"""`tcopilot train` / `generate`, `examples/sft_copilot.py`, and the data loading they share."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcopilot_peft.cli import main
from tcopilot_peft.data import alpaca_prompt, load_any_dataset, to_trl_format
from tests.cli.conftest import instruction_rows, write_rows
from tests.conftest import char_tokenizer, tiny_t5


REPO = Path(__file__).resolve().parents[2]


def test_llm_adapters_rows_become_prompt_completion(tmp_path):
    dataset = to_trl_format(load_any_dataset(str(write_rows(tmp_path / "d.json", instruction_rows(3)))))
    assert dataset.column_names == ["prompt", "completion"]
    assert dataset[1] == {"prompt": alpaca_prompt("1+1"), "completion": "2"}
    assert "### Input:\nx" in alpaca_prompt("q", "x")


def test_trl_rows_are_kept_and_unusable_columns_are_named(tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2"}]
    assert to_trl_format(load_any_dataset(str(write_rows(tmp_path / "d.jsonl", rows, jsonl=True))))[0] == rows[0]
    with pytest.raises(ValueError, match=r"found \['a', 'b'\]"):
        to_trl_format(load_any_dataset(str(write_rows(tmp_path / "bad.json", [{"a": 1, "b": 2}]))))
    with pytest.raises(FileNotFoundError):
        load_any_dataset(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="empty"):
        load_any_dataset(str(write_rows(tmp_path / "empty.jsonl", [], jsonl=True)))


def test_train_then_generate(tmp_path, local_pilot, capsys):
    data = write_rows(tmp_path / "train.json", instruction_rows())
    out = tmp_path / "adapter"
    code = main(
        ["train", "--model", str(local_pilot), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "2"]
        + ["--batch-size", "4", "--gradient-accumulation-steps", "1", "--lora-r", "4"]
    )
    assert code == 0 and (out / "adapter_model.safetensors").exists()
    capsys.readouterr()
    code = main(
        ["generate", "--model", str(local_pilot), "--adapter", str(out), "--prompt", "1+1", "--prompt", "22+3"]
    )
    printed = capsys.readouterr().out
    assert code == 0 and printed.count("Pilot + Copilot:") == 2


def test_a_t5_pilot_trains_generates_and_evaluates_from_the_command_line(tmp_path, capsys):
    pilot = tmp_path / "t5"
    tokenizer = char_tokenizer()
    tiny_t5(vocab_size=len(tokenizer)).save_pretrained(pilot)
    tokenizer.save_pretrained(pilot)
    data = write_rows(tmp_path / "train.json", instruction_rows())
    out = tmp_path / "adapter"
    code = main(
        ["train", "--model", str(pilot), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "2"]
        + ["--batch-size", "4", "--gradient-accumulation-steps", "1", "--lora-r", "0"]
    )
    assert code == 0 and (out / "adapter_model.safetensors").exists() and (out / "pilot").is_dir()
    capsys.readouterr()
    code = main(
        ["generate", "--model", str(out / "pilot"), "--adapter", str(out), "--prompt", "1+1", "--num-beams", "2"]
    )
    assert code == 0 and capsys.readouterr().out.count("Pilot + Copilot:") == 1
    rows = write_rows(
        tmp_path / "gsm8k.json", [{"instruction": "1+1", "answer": "2"}, {"instruction": "2+2", "answer": "4"}]
    )
    code = main(
        [
            "eval",
            "--model",
            str(pilot),
            "--adapter",
            str(out),
            "--data",
            f"gsm8k={rows}",
            "--output",
            str(tmp_path / "e"),
        ]
        + ["--num-beams", "1", "--max-new-tokens", "4"]
    )
    assert code == 0 and (tmp_path / "e" / "results.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "{missing}", "--output-dir", "x"], "dataset file not found"),
        (["train", "--dataset", "{bad}", "--output-dir", "x"], "no usable columns"),
        (["generate", "--adapter", "{missing}", "--prompt", "p"], "adapter directory not found"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(tmp_path, local_pilot, capsys, argv, message):
    bad = write_rows(tmp_path / "bad.json", [{"question": "q"}])
    argv = [a.format(missing=tmp_path / "missing.json", bad=bad) for a in argv]
    assert main([argv[0], "--model", str(local_pilot)] + argv[1:]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    last = error.strip().splitlines()[-1]  # progress bars may come before it
    assert last.startswith(f"tcopilot {argv[0]}: error:") and message in last


def test_missing_model_path_is_a_usage_error(tmp_path, capsys):
    data = write_rows(tmp_path / "train.json", instruction_rows())
    code = main(["train", "--model", str(tmp_path / "nope"), "--dataset", str(data), "--output-dir", str(tmp_path)])
    assert code == 2 and "model path not found" in capsys.readouterr().err


@pytest.mark.slow
def test_example_script_trains_and_saves(tmp_path, local_pilot):
    data = write_rows(tmp_path / "train.jsonl", instruction_rows(), jsonl=True)
    command = [sys.executable, str(REPO / "examples" / "sft_copilot.py"), "--model_name_or_path", str(local_pilot)]
    command += ["--dataset_name", str(data), "--use_lora", "--lora_r", "4", "--output_dir", str(tmp_path / "out")]
    command += ["--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy"]
    command += ["no", "--copilot_layers", "2", "--fusion_mode", "logit"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["fusion_mode"] == "logit" and config["num_layers"] == 2 and config["pilot_lora_config"]["r"] == 4
