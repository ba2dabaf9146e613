"""Fusion math: the Copilot's correction `f` fused into the Pilot's next-token logits `z`.

Logit space gives z + λf; probability space (the paper's Eq. 8) gives log(renormalise(clamp(softmax(z) + λf, floor))).
Where the Pilot's own prediction is undefined (a NaN, a `+inf`, or no finite logit) nothing is fused.
"""

from __future__ import annotations

import torch


# The spaces in which `fuse_logits` fuses: "logit" (z + λf) and "prob" (the paper's Eq. 8).
FUSION_MODES = ("logit", "prob")


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
) -> torch.Tensor:
    """Fuse the Copilot's correction into the Pilot's logits.

    Args:
        pilot_logits (`torch.Tensor` of shape `(..., vocab)`): the Pilot's logits `z`.
        correction (`torch.Tensor` of shape `(..., vocab)`): the Copilot's output `f`.
        fusion_lambda (`float`): λ. With λ = 0 the Pilot's logits are returned unchanged (the same tensor).
        mode (`str`): `"logit"` gives z + λf; `"prob"` gives log(renormalise(clamp(softmax(z) + λf, floor))).
        prob_floor (`float`): lower clamp of fused probabilities in `"prob"` mode.

    Returns:
        `torch.Tensor` with the dtype of `pilot_logits`. Where the Pilot's prediction is undefined (see
        `undefined_predictions`) the Pilot's logits are returned unchanged, and `-inf` logits (masks) stay `-inf`.
    """
    if fusion_lambda == 0:
        return pilot_logits
    undefined = undefined_predictions(pilot_logits)
    return fuse_logits_where_defined(pilot_logits, correction, fusion_lambda, mode, undefined, prob_floor)


def fuse_logits_where_defined(
    pilot_logits: torch.Tensor,
    correction: torch.Tensor,
    fusion_lambda: float,
    mode: str,
    undefined: torch.Tensor | None,
    prob_floor: float = 1e-10,
) -> torch.Tensor:
    """`fuse_logits` for a caller that has checked the Pilot's logits already (so they are checked once per step):
    `undefined` is `undefined_predictions(pilot_logits)`, `None` when every prediction is defined."""
    if fusion_lambda == 0:
        return pilot_logits
    z = pilot_logits.float()
    # The common case (all finite) skips every masking pass over the |V|-sized rows.
    finite = None if undefined is None else torch.isfinite(z)
    f = correction.float()
    if mode == "logit":
        fused = torch.add(z, f, alpha=fusion_lambda)
    elif mode == "prob":
        fused = _fuse_probabilities(z, f, fusion_lambda, prob_floor, finite)
    else:
        raise ValueError(f"fusion_mode must be one of {FUSION_MODES}, got {mode!r}.")
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
