"""The evaluation pass: one tokenisation and decoding for both models, exact scores, and resuming."""

import json
from contextlib import contextmanager

import pytest
import torch

from tcopilot_peft.evaluation.benchmarks import BenchmarkSource, get_benchmark, load_benchmark
from tcopilot_peft.evaluation.runner import (
    PREDICTIONS_FILE,
    RESULTS_FILE,
    DecodingSettings,
    ResumeError,
    generate_pilot_and_fused,
    group_averages,
    relative_improvement,
    run_evaluation,
)
from tcopilot_peft.toy import char_tokenizer
from tests.evaluation.conftest import copilot_model, write_json


class ScriptedModel:
    """Stands in for a PeftModel: answers every prompt with one text with the Copilot, another without it.

    It records each `generate()` call (adapter on or off, the inputs, the decoding arguments), and can be told to
    raise `KeyboardInterrupt` on a given call to imitate an interrupted run.
    """

    device = torch.device("cpu")

    def __init__(self, tokenizer, fused_answer: str, pilot_answer: str, interrupt_on_call: int | None = None):
        self.tokenizer = tokenizer
        self.answers = {True: fused_answer, False: pilot_answer}
        self.copilot_on = True
        self.calls = []
        self.interrupt_on_call = interrupt_on_call

    @contextmanager
    def disable_adapter(self):
        self.copilot_on = False
        try:
            yield
        finally:
            self.copilot_on = True

    def generate(self, input_ids, attention_mask, **kwargs):
        if len(self.calls) == self.interrupt_on_call:
            raise KeyboardInterrupt
        self.calls.append((self.copilot_on, input_ids.clone(), attention_mask.clone(), kwargs))
        answer = self.tokenizer(self.answers[self.copilot_on], add_special_tokens=False, return_tensors="pt")
        return torch.cat([input_ids, answer["input_ids"].expand(input_ids.shape[0], -1)], dim=1)


def rows(golds):
    return [{"instruction": f"what is {i} plus {i}", "input": "", "answer": gold} for i, gold in enumerate(golds)]


def loaded_benchmark(tmp_path, name, golds):
    path = write_json(tmp_path / "data" / f"{name}.json", rows(golds))
    return load_benchmark(BenchmarkSource(get_benchmark(name), str(path)))


SETTINGS = {"model": "scripted", "adapter": "scripted", "fusion_lambda": 1.0}


def test_both_models_see_the_same_prompts_and_decoding_and_are_scored_exactly(tmp_path):
    tokenizer = char_tokenizer()
    model = ScriptedModel(tokenizer, fused_answer="so the answer is 5", pilot_answer="so the answer is 4")
    gsm8k = loaded_benchmark(tmp_path, "gsm8k", ["5", "5", "4", "5", "7"])  # fused right 3x, Pilot right once
    boolq = loaded_benchmark(tmp_path, "boolq", ["true", "false"])  # neither text states a label: both always wrong
    report = run_evaluation(
        model, tokenizer, [gsm8k, boolq], str(tmp_path / "out"), SETTINGS, DecodingSettings(), batch_size=2
    )
    # Batches of 2 and 2 + 1 and 1 prompts: each decoded once with and once without the Copilot, in that order.
    assert [on for on, *_ in model.calls] == [True, False] * 4
    for (_, fused_ids, fused_mask, fused_kwargs), (_, pilot_ids, pilot_mask, pilot_kwargs) in zip(
        model.calls[::2], model.calls[1::2]
    ):
        assert torch.equal(fused_ids, pilot_ids) and torch.equal(fused_mask, pilot_mask)
        assert fused_kwargs == pilot_kwargs
    assert model.calls[0][3] == {"num_beams": 4, "do_sample": False, "max_new_tokens": 256, "pad_token_id": 0}
    assert model.calls[-1][3]["max_new_tokens"] == 32  # commonsense budget

    math, commonsense = report.scores
    assert (math.examples, math.pilot_accuracy, math.fused_accuracy) == (5, 0.2, 0.6)
    assert (math.fused_only, math.pilot_only) == (3, 1) and math.relative_improvement == pytest.approx(2.0)
    assert math.mcnemar_p == pytest.approx(0.625)
    assert (commonsense.pilot_accuracy, commonsense.fused_accuracy, commonsense.relative_improvement) == (0, 0, None)
    assert report.averages["arithmetic"]["fused_accuracy"] == 0.6
    assert report.averages["all"]["pilot_accuracy"] == pytest.approx(0.1)

    saved = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert saved["benchmarks"]["gsm8k"]["fused_accuracy"] == 0.6
    assert saved["settings"]["decoding"] == {"num_beams": 4, "max_new_tokens": None}
    records = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()[1:]]
    first = next(r for r in records if r["benchmark"] == "gsm8k" and r["index"] == 0)
    assert first["pilot"] == {"text": "so the answer is 4", "prediction": 4.0, "correct": False}
    assert first["fused"] == {"text": "so the answer is 5", "prediction": 5.0, "correct": True}
    table = report.table()
    assert "gsm8k" in table and "avg arithmetic" in table and "+40.0" in table and "+200.0" in table


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    tokenizer = char_tokenizer()
    gsm8k = loaded_benchmark(tmp_path, "gsm8k", ["5", "4", "5", "4", "5"])
    output = str(tmp_path / "out")
    interrupted = ScriptedModel(tokenizer, "the answer is 5", "the answer is 4", interrupt_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(interrupted, tokenizer, [gsm8k], output, SETTINGS, batch_size=2)
    lines = (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()
    assert len(lines) == 1 + 2  # the header and the one finished batch
    resumed = ScriptedModel(tokenizer, "the answer is 5", "the answer is 4")
    report = run_evaluation(resumed, tokenizer, [gsm8k], output, SETTINGS, batch_size=2)
    assert sum(call[1].shape[0] for call in resumed.calls) == 2 * 3  # only the 3 missing prompts, twice each
    fresh = run_evaluation(
        ScriptedModel(tokenizer, "the answer is 5", "the answer is 4"),
        tokenizer,
        [gsm8k],
        str(tmp_path / "fresh"),
        SETTINGS,
        batch_size=2,
    )
    assert report.scores == fresh.scores
    assert (report.scores[0].pilot_accuracy, report.scores[0].fused_accuracy) == (0.4, 0.6)


def test_a_damaged_last_line_is_dropped_and_recomputed(tmp_path):
    tokenizer = char_tokenizer()
    gsm8k = loaded_benchmark(tmp_path, "gsm8k", ["5", "4", "5"])
    output = tmp_path / "out"
    run_evaluation(ScriptedModel(tokenizer, "5", "4"), tokenizer, [gsm8k], str(output), SETTINGS, batch_size=1)
    predictions = output / PREDICTIONS_FILE
    text = predictions.read_text()
    predictions.write_text(text[: len(text) - 20])  # the last record cut mid-write
    model = ScriptedModel(tokenizer, "5", "4")
    report = run_evaluation(model, tokenizer, [gsm8k], str(output), SETTINGS, batch_size=1)
    assert len(model.calls) == 2 and report.scores[0].examples == 3
    assert [json.loads(line)["index"] for line in predictions.read_text().splitlines()[1:]] == [0, 1, 2]


def test_other_settings_or_other_data_are_not_mixed_in(tmp_path):
    tokenizer = char_tokenizer()
    gsm8k = loaded_benchmark(tmp_path, "gsm8k", ["5", "4"])
    output = str(tmp_path / "out")
    run_evaluation(ScriptedModel(tokenizer, "5", "4"), tokenizer, [gsm8k], output, SETTINGS)
    with pytest.raises(ResumeError, match=r"other settings \(decoding\); rerun with --restart"):
        run_evaluation(ScriptedModel(tokenizer, "5", "4"), tokenizer, [gsm8k], output, SETTINGS, DecodingSettings(2))
    with pytest.raises(ResumeError, match=r"other settings \(fusion_lambda\)"):
        run_evaluation(
            ScriptedModel(tokenizer, "5", "4"), tokenizer, [gsm8k], output, {**SETTINGS, "fusion_lambda": 0}
        )
    changed = loaded_benchmark(tmp_path, "gsm8k", ["5", "6"])  # same rows, another gold answer
    with pytest.raises(ResumeError, match="gsm8k row 1 was scored on another prompt or answer"):
        run_evaluation(ScriptedModel(tokenizer, "5", "4"), tokenizer, [changed], output, SETTINGS)
    restarted = run_evaluation(
        ScriptedModel(tokenizer, "6", "4"), tokenizer, [changed], output, SETTINGS, restart=True
    )
    assert restarted.scores[0].fused_accuracy == 0.5


def test_generation_with_a_real_copilot():
    """`generate_pilot_and_fused` returns the Pilot's own generations and the fused ones; λ = 0 makes them equal."""
    model, tokenizer = copilot_model()
    prompts = ["what is 12 plus 7", "3+4="]
    kwargs = {"num_beams": 2, "do_sample": False, "max_new_tokens": 6, "pad_token_id": 0}
    pilot, fused = generate_pilot_and_fused(model, tokenizer, prompts, **kwargs)
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert inputs["attention_mask"][1, 0] == 0  # the shorter prompt is padded on the left
    with torch.inference_mode():
        alone = model.get_base_model().generate(**inputs, **kwargs)
    assert pilot == tokenizer.batch_decode(alone[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert pilot != fused
    model.peft_config["default"].fusion_lambda = 0.0
    pilot_again, fused_at_zero = generate_pilot_and_fused(model, tokenizer, prompts, **kwargs)
    assert fused_at_zero == pilot_again == pilot


def test_score_summaries():
    assert relative_improvement(0.5, 0.6) == pytest.approx(0.2) and relative_improvement(0.0, 0.3) is None
    assert group_averages([]) == {}
