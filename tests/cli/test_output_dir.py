"""`tcopilot train` never trains over a finished run by accident: `--overwrite` and `--resume`."""

import json
import subprocess
import sys

from tcopilot_peft.cli import main
from tests.cli.conftest import instruction_rows, write_rows


def train_argv(pilot, data, output, *extra):
    return ["train", "--model", str(pilot), "--dataset", str(data), "--output-dir", str(output), "--lora-r", "4"] + [
        "--batch-size", "4", "--gradient-accumulation-steps", "1", "--save-steps", "1", *extra,
    ]  # fmt: skip


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "tcopilot_peft", *argv], capture_output=True, text=True, timeout=300)


def test_a_non_empty_output_dir_is_refused_in_one_line(tmp_path, local_pilot):
    data = write_rows(tmp_path / "train.json", instruction_rows())
    output = tmp_path / "run"
    output.mkdir()
    (output / "adapter_config.json").write_text("{}")
    result = run_cli(*train_argv(local_pilot, data, output))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"tcopilot train: error: --output-dir {output} is not empty (it holds adapter_config.json); give --overwrite "
        "to train over it, or --resume to continue its last checkpoint"
    )
    result = run_cli(*train_argv(local_pilot, data, output, "--resume"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"tcopilot train: error: --resume: {output} holds no checkpoint-N folder to resume from"
    )


def test_resume_continues_the_last_checkpoint_and_overwrite_starts_afresh(tmp_path, local_pilot, capsys):
    data = write_rows(tmp_path / "train.json", instruction_rows())
    output = tmp_path / "run"
    # The Pilot's 2 steps, then the Copilot's 2 on the finished Pilot (`copilot_schedule="after_pilot"`, its phase
    # as long as the Pilot's here, to keep the test short).
    short = ("--copilot-steps-factor", "1")
    assert main(train_argv(local_pilot, data, output, "--max-steps", "2", *short)) == 0
    assert sorted(p.name for p in output.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 5)]
    capsys.readouterr()
    first_run = (output / "checkpoint-4" / "trainer_state.json").stat().st_mtime_ns
    assert main(train_argv(local_pilot, data, output, "--max-steps", "3", "--resume", *short)) == 0
    assert f"resuming from {output / 'checkpoint-4'}" in capsys.readouterr().err
    assert json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert (output / "checkpoint-4" / "trainer_state.json").stat().st_mtime_ns == first_run  # steps 1-4 not rerun
    assert main(train_argv(local_pilot, data, output, "--max-steps", "1", "--overwrite", *short)) == 0
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (output / "adapter_model.safetensors").exists()
