"""The Copilot's training objectives, one `Objective` each in the `OBJECTIVES` registry.

An objective says what the Copilot's correction `f` learns: its per-token loss, the fusion space and inference feed
it is trained for (the defaults of `CopilotConfig.fusion_mode` and `inference_feed`), and which teacher-forced
diagnostics measure it. `CopilotConfig.copilot_loss`'s choices, help and defaults, the trainers' override and the
CLI's choices all read the registry: adding an objective is one `register_objective(...)` call.

The per-token losses never build a dense one-hot or ℓ = onehot(y) − p̂: they are rewritten in terms of the gold id
and p̂ (dense, or sparse top-k as kept in the Mistake Log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .fuse import FUSION_MODES
from .prediction import IGNORE_INDEX, PilotPrediction


# What the Copilot reads on generated positions: its own previous correction (Algorithm 2) or onehot(ŷ) − p̂ of the
# token actually generated (what it reads in training).
INFERENCE_FEEDS = ("copilot", "pilot_error")


def error_distance(correction: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction) -> torch.Tensor:
    """Per-token ||f − ℓ||₂ with ℓ = onehot(y) − p̂, expanded so that no dense one-hot or ℓ is built.

    ||f − ℓ||² = ||f||² + 2 f·p̂ + ||p̂||² − 2 f_y − 2 p̂_y + 1.

    Returns:
        `torch.Tensor` of shape `target_ids.shape` (float32); meaningless where `target_ids == -100`.
    """
    f = correction.float()
    y = target_ids.clamp_min(0).unsqueeze(-1)
    f_y = f.gather(-1, y).squeeze(-1)
    if prediction.is_dense:
        p = prediction.probs()
        f_dot_p = (f * p).sum(-1)
        p_sq = (p * p).sum(-1)
        p_y = p.gather(-1, y).squeeze(-1)
    else:
        v, ids = prediction.topk_probs.float(), prediction.topk_ids
        f_dot_p = (f.gather(-1, ids) * v).sum(-1)
        p_sq = (v * v).sum(-1)
        p_y = (v * (ids == y)).sum(-1)
    squared = (f * f).sum(-1) + 2 * f_dot_p + p_sq - 2 * f_y - 2 * p_y + 1
    # Rounding can push an exact-zero distance slightly negative; the epsilon keeps sqrt's gradient finite.
    return torch.sqrt(squared.clamp_min(0) + 1e-12)


def fused_cross_entropy(correction: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction):
    """Per-token −log softmax(log p̂ + f)_y: the cross-entropy of the logit-fused prediction (λ = 1) on the gold token.

    Dense p̂ gives it exactly. The Mistake Log's sparse form knows p̂ on the top-k set S and at the gold token y; the
    remaining mass r = 1 − p̂(S ∪ {y}) is spread evenly over the other tokens, so the normaliser
    Σ_v p̂_v e^{f_v} is approximated by Σ_{S ∪ {y}} p̂_v e^{f_v} + r · mean_{v ∉ S ∪ {y}} e^{f_v}. It is exact when the
    top-k holds all the mass and close whenever the tail is small (the trainer reports the gap on its own batches).

    Returns:
        `torch.Tensor` of shape `target_ids.shape` (float32); meaningless where `target_ids == -100`.
    """
    f = correction.float()
    y = target_ids.clamp_min(0).unsqueeze(-1)
    if prediction.is_dense:
        fused = prediction.log_probs + f
        return torch.logsumexp(fused, dim=-1) - fused.gather(-1, y).squeeze(-1)
    if prediction.gold_log_probs is None:
        raise ValueError("The sparse fused cross-entropy needs the gold token's log-probability (`gold_log_probs`).")
    ids, gold_log_p = prediction.topk_ids, prediction.gold_log_probs.float()
    f_y = f.gather(-1, y).squeeze(-1)
    gold_in_top = ids == y
    gold_outside = ~gold_in_top.any(-1)
    # Log-probabilities of the known tokens; the gold one always from its own float32 log-probability (its 16-bit
    # top-k copy can underflow to 0 for a confidently wrong Pilot, which would leave the loss unbounded below).
    log_p_top = torch.where(gold_in_top, gold_log_p.unsqueeze(-1), prediction.topk_probs.float().log())
    gold_term = torch.where(gold_outside, gold_log_p + f_y, float("-inf")).unsqueeze(-1)
    known = torch.cat([log_p_top + f.gather(-1, ids), gold_term], dim=-1)
    known_mass = log_p_top.exp().sum(-1) + torch.where(gold_outside, gold_log_p.exp(), 0.0)
    # The tail: every token outside the top-k and the gold one, each given an equal share of the remaining mass. This
    # is the one |V|-sized part of the loss (a hot path): one masked copy of f and one log-sum-exp over it. Known
    # tokens are masked with the lowest finite float, not -inf, so that a row without a tail (a top-k covering the
    # vocabulary) keeps a finite log-sum-exp and gradient, which `has_tail` then discards.
    tail_f = f.scatter(-1, ids, torch.finfo(f.dtype).min)
    tail_f.scatter_(-1, y, torch.finfo(f.dtype).min)
    tail_size = f.shape[-1] - ids.shape[-1] - gold_outside.long()  # the top-k ids are distinct; y may be among them
    log_tail_mean = torch.logsumexp(tail_f, dim=-1) - tail_size.clamp_min(1).float().log()
    log_tail = torch.where(tail_size > 0, (1.0 - known_mass).clamp_min(0.0).log() + log_tail_mean, float("-inf"))
    log_normaliser = torch.logsumexp(torch.cat([known, log_tail.unsqueeze(-1)], dim=-1), dim=-1)
    return log_normaliser - gold_log_p - f_y


@dataclass(frozen=True)
class Objective:
    """One way of training the Copilot.

    Args:
        name (`str`): the value of `CopilotConfig.copilot_loss` that selects it.
        help (`str`): one line for the config's and the command line's help.
        per_token (`Callable`): `(correction, target_ids, prediction) -> loss` of shape `target_ids.shape`, float32,
            differentiable in `correction`; its value where `target_ids == -100` is ignored.
        fusion_mode (`str`): the fusion space `f` is trained for, the default of `CopilotConfig.fusion_mode`.
        inference_feed (`str`): the default of `CopilotConfig.inference_feed`.
        fusion_modes (`tuple[str, ...]`): the fusion spaces in which `f` means something, its own first (where a
            sweep chooses a fusion on validation data).
        diagnostics (`tuple[str, ...]`): the teacher-forced skills of `evaluation.diagnostics` worth logging for
            it (`"copilot_ce_skill"` for every objective; `"copilot_rmse_skill"` only where `f` estimates ℓ).
    """

    name: str
    help: str
    per_token: Callable[[torch.Tensor, torch.Tensor, PilotPrediction], torch.Tensor]
    fusion_mode: str
    inference_feed: str
    fusion_modes: tuple[str, ...]
    diagnostics: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.fusion_mode not in FUSION_MODES or not set(self.fusion_modes) <= set(FUSION_MODES):
            raise ValueError(f"Objective {self.name!r}: fusion modes must be among {FUSION_MODES}.")
        if self.fusion_modes[:1] != (self.fusion_mode,):
            raise ValueError(f"Objective {self.name!r}: fusion_modes must start with its own {self.fusion_mode!r}.")
        if self.inference_feed not in INFERENCE_FEEDS:
            raise ValueError(f"Objective {self.name!r}: inference_feed must be one of {INFERENCE_FEEDS}.")


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add `objective` to `OBJECTIVES` (a name is registered once)."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"A Copilot objective named {objective.name!r} is already registered.")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    """The registered objective `name`, or a `ValueError` listing the registered ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"Copilot loss kind must be one of {tuple(OBJECTIVES)}, got {name!r}.")
    return OBJECTIVES[name]


def error_distance_squared(correction: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction):
    """Per-token ||f − ℓ||², the squared `error_distance`."""
    return error_distance(correction, target_ids, prediction).square()


register_objective(
    Objective(
        name="fused_ce",
        help="the cross-entropy of the logit-fused prediction softmax(log p̂ + f) (the default)",
        per_token=fused_cross_entropy,
        fusion_mode="logit",
        inference_feed="pilot_error",
        fusion_modes=("logit",),
        diagnostics=("copilot_ce_skill",),
    )
)
# The paper's objective keeps the paper's probability-space fusion (Eq. 8) and Algorithm 2's feed.
register_objective(
    Objective(
        name="rmse",
        help="the paper's objective, the per-token L2 norm ||f − ℓ|| (Eq. 7)",
        per_token=error_distance,
        fusion_mode="prob",
        inference_feed="copilot",
        fusion_modes=("prob", "logit"),
        diagnostics=("copilot_ce_skill", "copilot_rmse_skill"),
    )
)
register_objective(
    Objective(
        name="mse",
        help="the squared norm ||f − ℓ||², otherwise as 'rmse'",
        per_token=error_distance_squared,
        fusion_mode="prob",
        inference_feed="copilot",
        fusion_modes=("prob", "logit"),
        diagnostics=("copilot_ce_skill", "copilot_rmse_skill"),
    )
)
# The registered objectives' names, "fused_ce" (the default) first.
COPILOT_LOSSES = tuple(OBJECTIVES)
DEFAULT_OBJECTIVE = "fused_ce"


def copilot_loss(
    correction: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction, kind: str = DEFAULT_OBJECTIVE
) -> torch.Tensor:
    """The Copilot's loss, the objective `kind`'s per-token loss averaged over valid tokens (`target_ids != -100`).

    `kind="fused_ce"` (the default) is the cross-entropy of the logit-fused prediction softmax(log p̂ + f) on the
    gold token: the Copilot learns the log-odds correction that the Pilot's own prediction lacks, as gradient boosting
    with log loss does. `kind="rmse"` is the paper's Eq. 7 (the per-token, unsquared L2 norm ||f − ℓ||), averaged
    over tokens; `kind="mse"` is the per-token squared norm. Returns a scalar (zero, still differentiable, when there
    is no valid token).
    """
    per_token = get_objective(kind).per_token(correction, target_ids, prediction)
    valid = target_ids != IGNORE_INDEX
    return torch.where(valid, per_token, 0.0).sum() / valid.sum().clamp_min(1)
