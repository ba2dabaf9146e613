"""Checks on a Copilot adapter's files: the weights file is readable without running code, and its tensors fit the
model before any is assigned."""

from __future__ import annotations

import os
import pickle

import torch
from peft.utils import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open


def check_adapter_weights(folder: str) -> None:
    """Refuse an adapter folder whose weights file cannot be read safely, naming the file and the problem.

    `adapter_model.safetensors` must have a whole header that covers the file exactly: `safe_open` checks that from
    the header alone (a truncated or overwritten header, or a file cut short, is caught without reading a tensor).
    `adapter_model.bin` (what `save_pretrained(..., safe_serialization=False)` writes) must load under
    `torch.load(weights_only=True)`, the restricted unpickler PEFT then loads it with: it rebuilds tensors and plain
    containers only and never calls what a crafted pickle names, so a file it rejects is refused here.
    """
    weights, pickled = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME), os.path.join(folder, WEIGHTS_NAME)
    if os.path.isfile(weights):
        try:
            with safe_open(weights, framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"The Copilot adapter file {weights} is not a whole safetensors file ({error}): it is truncated or "
                "corrupt; nothing was loaded."
            ) from error
    elif os.path.isfile(pickled):
        try:
            torch.load(pickled, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"The Copilot adapter file {pickled} is refused by the weights-only loader, which never runs code a "
                f"pickle names ({reason}); nothing was loaded."
            ) from error


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
