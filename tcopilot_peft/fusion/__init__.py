"""Fusion, error and loss math of Transformer Copilot, as small pure functions.

Notation: `z` are the Pilot's next-token logits, `p̂ = softmax(z)`, `y` the gold next token, and the Pilot's
token-level error is ℓ = onehot(y) − p̂ (the paper's Eq. 4). The Copilot outputs a correction `f` over the vocabulary,
which inference fuses into the Pilot's prediction (logit space z + λf, or the paper's probability space, Eq. 8). What
`f` learns depends on the objective: by default the log-odds correction that minimises the fused prediction's
cross-entropy (`"fused_ce"`); with the paper's objective, a regression of ℓ itself (`"rmse"`, Eq. 7).

- `fuse.py`: fusing `f` into `z` (`fuse_logits`) and where the Pilot's prediction is undefined;
- `prediction.py`: the Pilot's prediction p̂ (`PilotPrediction`) and the error the Copilot reads (`error_embedding`);
- `objectives.py`: the training objectives (`OBJECTIVES`, `register_objective`, `copilot_loss`);
- `head.py`: the loss's |V|-sized log-sum-exp straight from the LM head, in vocabulary chunks (`head_logsumexp`).
"""

from .fuse import FUSION_MODES, fuse_logits, fuse_logits_where_defined, undefined_predictions
from .head import head_logsumexp
from .objectives import (
    COPILOT_LOSSES,
    DEFAULT_OBJECTIVE,
    INFERENCE_FEEDS,
    OBJECTIVES,
    Objective,
    copilot_loss,
    copilot_loss_from_head,
    error_distance,
    fused_cross_entropy,
    fused_cross_entropy_from_head,
    get_objective,
    register_objective,
)
from .prediction import IGNORE_INDEX, PilotPrediction, error_embedding, shift_targets


__all__ = [
    "COPILOT_LOSSES",
    "DEFAULT_OBJECTIVE",
    "FUSION_MODES",
    "IGNORE_INDEX",
    "INFERENCE_FEEDS",
    "OBJECTIVES",
    "Objective",
    "PilotPrediction",
    "copilot_loss",
    "copilot_loss_from_head",
    "error_distance",
    "error_embedding",
    "fuse_logits",
    "fuse_logits_where_defined",
    "fused_cross_entropy",
    "fused_cross_entropy_from_head",
    "get_objective",
    "head_logsumexp",
    "register_objective",
    "shift_targets",
    "undefined_predictions",
]
