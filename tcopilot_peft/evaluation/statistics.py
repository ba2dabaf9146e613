"""Paired statistics for Pilot-vs-fused comparisons on the same items, and the one validation choice rule.

Every comparison in this package is paired: the Pilot alone and Pilot + Copilot answer the same items from the same
model, so gains are per-item differences (`paired_gain`, `mcnemar_p_value`), and settings such as λ are chosen on a
validation split with one rule (`choose_on_validation`), never on test data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar


Setting = TypeVar("Setting", bound=Hashable)


def paired_gain(pilot: Sequence[bool], fused: Sequence[bool], seed: int = 0, resamples: int = 2000) -> dict:
    """Mean accuracy gain (points) with a bootstrap 95 % interval over items, and the discordant pair counts.

    Args:
        pilot, fused (`Sequence[bool]`): per-item correctness of each arm, item i the same item in both.
        seed (`int`): the bootstrap's seed.
        resamples (`int`): bootstrap resamples of the items.
    """
    if len(pilot) != len(fused) or not pilot:
        raise ValueError(f"paired_gain needs two equally long, non-empty lists; got {len(pilot)} and {len(fused)}.")
    differences = [int(f) - int(p) for p, f in zip(pilot, fused)]
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {
        "gain_points": 100 * sum(differences) / n,
        "ci95_points": [100 * means[int(0.025 * resamples)], 100 * means[int(0.975 * resamples) - 1]],
        "fixed_by_copilot": sum(d > 0 for d in differences),
        "broken_by_copilot": sum(d < 0 for d in differences),
    }


def mcnemar_p_value(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs (a binomial test of `only_first` out of both at 1/2)."""
    total = only_first + only_second
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(min(only_first, only_second) + 1)) / 2**total
    return min(1.0, 2 * tail)


def choose_on_validation(scores: Mapping[Setting, float], weight: Callable[[Setting], float] = float) -> Setting:
    """The setting with the best validation score; ties go to the one whose `weight(setting)` (λ, an ensemble
    weight) is nearest 1, the correction at its trained scale, then to the first listed."""
    if not scores:
        raise ValueError("choose_on_validation needs at least one scored setting.")
    return max(scores, key=lambda setting: (scores[setting], -abs(weight(setting) - 1.0)))
