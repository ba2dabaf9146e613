import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


HERE = Path(__file__).parent
# `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.15 (its CPU launcher only fans
# out through mpirun); the torchrun-based launcher with ACCELERATE_USE_CPU gives 2 gloo processes.
DDP = ["--multi_gpu"]
# On a CPU, `sync_module_states` makes accelerate's FSDP plugin look for an accelerator device and fail, and
# `cpu_ram_efficient_loading` is refused by the Copilot trainers (see `tcopilot_peft/trainer/parallel.py`).
FSDP = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"]
FSDP += ["--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--fsdp_sync_module_states", "false"]
FSDP += ["--fsdp_cpu_ram_efficient_loading", "false"]


def launch(mode: list[str], script: str, *script_args) -> list[dict]:
    """Run `script` on 2 CPU processes under `mode`'s accelerate options; return each process's JSON report."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    command = [launcher, "launch", *mode, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", str(HERE / script), *map(str, script_args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((Path(script_args[0]) / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_same_copilot(report, other):
    assert report["copilot"] == pytest.approx(other["copilot"], abs=1e-6)
    assert report["copilot_sum"] == pytest.approx(other["copilot_sum"], rel=1e-6)


@pytest.mark.slow
def test_two_process_data_parallel_run_keeps_the_copilot_in_sync(tmp_path):
    reports = launch(DDP, "ddp_train.py", tmp_path)
    assert [r["world"] for r in reports] == [2, 2]
    # Each process logs its own micro-batches, and the Copilot's gradients are averaged, so the weights agree.
    assert reports[0]["first_logged_ids"] != reports[1]["first_logged_ids"]
    # Both replay their own logs, which keep just the held epoch: 2 rounds of 4 rows each.
    assert reports[0]["log_rows"] == reports[1]["log_rows"] == 8
    assert [(r["replaying"], r["step"]) for r in reports] == [(True, 9)] * 2
    assert_same_copilot(reports[0], reports[1])
    assert reports[0]["lora_sum"] == pytest.approx(reports[1]["lora_sum"], rel=1e-6)


@pytest.mark.slow
def test_fsdp_shards_the_pilot_replicates_the_copilot_and_trains_as_ddp_does(tmp_path):
    fsdp = launch(FSDP, "fsdp_train.py", tmp_path / "fsdp", "adapter")
    ddp = launch(DDP, "fsdp_train.py", tmp_path / "ddp", "adapter")
    runs = [r["full"] for r in fsdp]
    assert all(r["fsdp"] and r["pilot_sharded"] and r["copilot_replicated"] for r in runs)
    assert [r["world"] for r in runs] == [2, 2]
    # A Mistake Log per process, of its own micro-batches.
    assert runs[0]["first_logged_ids"] != runs[1]["first_logged_ids"]
    assert runs[0]["log_rows"] == runs[1]["log_rows"] == 16
    # The replicas started apart (the script moves process 1's) and agree: broadcast, then averaged gradients.
    assert_same_copilot(runs[0], runs[1])
    # Averaged exactly as under DDP, with the sharded Pilot's LoRA trained as DDP trains it.
    for fsdp_run, ddp_run in zip(runs, (r["full"] for r in ddp)):
        assert not ddp_run["fsdp"]
        assert_same_copilot(fsdp_run, ddp_run)
        assert fsdp_run["pilot_trained_sum"] == pytest.approx(ddp_run["pilot_trained_sum"], rel=1e-6)
    # FSDP's sharded checkpoint beside the Copilot's state and each process's Mistake Log; resuming from it ends
    # where the uninterrupted run ends.
    assert {"pytorch_model_fsdp_0", "copilot_trainer_state.pt", "mistake_log_rank1.safetensors"} <= set(
        fsdp[0]["checkpoint"]
    )
    for report in fsdp:
        assert_same_copilot(report["resumed"], report["full"])
        assert report["resumed"]["pilot_trained_sum"] == pytest.approx(report["full"]["pilot_trained_sum"], rel=1e-6)
        assert report["resumed"]["log_rows"] == report["full"]["log_rows"]


@pytest.mark.slow
def test_fsdp_fully_fine_tuned_pilot_is_saved_whole_and_resumes(tmp_path):
    reports = launch([*FSDP, "--fsdp_state_dict_type", "FULL_STATE_DICT"], "fsdp_train.py", tmp_path, "full")
    assert {"pytorch_model_fsdp.bin", "adapter_model.safetensors", "pilot"} <= set(reports[0]["checkpoint"])
    for report in reports:
        assert report["full"]["pilot_sharded"] and report["full"]["copilot_replicated"]
        assert_same_copilot(report["resumed"], report["full"])
        assert report["resumed"]["pilot_trained_sum"] == pytest.approx(report["full"]["pilot_trained_sum"], rel=1e-6)
    # The Pilot saved beside the adapter is the whole (gathered) Pilot, not one process's shards.
    assert reports[0]["saved_pilot_sum"] == pytest.approx(reports[0]["full"]["pilot_trained_sum"], rel=1e-6)
