"""run_seq2seq.py's ablation arms: (b) keeps its finished Pilot, an arm trains only its Copilot on it (the same Pilot
as (b)'s, recorded), a workdir without it falls back to retraining the whole seeded run (recorded), and the report
names which."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tcopilot_peft.demo.tasks import task_splits


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import run_seq2seq  # noqa: E402


def test_an_ablation_arm_reuses_the_finished_pilot_of_b_or_retrains_without_it(tmp_path):
    splits = task_splits("count_then_max", 32, 3, 3, seed=1000)  # one step of batch 32: seconds
    splits["budget"] = 12
    b, _ = run_seq2seq.joint_arm(splits, 0, 1.0, tmp_path)
    assert (tmp_path / run_seq2seq.FINISHED_PILOT / "config.json").exists()
    reused = run_seq2seq.ablation_arm(splits, 0, 1.0, tmp_path, "token_hidden", b)
    assert reused["token_hidden_pilot_source"] == "reused" and reused["token_hidden_same_pilot"]
    assert len(reused["token_hidden"]) == 3 and reused["token_hidden_lambda"] in run_seq2seq.LAMBDAS
    assert reused["token_hidden_copilot_steps"] == b["copilot_steps"]  # as many as (b)'s
    shutil.rmtree(tmp_path / run_seq2seq.FINISHED_PILOT)  # a workdir from before (b)'s Pilot was kept
    retrained = run_seq2seq.ablation_arm(splits, 0, 1.0, tmp_path, "hidden", b)
    assert retrained["hidden_pilot_source"] == "retrained" and (tmp_path / "h").is_dir()
    rows = run_seq2seq.ablation_rows([{**b, **reused}], "token_hidden")
    assert rows[0].startswith('| (t) ablation: `copilot_same_position="token_hidden"`')
    assert "same Pilot as (b): [True]; (b)'s Pilot: ['reused']" in rows[1]
    old = {k: v for k, v in {**b, **retrained}.items() if k != "hidden_pilot_source"}  # a run from before the field
    assert "(b)'s Pilot: ['retrained']" in run_seq2seq.ablation_rows([old], "hidden")[1]
    assert run_seq2seq.ablation_rows([b], "hidden") == []  # an arm no seed has is not reported
