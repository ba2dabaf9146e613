"""Checks on a Copilot adapter's saved tensors before any is assigned to the model."""

from __future__ import annotations

import torch


def weights_problem(expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], marker: str) -> str | None:
    """What is wrong with an adapter's tensors against the model's (`marker` names the Copilot's keys), or None:
    missing Copilot weights, unknown keys, wrong shapes, non-float or non-finite Copilot weights."""
    copilot = [k for k in expected if marker in k]
    missing = [k for k in copilot if k not in loaded]
    if missing:
        return (
            f"is missing {len(missing)} of {len(copilot)} Copilot weights (first: {missing[0]!r}); it is incomplete "
            "or was saved from a different Copilot architecture"
        )
    unknown = [k for k in loaded if k not in expected]
    if unknown:
        return f"holds {len(unknown)} weights this model does not have (first: {unknown[0]!r})"
    for key, tensor in loaded.items():
        if tensor.shape != expected[key].shape:
            return f"gives {key!r} the shape {tuple(tensor.shape)}, the model's is {tuple(expected[key].shape)}"
        if marker in key and not tensor.is_floating_point():
            return f"gives {key!r} the non-float dtype {tensor.dtype}"
        if marker in key and not torch.isfinite(tensor).all():
            return f"gives {key!r} non-finite values"
    return None
