"""lm-evaluation-harness, offline, on tasks defined over local JSON: fused scores vs the Pilot's own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from tcopilot_peft.evaluation.lm_eval import CopilotLM
from tcopilot_peft.evaluation.scoring import scoring_window
from tests.evaluation.conftest import copilot_model


REPO = Path(__file__).resolve().parents[2]


MULTIPLE_CHOICE = """
task: tiny_sums_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GENERATION = """
task: tiny_sums_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def offline(monkeypatch):
    """No network: the environment variables, and the flags the libraries already read from them at import."""
    import datasets
    import huggingface_hub

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


@pytest.fixture
def task_manager(tmp_path, offline):
    rows = []
    for a, b in [(12, 7), (3, 4), (25, 25), (8, 1), (40, 2), (9, 9)]:
        total = a + b
        rows.append(
            {
                "question": f"{a}+{b}=",
                "choices": [str(total), str(total + 1), str(total * 2)],
                "label": 0,
                "answer": str(total),
            }
        )
    data = tmp_path / "sums.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, template in (("mc", MULTIPLE_CHOICE), ("gen", GENERATION)):
        (tasks / f"{name}.yaml").write_text(template.format(data=data, cache=tmp_path / "cache"))
    return TaskManager(include_path=str(tasks), include_defaults=False)


def evaluate(lm, task: str, task_manager) -> tuple[float, list]:
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, log_samples=True)
    metric = "acc,none" if task.endswith("mc") else "exact_match,none"
    samples = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
    return results["results"][task][metric], [sample["resps"] for sample in samples]


def scores(model, tokenizer, task, task_manager):
    fused = evaluate(CopilotLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu"), task, task_manager)
    pilot = evaluate(HFLM(pretrained=model.get_base_model(), tokenizer=tokenizer, batch_size=4), task, task_manager)
    return fused, pilot


def loglikelihoods(responses) -> torch.Tensor:
    return torch.tensor([[choice[0][0] for choice in doc] for doc in responses])


def test_multiple_choice_reads_fused_logits(task_manager):
    model, tokenizer = copilot_model()
    (fused_acc, fused), (pilot_acc, pilot) = scores(model, tokenizer, "tiny_sums_mc", task_manager)
    assert not torch.allclose(loglikelihoods(fused), loglikelihoods(pilot), atol=1e-3)
    model.peft_config["default"].fusion_lambda = 0.0
    (zero_acc, zero), _ = scores(model, tokenizer, "tiny_sums_mc", task_manager)
    torch.testing.assert_close(loglikelihoods(zero), loglikelihoods(pilot), rtol=0, atol=1e-5)
    assert zero_acc == pilot_acc


def test_generation_tasks_use_fused_generate(task_manager):
    model, tokenizer = copilot_model()
    (_, fused), (pilot_score, pilot) = scores(model, tokenizer, "tiny_sums_gen", task_manager)
    assert fused != pilot
    model.peft_config["default"].fusion_lambda = 0.0
    (zero_score, zero), _ = scores(model, tokenizer, "tiny_sums_gen", task_manager)
    assert zero == pilot and zero_score == pilot_score


def fused_greedy(model, context: list[int], answer_start: int) -> tuple[list[int], float]:
    """Five greedy fused tokens after `context`, and the sum of the log-probabilities `generate()` chose them with."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([context]),
            max_new_tokens=5,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    continuation = out.sequences[0, answer_start:].tolist()
    logprob = sum(torch.log_softmax(step[0].float(), -1)[token] for step, token in zip(out.logits, continuation))
    return continuation, logprob.item()


def assert_scored_as_generated(lm, context, continuation, expected: float, vocab_size: int) -> None:
    # The same continuation with its last token swapped: same prefix, so a lower score, and no longer greedy.
    other = continuation[:-1] + [(continuation[-1] + 1) % vocab_size]
    requests = [(("12+7=", "greedy"), context, continuation), (("12+7=", "other"), context, other)]
    (greedy_ll, is_greedy), (other_ll, other_greedy) = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert greedy_ll == pytest.approx(expected, abs=1e-4) and is_greedy
    assert other_ll < greedy_ll and not other_greedy


def test_a_continuation_is_scored_as_fused_generation_produced_it():
    """The log-likelihood CopilotLM gives a greedy fused continuation is the sum of the log-probabilities that fused
    `generate()` chose it with, and is flagged greedy; a plain forward (all prompt) would give other numbers."""
    model, tokenizer = copilot_model()
    lm = CopilotLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    context = tokenizer("12+7=", add_special_tokens=False)["input_ids"]
    continuation, expected = fused_greedy(model, context, answer_start=len(context))
    assert_scored_as_generated(lm, context, continuation, expected, len(tokenizer))
    with torch.no_grad():
        as_prompt = torch.log_softmax(model(input_ids=torch.tensor([context + continuation])).logits[0].float(), -1)
    plain = sum(as_prompt[len(context) - 1 + i, token] for i, token in enumerate(continuation)).item()
    assert plain != pytest.approx(expected, abs=1e-3)


def test_scoring_window_matches_lm_eval():
    assert scoring_window([1, 2, 3], [4, 5], max_length=10) == ([1, 2, 3, 4], 3)
    # Cut from the left to max_length; the continuation still starts right after what is left of the context.
    assert scoring_window([1, 2, 3], [4, 5], max_length=3) == ([2, 3, 4], 2)
    with pytest.raises(ValueError, match="does not fit"):
        scoring_window([1], [2, 3, 4], max_length=2)


def test_copilot_lm_refuses_what_it_cannot_score():
    model, tokenizer = copilot_model()
    with pytest.raises(ValueError, match="Copilot adapter"):
        CopilotLM(pretrained=model.get_base_model(), tokenizer=tokenizer, device="cpu")
    with pytest.raises(ValueError, match="integer batch_size"):
        CopilotLM(pretrained=model, tokenizer=tokenizer, batch_size="auto", device="cpu")


@pytest.mark.slow
def test_lm_eval_command_line_with_a_saved_copilot(tmp_path, saved_model, task_manager):
    """`python -m tcopilot_peft.evaluation` is lm-eval's CLI with `--model tcopilot`; run offline, in a new process."""
    pilot_dir, adapter_dir = saved_model
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tcopilot_peft.evaluation", "run", "--model", "tcopilot"]
    command += ["--model_args", f"pretrained={pilot_dir},peft={adapter_dir}", "--device", "cpu", "--batch_size", "4"]
    command += ["--tasks", "tiny_sums_mc", "--include_path", str(tmp_path / "tasks")]
    command += ["--output_path", str(tmp_path / "results")]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny_sums_mc" in done.stdout and "Fused loglikelihood" in done.stderr
    saved = next((tmp_path / "results").rglob("results_*.json"))
    assert 0 <= json.loads(saved.read_text())["results"]["tiny_sums_mc"]["acc,none"] <= 1


def test_a_t5_continuation_is_scored_as_fused_generation_produced_it():
    """lm-eval's seq2seq backend: the context in the encoder, the continuation teacher-forced in the decoder, scored
    with the log-probabilities fused `generate()` chose it with."""
    from tests.evaluation.test_explain import t5_copilot_model

    model, tokenizer = t5_copilot_model()
    lm = CopilotLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    assert lm.backend == "seq2seq"
    context = tokenizer("12+7=")["input_ids"]
    continuation, expected = fused_greedy(model, context, answer_start=1)  # after the decoder start token
    assert_scored_as_generated(lm, context, continuation, expected, len(tokenizer))
