"""Fusion, error and loss math of Transformer Copilot, as small pure functions.

Notation: `z` are the Pilot's next-token logits, `p̂ = softmax(z)`, `y` the gold next token, and the Pilot's
token-level error is ℓ = onehot(y) − p̂ (the paper's Eq. 4). The Copilot outputs a correction `f` over the vocabulary,
which inference fuses into the Pilot's prediction (logit space z + λf, or the paper's probability space, Eq. 8). What
`f` learns depends on the loss: by default the log-odds correction that minimises the fused prediction's
cross-entropy (`"fused_ce"`); with the paper's objective, a regression of ℓ itself (`"rmse"`, Eq. 7).

Nothing here materialises a dense one-hot or a dense ℓ: the Copilot's input ℓ·E and its losses are rewritten in terms
of the gold id and p̂ (dense, or sparse top-k as kept in the Mistake Log).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


IGNORE_INDEX = -100
# The Copilot's training objectives: "fused_ce" (the default), and the paper's regression onto ℓ ("rmse", Eq. 7) with
# its squared variant ("mse").
COPILOT_LOSSES = ("fused_ce", "rmse", "mse")


def undefined_predictions(logits: torch.Tensor) -> torch.Tensor | None:
    """Where the Pilot's next-token prediction is undefined: its logits there hold a NaN or a `+inf`, or no finite
    value. A `-inf` beside finite logits is a mask (probability 0), not a fault.

    Args:
        logits (`torch.Tensor` of shape `(..., vocab)`): the Pilot's logits.

    Returns:
        `None` when every logit is finite, decided by one `isfinite().all()` pass (the common case does nothing per
        position); else a `torch.BoolTensor` of shape `logits.shape[:-1]`, possibly all False (only masks).
    """
    if bool(torch.isfinite(logits).all()):
        return None
    return (logits.isnan() | (logits == float("inf"))).any(-1) | (logits == float("-inf")).all(-1)


def fuse_logits(
    pilot_logits: torch.Tensor,
    correction: torch.Tensor,
    fusion_lambda: float,
    mode: str,
    prob_floor: float = 1e-10,
    undefined: torch.Tensor | None | bool = True,
) -> torch.Tensor:
    """Fuse the Copilot's correction into the Pilot's logits.

    Args:
        pilot_logits (`torch.Tensor` of shape `(..., vocab)`): the Pilot's logits `z`.
        correction (`torch.Tensor` of shape `(..., vocab)`): the Copilot's output `f`.
        fusion_lambda (`float`): λ. With λ = 0 the Pilot's logits are returned unchanged (the same tensor).
        mode (`str`): `"logit"` gives z + λf; `"prob"` gives log(renormalise(clamp(softmax(z) + λf, floor))).
        prob_floor (`float`): lower clamp of fused probabilities in `"prob"` mode.
        undefined (`torch.Tensor`, `None` or `True`): `undefined_predictions(pilot_logits)` when the caller has it
            already (so the logits are checked once), `True` to check here.

    Returns:
        `torch.Tensor` with the dtype of `pilot_logits`. Where the Pilot's prediction is undefined (see
        `undefined_predictions`) the Pilot's logits are returned unchanged, and `-inf` logits (masks) stay `-inf`.
    """
    if fusion_lambda == 0:
        return pilot_logits
    if undefined is True:
        undefined = undefined_predictions(pilot_logits)
    z = pilot_logits.float()
    # The common case (all finite) skips every masking pass over the |V|-sized rows.
    finite = None if undefined is None else torch.isfinite(z)
    f = correction.float()
    if mode == "logit":
        fused = torch.add(z, f, alpha=fusion_lambda)
    elif mode == "prob":
        fused = _fuse_probabilities(z, f, fusion_lambda, prob_floor, finite)
    else:
        raise ValueError(f"fusion_mode must be 'logit' or 'prob', got {mode!r}.")
    if finite is not None:
        fused = torch.where(finite & ~undefined.unsqueeze(-1), fused, z)
    return fused.to(pilot_logits.dtype)


def _fuse_probabilities(
    z: torch.Tensor, f: torch.Tensor, fusion_lambda: float, prob_floor: float, finite: torch.Tensor | None
) -> torch.Tensor:
    """log(renormalise(clamp(softmax(z) + λf, floor))); `finite` masks non-finite logits (None when all are finite).

    Without autograd the |V|-sized rows are updated in place (generation's fast path). Under autograd every step is
    out of place: softmax's backward reads its own output, which the in-place steps would overwrite.
    """
    # Non-finite logits take no probability mass, so one bad entry cannot turn the whole row into NaN.
    probs = torch.softmax(z if finite is None else z.masked_fill(~finite, float("-inf")), dim=-1)
    if torch.is_grad_enabled() and (z.requires_grad or f.requires_grad):
        if finite is not None:
            probs = probs.nan_to_num(0.0)
        fused = torch.add(probs, f, alpha=fusion_lambda).clamp_min(prob_floor)
        if finite is None:
            return (fused / fused.sum(dim=-1, keepdim=True).clamp_min(prob_floor)).log()
        fused = fused.masked_fill(~finite, 0.0)
        # The masked entries are replaced by the Pilot's own logits afterwards; taking the log of 1 there instead of 0
        # keeps their backward finite (log's gradient at 0 would turn the whole row's gradient into NaN).
        ratio = fused / fused.sum(dim=-1, keepdim=True).clamp_min(prob_floor)
        return torch.where(finite, ratio, 1.0).log()
    if finite is not None:
        probs.nan_to_num_(0.0)
    fused = probs.add_(f, alpha=fusion_lambda).clamp_min_(prob_floor)
    if finite is not None:
        fused.masked_fill_(~finite, 0.0)
    return fused.div_(fused.sum(dim=-1, keepdim=True).clamp_min_(prob_floor)).log_()


@dataclass
class PilotPrediction:
    """The Pilot's next-token distribution p̂ at some positions, dense or in the Mistake Log's sparse form.

    Dense: `log_probs` of shape `(..., vocab)`. Sparse: the top-k probabilities and ids `(..., k)` plus the gold
    token's log-probability `(...,)` (the fused cross-entropy needs it even when the gold token is outside the top-k).
    Leading dimensions are per position `(B, T, ...)` or packed at the target positions `(N, ...)`.
    """

    log_probs: torch.Tensor | None = None
    topk_probs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    gold_log_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.log_probs is None and (self.topk_probs is None or self.topk_ids is None):
            raise ValueError("PilotPrediction needs either dense `log_probs` or `topk_probs` and `topk_ids`.")

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> PilotPrediction:
        """Dense p̂ from the Pilot's logits, detached: nothing computed from it sends a gradient to the Pilot."""
        return cls(log_probs=torch.log_softmax(logits.detach().float(), dim=-1))

    @property
    def is_dense(self) -> bool:
        return self.log_probs is not None

    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    def at(self, valid: torch.Tensor) -> PilotPrediction:
        """The prediction at the positions where `valid` is true, packed; an already packed one is returned as is."""
        fields = {}
        for name in ("log_probs", "topk_probs", "topk_ids", "gold_log_probs"):
            value = getattr(self, name)
            per_position = value is not None and value.shape[: valid.dim()] == valid.shape
            fields[name] = value[valid] if per_position else value
        return PilotPrediction(**fields)


def error_embedding(embedding_weight: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction):
    """ℓ·E = E[y] − p̂·E, the Pilot's error projected through the (frozen) embedding matrix E, without a dense ℓ.

    Args:
        embedding_weight (`torch.Tensor` of shape `(vocab, hidden)`): E.
        target_ids (`torch.LongTensor` of shape `(...)`): gold ids; positions equal to -100 give a zero vector.
        prediction (`PilotPrediction`): p̂ at the same positions (the sparse form drops the mass outside the top-k).

    Returns:
        `torch.Tensor` of shape `(..., hidden)` in float32.
    """
    weight = embedding_weight.float()
    valid = target_ids != IGNORE_INDEX
    gold = weight[target_ids.clamp_min(0)]
    if prediction.is_dense:
        expected = prediction.probs() @ weight
    else:
        expected = (prediction.topk_probs.float().unsqueeze(-1) * weight[prediction.topk_ids]).sum(dim=-2)
    return (gold - expected) * valid.unsqueeze(-1)


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


def copilot_loss(
    correction: torch.Tensor, target_ids: torch.Tensor, prediction: PilotPrediction, kind: str = "fused_ce"
) -> torch.Tensor:
    """The Copilot's loss, averaged over valid tokens (`target_ids != -100`).

    `kind="fused_ce"` (the default) is the cross-entropy of the logit-fused prediction softmax(log p̂ + f) on the
    gold token: the Copilot learns the log-odds correction that the Pilot's own prediction lacks, as gradient boosting
    with log loss does. `kind="rmse"` is the paper's Eq. 7 (the per-token, unsquared L2 norm ||f − ℓ||), averaged
    over tokens; `kind="mse"` is the per-token squared norm. Returns a scalar (zero, still differentiable, when there
    is no valid token).
    """
    valid = target_ids != IGNORE_INDEX
    if kind == "fused_ce":
        per_token = fused_cross_entropy(correction, target_ids, prediction)
    elif kind in ("rmse", "mse"):
        distance = error_distance(correction, target_ids, prediction)
        per_token = distance if kind == "rmse" else distance.square()
    else:
        raise ValueError(f"Copilot loss kind must be one of {COPILOT_LOSSES}, got {kind!r}.")
    count = valid.sum()
    return torch.where(valid, per_token, 0.0).sum() / count.clamp_min(1)


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets per position: `targets[:, t] = labels[:, t + 1]`, with -100 at the last position."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)
