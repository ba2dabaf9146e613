"""The real-Pilot block's script, run end to end on a tiny local Llama and tiny LLM-Adapters files: every arm
produces per-item results, the file resumes unit by unit without redoing finished units, and refuses other settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from tcopilot_peft.toy import char_tokenizer
from tcopilot_peft.trainer.arguments import COPILOT_SCHEDULES


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import run_real  # noqa: E402


SETS = {"SVAMP": "3 + 4", "mawps": "9 - 2", "AddSub": "1 + 1", "SingleEq": "2 * 3", "MultiArith": "8 / 2"}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    tokenizer = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(root / "pilot")
    tokenizer.save_pretrained(root / "pilot")
    data = root / "data"
    rows = [
        {"instruction": f"What is {a} + {b}?", "input": "", "output": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        for a in range(4)
        for b in range(4)
    ]
    data.mkdir()
    (data / "math_data.json").write_text(json.dumps(rows))
    for name, question in SETS.items():
        (data / name).mkdir()
        tests = [{"instruction": f"What is {question}?", "input": "", "output": "", "answer": str(eval(question))}] * 3
        (data / name / "test.json").write_text(json.dumps(tests))
    return root


def flags(layout: Path) -> list[str]:
    return [
        "--pilot",
        str(layout / "pilot"),
        "--data",
        str(layout / "data"),
        "--workdir",
        str(layout / "work"),
        "--output",
        str(layout / "RESULTS_REAL.json"),
        "--seeds",
        "0",
        "1",
        "--train-rows",
        "8",
        "--validation-rows",
        "4",
        "--test-per-set",
        "2",
        "--max-steps",
        "2",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        "--curve-points",
        "2",
        "--copilot-layers",
        "1",
    ]


@pytest.mark.slow
def test_every_arm_runs_and_resumes_unit_by_unit(layout):
    run_real.main(flags(layout) + ["--only", "untuned", "default"])
    results = json.loads((layout / "RESULTS_REAL.json").read_text())
    assert sorted(results["units"]) == ["seed0/default", "seed1/default", "untuned"]
    default = results["units"]["seed0/default"]
    assert [len(default[arm]["correct"][name]) for arm in ("pilot", "fused") for name in SETS] == [2] * 10
    assert [step for step, _ in default["pilot_curve"]] == [0, 2]
    assert default["fusion"].startswith("logit/")
    # The Pilot alone on the validation rows, so the report can state the fused prediction's skill over it.
    assert default["pilot_validation_ce"] > 0
    # The Copilot's phase length is the trainer's default, resolved and stored, so a later default cannot mix blocks.
    factor = results["settings"]["copilot_steps_factor"]
    assert factor == COPILOT_SCHEDULES["after_pilot"].steps_factor and default["steps"] == 2 + round(2 * factor)

    finished = {name: unit["wall_seconds"] for name, unit in results["units"].items()}
    with pytest.raises(SystemExit, match="--resume"):
        run_real.main(flags(layout))
    run_real.main(flags(layout) + ["--resume"])
    results = json.loads((layout / "RESULTS_REAL.json").read_text())
    assert {name: results["units"][name]["wall_seconds"] for name in finished} == finished  # not redone
    assert set(results["units"]) == {name for name, _ in run_real.planned_units([0, 1])}
    assert results["units"]["seed0/paper"]["fusion"].split("/")[0] in run_real.PAPER_MODES
    assert results["units"]["seed0/transfer"]["sibling"] == 1
    report = (layout / "RESULTS_REAL.md").read_text()
    assert "Units finished: 8 of 8." in report and "(b) − (f)" in report and "skill" in report

    with pytest.raises(SystemExit, match="other settings"):
        run_real.main(flags(layout) + ["--resume", "--max-new-tokens", "5"])
    with pytest.raises(SystemExit, match="copilot_steps_factor"):
        run_real.main(flags(layout) + ["--resume", "--copilot-steps-factor", str(factor + 1)])
