"""The Pilot's side of the Copilot's computation: its next-token prediction p̂ (`PilotPrediction`, dense or in the
Mistake Log's sparse top-k form), the next-token targets, and the error the Copilot reads, ℓ·E (`error_embedding`),
built from the gold id and p̂ without a dense one-hot or a dense ℓ = onehot(y) − p̂ (the paper's Eq. 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


IGNORE_INDEX = -100


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

    def top_k(self, k: int) -> PilotPrediction:
        """The sparse form the Mistake Log logs of this dense p̂: its k most probable tokens, their probabilities
        rounded to 16 bits as the log stores them (the mass outside the top-k is dropped)."""
        top_log_probs, top_ids = self.log_probs.topk(min(k, self.log_probs.shape[-1]), dim=-1)
        return PilotPrediction(topk_probs=top_log_probs.exp().half().float(), topk_ids=top_ids)

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
    return (gold - expected_embedding(weight, prediction)) * valid.unsqueeze(-1)


def expected_embedding(weight: torch.Tensor, prediction: PilotPrediction) -> torch.Tensor:
    """p̂·E in float32 (`weight`: E as float32): a |V|×d product for a dense p̂, k rows of E for a sparse one."""
    if prediction.is_dense:
        return prediction.probs() @ weight
    return (prediction.topk_probs.float().unsqueeze(-1) * weight[prediction.topk_ids]).sum(dim=-2)


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets per position: `targets[:, t] = labels[:, t + 1]`, with -100 at the last position."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)
