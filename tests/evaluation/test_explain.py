"""`explain`: the numbers behind Figures 3 and 4, and the PNG and JSON files drawn from them."""

import dataclasses
import json

import matplotlib.image
import pytest
import torch

from tcopilot_peft.cli import main
from tcopilot_peft.evaluation.benchmarks import BenchmarkSource, get_benchmark, load_benchmark
from tcopilot_peft.evaluation.explain import (
    RectificationTally,
    choose_steps,
    explain_prompt,
    rectification_scores,
    step_statistics,
    summarise_rectification,
)
from tcopilot_peft.evaluation.figures import draw_explanation, draw_summary
from tcopilot_peft.evaluation.scoring import ContinuationLogits, continuation_logits
from tests.evaluation.conftest import copilot_model, write_json


def test_panels_add_up_in_both_fusion_spaces():
    model, tokenizer = copilot_model(fusion_lambda=0.7, fusion_mode="logit")
    ids = tokenizer("12+7=19", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), copilot_prompt_length=4)
    pilot, fused, correction = rectification_scores(out.pilot_logits, out.logits, "logit")
    torch.testing.assert_close(pilot, out.pilot_logits.float())
    torch.testing.assert_close(correction, 0.7 * out.copilot_logits.float(), rtol=1e-5, atol=1e-5)
    model.peft_config["default"].fusion_mode = "prob"
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), copilot_prompt_length=4)
    pilot, fused, correction = rectification_scores(out.pilot_logits, out.logits, "prob")
    torch.testing.assert_close(pilot.exp().sum(-1), torch.ones(1, len(ids)))  # log p̂
    torch.testing.assert_close(pilot + correction, fused)
    # The logit range is the same whether read from logits or log-probabilities.
    torch.testing.assert_close(pilot.amax(-1) - pilot.amin(-1), out.pilot_logits.amax(-1) - out.pilot_logits.amin(-1))


def test_flips_help_or_hurt_against_the_target():
    pilot = torch.tensor([[3.0, 1.0, 0.0], [0.0, 4.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    correction = torch.tensor([[-3.0, 1.5, 0.0], [3.0, -2.0, 0.0], [-2.0, 0.0, 2.0], [0.0, 0.5, -0.5]])
    targets = torch.tensor([1, 1, 1, 2])
    stats = step_statistics(ContinuationLogits(pilot, pilot + correction, targets), "logit", top_k=2)
    assert stats.flipped.tolist() == [True, True, True, False]
    assert stats.helped.tolist() == [True, False, False, False]  # 0 → 1, the target
    assert stats.hurt.tolist() == [False, True, False, False]  # 1 (the target) → 0
    # Step 2 flips 0 → 2, neither being the target: neutral.
    # Sizes are taken over the Pilot's top-2 only: at step 1 the +3.0 on token 0 is outside it.
    assert stats.magnitude.tolist() == [3.0, 2.0, 2.0, 0.5]
    assert stats.relative_magnitude.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.1])
    tally = RectificationTally()
    tally.add(stats)
    summary = tally.summary()
    assert (summary["flips"], summary["flips_helped"], summary["flips_hurt"], summary["flips_neutral"]) == (3, 1, 1, 1)
    assert summary["pilot_token_accuracy"] == 0.5 and summary["fused_token_accuracy"] == 0.5
    assert summary["relative_magnitude"]["mean"] == pytest.approx(0.65)


def test_a_prompt_is_traced_along_its_reference():
    model, tokenizer = copilot_model()
    prompt, reference = "what is 12 plus 7\n", "the answer is 19"
    explanation = explain_prompt(model, tokenizer, prompt, reference=reference, top_k=4)
    assert explanation.answer == reference and explanation.answer_source == "reference"
    assert [step.target for step in explanation.steps] == [c.replace(" ", "␣") for c in reference]
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
    logits = continuation_logits(model, [(prompt_ids, answer_ids)], 0, 100)[0]
    for step in explanation.steps:
        ids = [c.token_id for c in step.candidates]
        assert ids[:4] == logits.pilot[step.step].topk(4).indices.tolist()
        assert {step.fused_choice_id, step.target_id} <= set(ids) and len(ids) == len(set(ids))
        assert step.changed == (step.pilot_choice_id != step.fused_choice_id)
        assert step.fused_choice_id == int(logits.fused[step.step].argmax())
        for c in step.candidates:
            assert c.pilot_score + c.correction == pytest.approx(c.fused_score, abs=1e-4)
    assert explanation.changed_steps, "a Copilot with random weights this large should change some token"
    model.peft_config["default"].fusion_lambda = 0.0
    unchanged = explain_prompt(model, tokenizer, prompt, reference=reference)
    assert not unchanged.changed_steps
    assert all(c.correction == 0 for step in unchanged.steps for c in step.candidates)


def test_without_a_reference_the_fused_generation_is_traced():
    model, tokenizer = copilot_model()
    explanation = explain_prompt(model, tokenizer, "3+4=", max_new_tokens=5)
    assert explanation.answer_source == "generated" and 1 <= len(explanation.steps) <= 5
    # Greedy fused decoding: the traced token is the fused choice at every step.
    assert all(step.target_id == step.fused_choice_id for step in explanation.steps)


def test_step_choice():
    model, tokenizer = copilot_model()
    steps = explain_prompt(model, tokenizer, "what is 12 plus 7\n", reference="the answer is 19").steps
    changed = [s.step for s in steps if s.changed]
    assert choose_steps(steps, None, max_panels=2) == changed[:2]
    assert choose_steps(steps, [3, 1, 3]) == [3, 1]
    with pytest.raises(ValueError, match=r"steps \[99\] are outside"):
        choose_steps(steps, [99])
    # With no changed step, the largest corrections are drawn, in step order.
    calm = [dataclasses.replace(s, changed=False) for s in steps]
    largest = sorted(calm, key=lambda s: s.relative_magnitude)[-2:]
    assert choose_steps(calm, None, max_panels=2) == sorted(s.step for s in largest)


def test_the_figure_4_png_has_one_row_of_three_panels_per_step(tmp_path):
    model, tokenizer = copilot_model()
    explanation = explain_prompt(model, tokenizer, "what is 12 plus 7\n", reference="the answer is 19")
    for steps in ([0], [0, 2, 5]):
        path = tmp_path / f"explain-{len(steps)}.png"
        assert draw_explanation(explanation, steps, str(path)) == (1500, 380 * len(steps))
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (380 * len(steps), 1500)
        assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_explain_command_writes_png_and_json(tmp_path, saved_model, capsys):
    pilot_dir, adapter_dir = saved_model
    out = tmp_path / "out"
    args = ["explain", "--model", str(pilot_dir), "--adapter", str(adapter_dir), "--output", str(out)]
    code = main([*args, "--prompt", "what is 12 plus 7", "--alpaca", "--reference", "the answer is 19"])
    assert code == 0
    data = json.loads((out / "explain.json").read_text())
    assert data["answer"] == "the answer is 19" and data["answer_source"] == "reference"
    assert data["prompt"].startswith("Below is an instruction") and "what is 12 plus 7" in data["prompt"]
    assert (data["fusion_mode"], data["fusion_lambda"]) == ("logit", 1.0)
    assert len(data["steps"]) == len("the answer is 19")
    assert data["changed_steps"] == [s["step"] for s in data["steps"] if s["changed"]]
    assert data["shown_steps"] == data["changed_steps"][:4]
    step = data["steps"][0]
    assert {"target", "pilot_choice", "fused_choice", "relative_magnitude", "candidates"} <= set(step)
    assert {"token", "pilot_score", "correction", "fused_score", "pilot_probability"} <= set(step["candidates"][0])
    image = matplotlib.image.imread(out / "explain.png")
    assert image.shape[:2] == (380 * len(data["shown_steps"]), 1500)
    assert "steps where the Copilot changed the chosen token" in capsys.readouterr().out
    # Errors a user can fix: one line, exit status 2.
    assert main([*args, "--prompt", "x", "--reference", "y", "--steps", "5"]) == 2
    assert main([*args]) == 2
    assert "either --prompt" in capsys.readouterr().err


def rows(n):
    return [
        {"instruction": f"what is {i} plus {i}", "input": "", "output": f"the answer is {2 * i}", "answer": str(2 * i)}
        for i in range(n)
    ]


def test_the_figure_3_summary(tmp_path, saved_model):
    model, tokenizer = copilot_model()
    gsm8k = load_benchmark(BenchmarkSource(get_benchmark("gsm8k"), str(write_json(tmp_path / "g.json", rows(5)))))
    svamp = load_benchmark(BenchmarkSource(get_benchmark("svamp"), str(write_json(tmp_path / "s.json", rows(3)))))
    report = summarise_rectification(model, tokenizer, [gsm8k, svamp], batch_size=2, progress=False)
    summary = report.to_dict()
    tokens = sum(len(e.reference) for e in gsm8k.examples)  # one character, one token
    assert summary["benchmarks"]["gsm8k"]["tokens"] == tokens and summary["benchmarks"]["gsm8k"]["examples"] == 5
    overall = summary["overall"]
    assert overall["tokens"] == tokens + sum(len(e.reference) for e in svamp.examples)
    assert overall["flips"] == overall["flips_helped"] + overall["flips_hurt"] + overall["flips_neutral"] > 0
    assert 0 < overall["relative_magnitude"]["mean"] and overall["magnitude"]["p90"] >= overall["magnitude"]["median"]
    assert draw_summary(report, str(tmp_path / "summary.png")) == (1600, 450)
    assert matplotlib.image.imread(tmp_path / "summary.png").shape[:2] == (450, 1600)
    # Batching does not change the numbers.
    one_by_one = summarise_rectification(model, tokenizer, [gsm8k, svamp], batch_size=1, progress=False).to_dict()
    assert one_by_one["overall"]["flips"] == overall["flips"]
    assert one_by_one["overall"]["relative_magnitude"]["mean"] == pytest.approx(overall["relative_magnitude"]["mean"])
    model.peft_config["default"].fusion_lambda = 0.0
    zero = summarise_rectification(model, tokenizer, [gsm8k], progress=False).to_dict()["overall"]
    assert zero["flips"] == 0 and zero["magnitude"]["mean"] == 0
    assert zero["pilot_token_accuracy"] == zero["fused_token_accuracy"]

    pilot_dir, adapter_dir = saved_model
    out = tmp_path / "out"
    code = main(
        ["explain", "--model", str(pilot_dir), "--adapter", str(adapter_dir), "--output", str(out)]
        + ["--data", f"gsm8k={tmp_path / 'g.json'}", "--no-progress"]
    )
    assert code == 0
    saved = json.loads((out / "summary.json").read_text())
    assert set(saved) == {"fusion_mode", "fusion_lambda", "top_k", "benchmarks", "overall"}
    assert saved["benchmarks"]["gsm8k"]["tokens"] == tokens
    assert matplotlib.image.imread(out / "summary.png").shape[:2] == (450, 1600)


def t5_copilot_model():
    from peft import get_peft_model

    from tcopilot_peft import CopilotConfig
    from tests.conftest import char_tokenizer, randomise_copilot, tiny_t5

    tokenizer = char_tokenizer()
    model = get_peft_model(tiny_t5(vocab_size=len(tokenizer)), CopilotConfig())
    randomise_copilot(model, scale=1.0)
    return model.eval(), tokenizer


def test_a_t5_pilots_fused_generation_is_traced():
    model, tokenizer = t5_copilot_model()
    explanation = explain_prompt(model, tokenizer, "3+4=", max_new_tokens=5)
    assert explanation.answer_source == "generated" and 1 <= len(explanation.steps) <= 5
    assert all(step.target_id == step.fused_choice_id for step in explanation.steps)
    assert any(c.correction != 0 for step in explanation.steps for c in step.candidates)
    model.peft_config["default"].fusion_lambda = 0.0
    unchanged = explain_prompt(model, tokenizer, "3+4=", reference="7")
    assert not unchanged.changed_steps and all(c.correction == 0 for s in unchanged.steps for c in s.candidates)
