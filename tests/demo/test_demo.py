"""`tcopilot demo`: the bundled pretrained Pilot, the tasks, and the end-to-end quick run."""

import json

import pytest

from tcopilot_peft.cli import main
from tcopilot_peft.demo import PILOT_DIR
from tcopilot_peft.demo.tasks import FINE_TUNING_TASKS, extract_answer, task_splits


def test_bundled_pilot_is_pretrained_and_small():
    files = {p.name for p in PILOT_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "pretraining.json"} <= files
    assert (PILOT_DIR / "model.safetensors").stat().st_size < 8 * 2**20
    record = json.loads((PILOT_DIR / "pretraining.json").read_text())
    assert record["skill_exact_match"]["copy"] > 0.5  # it learned its skills: it is a pretrained Pilot


@pytest.mark.parametrize("task", sorted(FINE_TUNING_TASKS))
def test_task_splits_are_disjoint_and_answers_extractable(task):
    splits = task_splits(task, 300, 50, 50, seed=1)
    prompts = [set(splits[name]["prompt"]) for name in ("train", "validation", "test")]
    assert sum(map(len, prompts)) == 400 and len(set.union(*prompts)) == 400
    for row in splits["test"]:
        assert extract_answer(row["completion"]) == row["answer"]


def test_answer_extraction_edge_cases():
    assert extract_answer("12+3=15. 15*2=30. answer 30") == "30"
    assert extract_answer("answer 7 answer 12x") == "12"
    assert extract_answer("no final line") is None
    assert extract_answer("answer x") is None


def test_missing_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["demo", "--quick", "--model", str(tmp_path / "nope")]) == 2
    assert "model path not found" in capsys.readouterr().err
    assert main(["demo", "--quick", "--dataset", str(tmp_path / "none.json")]) == 2
    assert "dataset file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_end_to_end_json_agrees_with_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "copilot" / "adapter_model.safetensors").exists()
    assert f"| {100 * results['pilot_accuracy']:.1f}% |" in printed
    assert f"| {100 * results['fused_accuracy']:.1f}% |" in printed
    assert f"{results['gain_points']:+.1f} points" in printed
    assert f"{results['tokens_per_second_ratio']:.2f}×" in printed
    assert results["chosen_lambda"] in results["settings"]["lambda_grid"]
    assert 0 <= results["pilot_accuracy"] <= 1 and results["copilot_skill_test"] < 0.9  # high skill would mean a leak
