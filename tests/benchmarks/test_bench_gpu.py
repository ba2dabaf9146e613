"""benchmarks/bench_gpu.py, the prepared GPU benchmark, runs end to end (--smoke: tiny configs, on this device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_gpu_smoke_runs_end_to_end(tmp_path):
    output = tmp_path / "GPU_RESULTS.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(output.with_suffix(".json").read_text())
    assert data["meta"]["smoke"] and data["meta"]["complete"], (data["skipped"], data["errors"])
    assert {(row["pilot"], row["form"]) for row in data["training"]} == {
        (pilot, form) for pilot in ("Llama-tiny", "Qwen2-tiny") for form in ("bf16", "nf4+lora")
    }
    assert all(row["from_log_step_ms"] > 0 for row in data["training"])  # the Copilot step from the log, timed
    assert {row["copilot"] for row in data["inference"]} == {"1/8", "1/4"}
    assert not [row for row in data["correctness"] if row["status"] == "FAIL"]
    assert len(data["targets"]) == len(data["training"]) + sum(
        row["what"] == "generate" and row["copilot"] == "1/8" for row in data["inference"]
    )
    assert "## Targets" in output.read_text()
