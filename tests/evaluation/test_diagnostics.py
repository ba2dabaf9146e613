"""Teacher-forced diagnostics: a Copilot that corrects nothing has zero skill, and one that corrects has some."""

import pytest
import torch

from tcopilot_peft.evaluation.diagnostics import (
    completion_batches,
    copilot_ce_skill,
    copilot_rmse_skill,
    pilot_calibration,
)
from tests.evaluation.conftest import copilot_model


ROWS = [{"prompt": f"{a}+{b}=", "completion": f"{a + b}"} for a, b in [(12, 30), (45, 17), (3, 8), (60, 21)]]


def test_completion_batches_label_only_the_completion():
    _, tokenizer = copilot_model()
    batch, labels = next(completion_batches(tokenizer, ROWS, batch_size=4))
    for row, ids, label in zip(ROWS, batch["input_ids"], labels):
        prompt = len(tokenizer(row["prompt"]).input_ids)
        kept = label[label != -100]
        assert kept.tolist() == ids[prompt : prompt + len(kept)].tolist()
        assert tokenizer.decode(kept, skip_special_tokens=True) == row["completion"]


@torch.no_grad()
def test_a_copilot_that_corrects_nothing_has_zero_skill():
    model, tokenizer = copilot_model()
    model.base_model.active_network.output_proj.weight.zero_()  # f = 0 everywhere
    assert copilot_rmse_skill(model, tokenizer, ROWS) == pytest.approx(0.0, abs=1e-6)
    ce = copilot_ce_skill(model, tokenizer, ROWS)
    assert ce["fused_ce"] == pytest.approx(ce["pilot_ce"]) and ce["skill"] == pytest.approx(0.0, abs=1e-6)


@torch.no_grad()
def test_a_random_copilot_changes_the_fused_cross_entropy_and_calibration_is_bounded():
    model, tokenizer = copilot_model()
    ce = copilot_ce_skill(model, tokenizer, ROWS)
    assert ce["fused_ce"] != pytest.approx(ce["pilot_ce"])
    calibration = pilot_calibration(model, tokenizer, ROWS)
    assert 0.0 <= calibration["token_accuracy"] <= 1.0 and 0.0 <= calibration["expected_calibration_error"] <= 1.0
