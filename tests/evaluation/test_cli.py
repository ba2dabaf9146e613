"""`tcopilot eval` end to end on a tiny local model, and the one-line errors a user can fix."""

import json

import pytest

from tcopilot_peft.cli import main
from tcopilot_peft.evaluation.runner import PREDICTIONS_FILE, RESULTS_FILE
from tests.evaluation.conftest import write_json


def eval_args(saved_model, output, *data):
    pilot_dir, adapter_dir = saved_model
    args = ["eval", "--model", str(pilot_dir), "--adapter", str(adapter_dir), "--output", str(output)]
    for source in data:
        args += ["--data", str(source)]
    return args + ["--max-new-tokens", "4", "--num-beams", "2", "--batch-size", "3", "--no-progress"]


def rows(n, **extra):
    return [{"instruction": f"what is {i} plus 1", "input": "", "answer": str(i + 1), **extra} for i in range(n)]


def test_eval_prints_the_table_and_writes_results(tmp_path, saved_model, capsys):
    data = write_json(tmp_path / "gsm8k" / "test.json", rows(4))
    output = tmp_path / "out"
    assert main(eval_args(saved_model, output, data)) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:4] == ["benchmark", "n", "Pilot", "+Copilot"]
    assert "gsm8k" in printed and str(output / RESULTS_FILE) in printed
    results = json.loads((output / RESULTS_FILE).read_text())
    score = results["benchmarks"]["gsm8k"]
    assert score["examples"] == 4 and 0 <= score["pilot_accuracy"] <= 1
    settings = results["settings"]
    assert (settings["fusion_lambda"], settings["fusion_mode"]) == (1.0, "logit")
    assert settings["decoding"] == {"num_beams": 2, "max_new_tokens": 4}
    records = (output / PREDICTIONS_FILE).read_text().splitlines()
    assert len(records) == 1 + 4
    # Rerunning finds every example done, and λ on the command line is a setting the results depend on.
    assert main(eval_args(saved_model, output, data)) == 0
    assert (output / PREDICTIONS_FILE).read_text().splitlines() == records
    assert main([*eval_args(saved_model, output, data), "--fusion-lambda", "0"]) == 2
    assert "other settings (fusion_lambda)" in capsys.readouterr().err
    assert main([*eval_args(saved_model, output, data), "--fusion-lambda", "0", "--restart"]) == 0
    zero = json.loads((output / RESULTS_FILE).read_text())["benchmarks"]["gsm8k"]
    assert zero["pilot_accuracy"] == zero["fused_accuracy"] and zero["fused_only"] == zero["pilot_only"] == 0


def test_eval_on_the_shared_test_sets(tmp_path, saved_model, shared_data, capsys):
    args = eval_args(saved_model, tmp_path / "out", shared_data)
    assert main([*args, "--benchmarks", "gsm8k,AQuA,boolq,winogrande", "--limit", "2"]) == 0
    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert sorted(results["benchmarks"]) == ["AQuA", "boolq", "gsm8k", "winogrande"]
    assert all(score["examples"] == 2 for score in results["benchmarks"].values())
    assert set(results["averages"]) == {"arithmetic", "commonsense", "all"}


def test_malformed_rows_are_refused_or_skipped_and_reported(tmp_path, saved_model, capsys):
    data = write_json(tmp_path / "gsm8k.json", rows(3) + [{"instruction": "q", "answer": ["4"]}] + rows(1))
    output = tmp_path / "out"
    assert main(eval_args(saved_model, output, data)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "gsm8k: 1 malformed row" in error and "row 3: 'answer' ['4'] is not a finite number" in error
    assert main([*eval_args(saved_model, output, data), "--bad-rows", "skip"]) == 0
    assert "gsm8k: skipped row 3: 'answer'" in capsys.readouterr().err
    results = json.loads((output / RESULTS_FILE).read_text())["benchmarks"]["gsm8k"]
    assert results["examples"] == 4 and results["skipped_rows"] == [
        "row 3: 'answer' ['4'] is not a finite number for gsm8k"
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda tmp: tmp / "missing.json", "data path not found"),
        (lambda tmp: write_json(tmp / "gsm8k.json", []), "is empty"),
        (lambda tmp: write_json(tmp / "gsm8k.json", [{"question": "q", "label": 0}]), "no usable fields"),
        (lambda tmp: write_json(tmp / "mmlu.json", rows(1)), "unknown benchmark 'mmlu'"),
    ],
)
def test_data_errors_are_one_line(tmp_path, saved_model, capsys, data, message):
    assert main(eval_args(saved_model, tmp_path / "out", data(tmp_path))) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("tcopilot eval: error: ") and message in error and len(error.splitlines()) == 1


def test_model_errors_are_one_line(tmp_path, saved_model, capsys):
    data = write_json(tmp_path / "gsm8k.json", rows(1))
    pilot_dir, adapter_dir = saved_model
    args = eval_args(saved_model, tmp_path / "out", data)
    assert main([*args[:4], str(tmp_path / "no-adapter"), *args[5:]]) == 2
    assert "adapter directory not found" in capsys.readouterr().err
    assert main([*args[:2], str(tmp_path / "no-model"), *args[3:]]) == 2
    assert "model path not found" in capsys.readouterr().err
    assert main([*args, "--fusion-lambda", "-1"]) == 2
    assert "fusion_lambda must be a finite number >= 0" in capsys.readouterr().err
    assert main([*args, "--benchmarks", "boolq"]) == 2
    assert "matches none of the --data sources" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--adapter", "--data", "--limit", "--batch-size", "--num-beams", "--bad-rows"):
        assert option in text


def test_an_interrupted_eval_resumes_from_its_partial_results(tmp_path, saved_model, capsys, monkeypatch):
    from tcopilot_peft.evaluation import runner

    data = write_json(tmp_path / "gsm8k.json", rows(7))
    output = tmp_path / "out"
    real = runner.generate_pilot_and_fused
    calls = []

    def interrupted_on_the_second_batch(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_pilot_and_fused", interrupted_on_the_second_batch)
    assert main(eval_args(saved_model, output, data)) == 130
    assert "rerun the command to resume" in capsys.readouterr().err
    assert len((output / PREDICTIONS_FILE).read_text().splitlines()) == 1 + 3  # the first batch of 3 is kept
    monkeypatch.setattr(runner, "generate_pilot_and_fused", real)
    assert main(eval_args(saved_model, output, data)) == 0
    resumed = (output / PREDICTIONS_FILE).read_text().splitlines()
    assert len(resumed) == 1 + 7
    assert main(eval_args(saved_model, tmp_path / "fresh", data)) == 0
    fresh = (tmp_path / "fresh" / PREDICTIONS_FILE).read_text().splitlines()
    by_index = lambda lines: sorted(lines[1:], key=lambda line: json.loads(line)["index"])  # noqa: E731
    assert by_index(resumed) == by_index(fresh)


def test_beauty_shows_progress_unless_told_not_to(tmp_path, saved_model, capsys):
    from tests.evaluation.test_recommendation import ITEMS, beauty_args, write_folder

    lines = [f"{user} {' '.join(ITEMS[(user + i) % len(ITEMS)] for i in range(4))}" for user in range(6)]
    data = write_folder(tmp_path / "beauty", lines)
    assert main(beauty_args(saved_model, data, tmp_path / "a", "--limit", "4")) == 0
    assert "beauty: 100%" in capsys.readouterr().err
    assert main(beauty_args(saved_model, data, tmp_path / "b", "--limit", "4", "--no-progress")) == 0
    assert "beauty:" not in capsys.readouterr().err


def test_beauty_prompts_are_cut_to_the_pilots_positions(saved_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tcopilot_peft.evaluation.recommendation import _encode_prompts

    pilot_dir, _ = saved_model
    pilot, tokenizer = AutoModelForCausalLM.from_pretrained(pilot_dir), AutoTokenizer.from_pretrained(pilot_dir)
    positions = pilot.config.max_position_embeddings
    long_prompt = "a" * (2 * positions) + " the end"
    encoded = _encode_prompts(pilot, tokenizer, [long_prompt, "short"], new_tokens=6)
    assert encoded["input_ids"].shape[1] == positions - 6
    assert tokenizer.decode(encoded["input_ids"][0]).endswith(" the end")  # the newest history is kept
    assert encoded["attention_mask"][1].sum() == len(tokenizer("short")["input_ids"])
