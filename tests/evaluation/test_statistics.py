"""Paired statistics and the validation choice rule every λ / mode / ensemble weight goes through."""

import random

import pytest

from tcopilot_peft.evaluation.statistics import choose_on_validation, mcnemar_p_value, paired_gain


def test_paired_gain_counts_discordant_items_and_brackets_the_mean():
    rng = random.Random(0)
    pilot = [rng.random() < 0.5 for _ in range(300)]
    fused = [p or rng.random() < 0.1 for p in pilot]
    gain = paired_gain(pilot, fused)
    low, high = gain["ci95_points"]
    assert low <= gain["gain_points"] <= high and gain["broken_by_copilot"] == 0
    assert gain["fixed_by_copilot"] == sum(f and not p for p, f in zip(pilot, fused))
    assert gain["gain_points"] == pytest.approx(100 * gain["fixed_by_copilot"] / 300)


def test_paired_gain_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="equally long"):
        paired_gain([True, False], [True])


def test_mcnemar_exact_values():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(5, 0) == mcnemar_p_value(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p_value(3, 3) == 1.0
    assert mcnemar_p_value(10, 1) == pytest.approx(2 * 12 / 2**11)


def test_choice_takes_the_best_score_and_breaks_ties_towards_weight_one():
    assert choose_on_validation({0.5: 0.40, 1.0: 0.38, 2.0: 0.41}) == 2.0
    assert choose_on_validation({0.3: 0.4, 2.0: 0.4, 1.0: 0.4, 0.5: 0.4}) == 1.0
    assert choose_on_validation({0.5: 0.4, 1.5: 0.4}) == 0.5  # equally near 1: the first listed
    grid = {"prob/0.5": 0.3, "logit/1.0": 0.3, "logit/4.0": 0.2}
    assert choose_on_validation(grid, lambda key: float(key.rsplit("/", 1)[-1])) == "logit/1.0"
    with pytest.raises(ValueError, match="at least one"):
        choose_on_validation({})
