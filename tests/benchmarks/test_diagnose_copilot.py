"""The diagnosis script's scoring: per-item cross-entropy sums that add up to the token mean, λ and w chosen on
validation only, skills against the right Pilot, and paired differences with the right sign."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import diagnose_copilot as diagnosis  # noqa: E402


def tokens(seed: int = 0, count: int = 7, vocab: int = 5) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "pilot": torch.randn(count, vocab, generator=generator).log_softmax(-1),
        "correction": torch.randn(count, vocab, generator=generator),
        "gold": torch.randint(vocab, (count,), generator=generator),
        "item": torch.tensor([0, 0, 0, 1, 1, 2, 2]),
    }


def test_item_sums_add_up_to_the_token_mean_cross_entropy():
    t = tokens()
    sums = diagnosis.item_cross_entropy(t["pilot"], t, items=3)
    expected = torch.nn.functional.cross_entropy(t["pilot"], t["gold"], reduction="sum").item()
    assert sum(sums) == pytest.approx(expected, rel=1e-5)
    assert diagnosis.token_counts(t, 3) == [3, 2, 2]
    assert diagnosis.mean_ce(sums, [3, 2, 2]) == pytest.approx(expected / 7, rel=1e-5)


def test_a_zero_correction_scores_as_the_pilot_at_every_lambda():
    t = tokens()
    t["correction"] = torch.zeros_like(t["correction"])
    scores = diagnosis.fused_scores(t, items=3)
    assert "1.0" in scores["fused"]
    for sums in scores["fused"].values():
        assert sums == pytest.approx(scores["pilot"])


def test_the_ensemble_adds_w_times_the_small_models_log_probabilities():
    t = tokens()
    small = {"small": tokens(seed=1)["pilot"]}
    scores = diagnosis.ensemble_scores(t, small, items=3)
    fused = (t["pilot"] + 2.0 * small["small"]).log_softmax(-1)
    expected = -fused.gather(-1, t["gold"][:, None]).sum().item()
    assert sum(scores["fused"]["2.0"]) == pytest.approx(expected, rel=1e-5)
    assert sum(scores["small"]) == pytest.approx(
        torch.nn.functional.cross_entropy(small["small"], t["gold"], reduction="sum").item(), rel=1e-5
    )


def unit(validation: dict, test: dict, pilot_test: float = 1.0) -> dict:
    """One arm's scores of a single item of one token per split: λ → summed CE."""
    return {
        "validation": {"tokens": [1], "pilot": [1.0], "fused": {k: [v] for k, v in validation.items()}},
        "test": {"tokens": [1], "pilot": [pilot_test], "fused": {k: [v] for k, v in test.items()}},
    }


def test_lambda_is_chosen_on_validation_and_the_skill_read_on_test():
    # Validation prefers λ = 2.0; test would prefer 0.3, which must not be chosen.
    arm = unit({"0.3": 0.9, "1.0": 0.8, "2.0": 0.5}, {"0.3": 0.1, "1.0": 0.7, "2.0": 0.6})
    skills = diagnosis.arm_skills({"default": arm}, "default")
    assert skills["chosen"] == "2.0"
    assert skills["chosen_skill"] == pytest.approx(1 - 0.6)
    assert skills["unit_skill"] == pytest.approx(1 - 0.7)


def test_the_ensemble_is_measured_against_the_default_arms_pilot():
    default = unit({"1.0": 1.0}, {"1.0": 1.0}, pilot_test=2.0)
    ensemble = {
        "validation": {"fused": {"1.0": [0.5]}, "small": [0.7]},
        "test": {"fused": {"1.0": [1.0]}, "small": [1.5]},
    }
    skills = diagnosis.arm_skills({"default": default, "ensemble": ensemble}, "ensemble")
    assert skills["chosen_skill"] == pytest.approx(0.5)
    assert skills["small_skill"] == pytest.approx(0.25)


def test_a_better_arm_has_a_negative_paired_difference():
    default = unit({"1.0": 0.5}, {"1.0": 0.5})
    better = unit({"1.0": 0.4}, {"1.0": 0.3})
    for item in ("validation", "test"):  # two items, so the interval has a spread
        for scores in (default, better):
            scores[item]["tokens"] = [1, 1]
            scores[item]["fused"]["1.0"] = scores[item]["fused"]["1.0"] * 2
    better["test"]["fused"]["1.0"] = [0.3, 0.2]
    text = diagnosis.per_item_difference({"0": {"default": default, "token": better}}, ["0"], "token")
    assert text.startswith("-25.00 [")


def test_the_own_cross_entropy_objective_adds_the_copilots_own_loss_and_its_head_form_agrees():
    from tcopilot_peft.fusion import PilotPrediction, fused_cross_entropy

    generator = torch.Generator().manual_seed(0)
    hidden, head = torch.randn(6, 4, generator=generator), torch.randn(9, 4, generator=generator)
    gold = torch.randint(9, (6,), generator=generator)
    prediction = PilotPrediction.from_logits(torch.randn(6, 9, generator=generator))
    correction = hidden @ head.T
    own = torch.nn.functional.cross_entropy(correction, gold, reduction="none")
    expected = fused_cross_entropy(correction, gold, prediction) + own
    assert diagnosis.fused_and_own_cross_entropy(correction, gold, prediction) == pytest.approx(
        expected.tolist(), rel=1e-5
    )
    from_head = diagnosis.fused_and_own_cross_entropy_from_head(hidden, head, gold, prediction)
    assert from_head.tolist() == pytest.approx(expected.tolist(), rel=1e-4)


def test_importing_the_script_registers_no_objective():
    """The benchmark's own objective is registered when the script runs, so importing it changes no later test."""
    from tcopilot_peft.fusion import OBJECTIVES

    assert diagnosis.OWN_CE not in OBJECTIVES


def test_the_accuracy_table_pairs_each_arm_with_its_own_pilot():
    units = {
        "0": {"default": {"pilot": [True, False, False, False], "fused": [True, True, False, False], "chosen": "1.0"}},
        "1": {"default": {"pilot": [True, True, False, False], "fused": [True, False, False, False], "chosen": "0.3"}},
    }
    row = next(line for line in diagnosis.accuracy_table(units) if line.startswith("| default"))
    assert "| 0, 1 | 37.5 ± 17.7 | 37.5 ± 17.7 | 0.0 ± 35.4 | +25.0, -25.0 | 1.0, 0.3 |" in row
