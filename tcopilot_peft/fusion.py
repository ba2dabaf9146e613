"""Fusion and error math of Transformer Copilot, as small pure functions.

Notation: `z` are the Pilot's next-token logits, `p̂ = softmax(z)`, `y` the gold next token, and the Pilot's
token-level error is ℓ = onehot(y) − p̂ (the paper's Eq. 4). The Copilot predicts `f ≈ ℓ`, and inference fuses
`f` into the Pilot's prediction (Eq. 8, or its logit-space variant).

Nothing here materialises a dense one-hot or a dense ℓ: both the Copilot's input ℓ·E and its loss ||f − ℓ|| are
rewritten in terms of the gold id and p̂ (dense, or sparse top-k as kept in the Mistake Log).
"""

from __future__ import annotations

import torch


IGNORE_INDEX = -100


def fuse_logits(
    pilot_logits: torch.Tensor,
    correction: torch.Tensor,
    fusion_lambda: float,
    mode: str,
    prob_floor: float = 1e-10,
) -> torch.Tensor:
    """Fuse the Copilot's correction into the Pilot's logits.

    Args:
        pilot_logits (`torch.Tensor` of shape `(..., vocab)`): the Pilot's logits `z`.
        correction (`torch.Tensor` of shape `(..., vocab)`): the Copilot's output `f`.
        fusion_lambda (`float`): λ. With λ = 0 the Pilot's logits are returned unchanged (the same tensor).
        mode (`str`): `"logit"` gives z + λf; `"prob"` gives log(renormalise(clamp(softmax(z) + λf, floor))).
        prob_floor (`float`): lower clamp of fused probabilities in `"prob"` mode.

    Returns:
        `torch.Tensor` with the dtype of `pilot_logits`. Entries where the Pilot's logit is not finite (for example
        `-inf` from a logits mask, or NaN) are passed through unchanged.
    """
    if fusion_lambda == 0:
        return pilot_logits
    z = pilot_logits.float()
    finite = torch.isfinite(z)
    all_finite = bool(finite.all())  # the common case skips every masking pass over the |V|-sized rows
    f = correction.float()
    if mode == "logit":
        fused = torch.add(z, f, alpha=fusion_lambda)
    elif mode == "prob":
        fused = _fuse_probabilities(z, f, fusion_lambda, prob_floor, None if all_finite else finite)
    else:
        raise ValueError(f"fusion_mode must be 'logit' or 'prob', got {mode!r}.")
    if not all_finite:
        fused = torch.where(finite, fused, z)
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
        if finite is not None:
            fused = fused.masked_fill(~finite, 0.0)
        return (fused / fused.sum(dim=-1, keepdim=True).clamp_min(prob_floor)).log()
    if finite is not None:
        probs.nan_to_num_(0.0)
    fused = probs.add_(f, alpha=fusion_lambda).clamp_min_(prob_floor)
    if finite is not None:
        fused.masked_fill_(~finite, 0.0)
    return fused.div_(fused.sum(dim=-1, keepdim=True).clamp_min_(prob_floor)).log_()


def error_embedding(
    embedding_weight: torch.Tensor,
    target_ids: torch.Tensor,
    probs: torch.Tensor | None = None,
    topk_probs: torch.Tensor | None = None,
    topk_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """ℓ·E = E[y] − p̂·E, the Pilot's error projected through the (frozen) embedding matrix E, without a dense ℓ.

    Args:
        embedding_weight (`torch.Tensor` of shape `(vocab, hidden)`): E.
        target_ids (`torch.LongTensor` of shape `(...)`): gold ids; positions equal to -100 give a zero vector.
        probs (`torch.Tensor` of shape `(..., vocab)`, *optional*): dense p̂.
        topk_probs, topk_ids (`torch.Tensor` of shape `(..., k)`, *optional*): sparse p̂ (the Mistake Log's form).

    Returns:
        `torch.Tensor` of shape `(..., hidden)` in float32.
    """
    weight = embedding_weight.float()
    valid = target_ids != IGNORE_INDEX
    gold = weight[target_ids.clamp_min(0)]
    if probs is not None:
        expected = probs.float() @ weight
    elif topk_probs is not None and topk_ids is not None:
        expected = (topk_probs.float().unsqueeze(-1) * weight[topk_ids]).sum(dim=-2)
    else:
        raise ValueError("error_embedding needs either dense `probs` or `topk_probs` and `topk_ids`.")
    return (gold - expected) * valid.unsqueeze(-1)


def error_distance(
    correction: torch.Tensor,
    target_ids: torch.Tensor,
    probs: torch.Tensor | None = None,
    topk_probs: torch.Tensor | None = None,
    topk_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token ||f − ℓ||₂ with ℓ = onehot(y) − p̂, expanded so that no dense one-hot or ℓ is built.

    ||f − ℓ||² = ||f||² + 2 f·p̂ + ||p̂||² − 2 f_y − 2 p̂_y + 1.

    Returns:
        `torch.Tensor` of shape `target_ids.shape` (float32); meaningless where `target_ids == -100`.
    """
    f = correction.float()
    y = target_ids.clamp_min(0).unsqueeze(-1)
    f_y = f.gather(-1, y).squeeze(-1)
    if probs is not None:
        p = probs.float()
        f_dot_p = (f * p).sum(-1)
        p_sq = (p * p).sum(-1)
        p_y = p.gather(-1, y).squeeze(-1)
    elif topk_probs is not None and topk_ids is not None:
        v = topk_probs.float()
        f_dot_p = (f.gather(-1, topk_ids) * v).sum(-1)
        p_sq = (v * v).sum(-1)
        p_y = (v * (topk_ids == y)).sum(-1)
    else:
        raise ValueError("error_distance needs either dense `probs` or `topk_probs` and `topk_ids`.")
    squared = (f * f).sum(-1) + 2 * f_dot_p + p_sq - 2 * f_y - 2 * p_y + 1
    # Rounding can push an exact-zero distance slightly negative; the epsilon keeps sqrt's gradient finite.
    return torch.sqrt(squared.clamp_min(0) + 1e-12)


def copilot_loss(
    correction: torch.Tensor,
    target_ids: torch.Tensor,
    probs: torch.Tensor | None = None,
    topk_probs: torch.Tensor | None = None,
    topk_ids: torch.Tensor | None = None,
    kind: str = "rmse",
) -> torch.Tensor:
    """The Copilot's regression loss against ℓ, averaged over valid tokens (`target_ids != -100`).

    `kind="rmse"` is the paper's Eq. 7 (the per-token, unsquared L2 norm), averaged over tokens; `kind="mse"` is the
    per-token squared norm. Returns a scalar (zero, still differentiable, when there is no valid token).
    """
    valid = target_ids != IGNORE_INDEX
    distance = error_distance(correction, target_ids, probs, topk_probs, topk_ids)
    if kind == "rmse":
        per_token = distance
    elif kind == "mse":
        per_token = distance.square()
    else:
        raise ValueError(f"Copilot loss kind must be 'rmse' or 'mse', got {kind!r}.")
    count = valid.sum()
    return (per_token * valid).sum() / count.clamp_min(1)


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets per position: `targets[:, t] = labels[:, t + 1]`, with -100 at the last position."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)


def copilot_skill(distance_copilot: torch.Tensor, distance_zero: torch.Tensor) -> float:
    """1 − RMSE(f, ℓ) / RMSE(0, ℓ): above 0 the Copilot beats predicting no correction."""
    rmse_copilot = distance_copilot.square().mean().sqrt()
    rmse_zero = distance_zero.square().mean().sqrt()
    return float(1.0 - rmse_copilot / rmse_zero.clamp_min(1e-12))
