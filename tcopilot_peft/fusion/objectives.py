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
from .head import head_logsumexp
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
    # Known tokens are masked with the lowest finite float, not -inf, so that a row without a tail (a top-k covering
    # the vocabulary) keeps a finite log-sum-exp and gradient, which `_sparse_fused_cross_entropy` then discards.
    tail_f = f.scatter(-1, prediction.topk_ids, torch.finfo(f.dtype).min)
    tail_f.scatter_(-1, y, torch.finfo(f.dtype).min)
    f_top, f_y = f.gather(-1, prediction.topk_ids), f.gather(-1, y).squeeze(-1)
    tail = torch.logsumexp(tail_f, dim=-1)
    return _sparse_fused_cross_entropy(f_top, f_y, tail, target_ids, prediction, f.shape[-1])


def fused_cross_entropy_from_head(
    hidden: torch.Tensor, head_weight: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction
) -> torch.Tensor:
    """`fused_cross_entropy` of the correction f = W·u, computed from u and W without building f: its |V|-sized
    log-sum-exp runs in vocabulary chunks (`head_logsumexp`), and f is read only at the ids the loss names.

    Args:
        hidden (`torch.Tensor` of shape `(N, d)`): the Copilot's output u at the target positions.
        head_weight (`torch.Tensor` of shape `(vocab, d)`): the Pilot's LM head W (no gradient reaches it).
        target_ids, prediction: as for `fused_cross_entropy`, packed at the same `N` positions.
    """
    u = hidden.to(head_weight.dtype)
    y = target_ids.clamp_min(0)
    f_y = (u * head_weight[y]).sum(-1).float()
    if prediction.is_dense:
        log_p = prediction.log_probs
        return head_logsumexp(u, head_weight, bias=log_p) - log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1) - f_y
    ids = prediction.topk_ids
    f_top = torch.einsum("nd,nkd->nk", u, head_weight[ids]).float()
    tail = head_logsumexp(u, head_weight, excluded=torch.cat([ids, y.unsqueeze(-1)], dim=-1))
    return _sparse_fused_cross_entropy(f_top, f_y, tail, target_ids, prediction, head_weight.shape[0])


def _sparse_fused_cross_entropy(
    f_top: torch.Tensor,
    f_y: torch.Tensor,
    tail_logsumexp: torch.Tensor,
    target_ids: torch.Tensor,
    prediction: PilotPrediction,
    vocab_size: int,
) -> torch.Tensor:
    """The sparse fused cross-entropy from f at the top-k ids and at y, and the log-sum-exp of f over the tail."""
    if prediction.gold_log_probs is None:
        raise ValueError("The sparse fused cross-entropy needs the gold token's log-probability (`gold_log_probs`).")
    ids, gold_log_p = prediction.topk_ids, prediction.gold_log_probs.float()
    gold_in_top = ids == target_ids.clamp_min(0).unsqueeze(-1)
    gold_outside = ~gold_in_top.any(-1)
    # Log-probabilities of the known tokens; the gold one always from its own float32 log-probability (its 16-bit
    # top-k copy can underflow to 0 for a confidently wrong Pilot, which would leave the loss unbounded below).
    log_p_top = torch.where(gold_in_top, gold_log_p.unsqueeze(-1), prediction.topk_probs.float().log())
    gold_term = torch.where(gold_outside, gold_log_p + f_y, float("-inf")).unsqueeze(-1)
    known = torch.cat([log_p_top + f_top, gold_term], dim=-1)
    known_mass = log_p_top.exp().sum(-1) + torch.where(gold_outside, gold_log_p.exp(), 0.0)
    # The tail: every token outside the top-k and the gold one, each given an equal share of the remaining mass.
    tail_size = vocab_size - ids.shape[-1] - gold_outside.long()  # the top-k ids are distinct; y may be among them
    log_tail_mean = tail_logsumexp - tail_size.clamp_min(1).float().log()
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
        per_token_from_head (`Callable`, *optional*): the same loss from the Copilot's output u and the LM head W,
            `(u, head_weight, target_ids, prediction) -> loss`, without building f = W·u (training needs only the
            loss); unset, f is built and `per_token` reads it.
    """

    name: str
    help: str
    per_token: Callable[[torch.Tensor, torch.Tensor, PilotPrediction], torch.Tensor]
    fusion_mode: str
    inference_feed: str
    fusion_modes: tuple[str, ...]
    diagnostics: tuple[str, ...]
    per_token_from_head: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PilotPrediction], torch.Tensor] | None = (
        None
    )

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
        per_token_from_head=fused_cross_entropy_from_head,
    )
)
# The paper's objective and its squared variant keep the paper's probability-space fusion (Eq. 8) and Algorithm 2's
# feed; `f` estimates ℓ, so the regression skill means something for them.
REGRESSION_SETTINGS = dict(
    fusion_mode="prob",
    inference_feed="copilot",
    fusion_modes=("prob", "logit"),
    diagnostics=("copilot_ce_skill", "copilot_rmse_skill"),
)
register_objective(
    Objective(
        name="rmse",
        help="the paper's objective, the per-token L2 norm ||f − ℓ|| (Eq. 7)",
        per_token=error_distance,
        **REGRESSION_SETTINGS,
    )
)
register_objective(
    Objective(
        name="mse",
        help="the squared norm ||f − ℓ||², otherwise as 'rmse'",
        per_token=error_distance_squared,
        **REGRESSION_SETTINGS,
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
    return _token_mean(get_objective(kind).per_token(correction, target_ids, prediction), target_ids)


def copilot_loss_from_head(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    target_ids: torch.Tensor,
    prediction: PilotPrediction,
    kind: str = DEFAULT_OBJECTIVE,
) -> torch.Tensor:
    """`copilot_loss` of the correction f = W·u through the LM head (`torch.nn.functional.linear(u, W)` in W's dtype,
    then float32), without building f where the objective can (`Objective.per_token_from_head`).

    Args:
        hidden (`torch.Tensor` of shape `(N, d)`): the Copilot's output u at the target positions.
        head_weight (`torch.Tensor` of shape `(vocab, d)`): the Pilot's LM head W, detached.
        target_ids, prediction, kind: as for `copilot_loss`, packed at the same `N` positions.
    """
    objective = get_objective(kind)
    if objective.per_token_from_head is not None:
        per_token = objective.per_token_from_head(hidden, head_weight, target_ids, prediction)
    else:
        correction = torch.nn.functional.linear(hidden.to(head_weight.dtype), head_weight).float()
        per_token = objective.per_token(correction, target_ids, prediction)
    return _token_mean(per_token, target_ids)


def _token_mean(per_token: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    valid = target_ids != IGNORE_INDEX
    return torch.where(valid, per_token, 0.0).sum() / valid.sum().clamp_min(1)
