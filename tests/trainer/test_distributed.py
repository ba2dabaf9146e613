import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_data_parallel_run_keeps_the_copilot_in_sync(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    script = Path(__file__).with_name("ddp_train.py")
    # `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.15 (its CPU launcher only
    # fans out through mpirun); the torchrun-based launcher with ACCELERATE_USE_CPU gives 2 gloo processes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", str(script), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    # Each process logs its own micro-batches, and the Copilot's gradients are averaged, so the weights agree.
    assert reports[0]["first_logged_ids"] != reports[1]["first_logged_ids"]
    assert reports[0]["log_rows"] == reports[1]["log_rows"] == 12
    assert reports[0]["copilot"] == pytest.approx(reports[1]["copilot"], abs=1e-6)
    assert reports[0]["copilot_sum"] == pytest.approx(reports[1]["copilot_sum"], rel=1e-6)
    assert reports[0]["lora_sum"] == pytest.approx(reports[1]["lora_sum"], rel=1e-6)
