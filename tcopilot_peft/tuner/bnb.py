"""Full-precision weights of the Pilot's linear layers, whatever wraps or quantizes them (LoRA, bitsandbytes 4/8-bit).

The Copilot's blocks are initialised from the Pilot's decoder layers; a QLoRA Pilot's weights are packed int8 or NF4
and sit under LoRA wrappers, so they are unwrapped and dequantized here, on copies: the Pilot's layers are untouched.
"""

from __future__ import annotations

import copy

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


def base_linear(module: nn.Module) -> nn.Module:
    """The linear layer under a PEFT wrapper (LoRA), or `module` itself."""
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """A float32 copy of a (possibly LoRA-wrapped or bitsandbytes-quantized) linear layer's weight."""
    module = base_linear(module)
    weight = module.weight
    kind = type(weight).__name__
    if kind == "Int8Params":
        # Row-wise absmax int8: W = CB · SCB / 127. (PEFT's dequantize helper clears the layer's cached statistics
        # on some bitsandbytes versions, which breaks the Pilot's next 8-bit matmul.)
        scale = getattr(weight, "SCB", None)
        if scale is None:
            scale = module.state.SCB
        return weight.data.float() * scale.float().unsqueeze(1) / 127.0
    if kind == "Params4bit":
        import bitsandbytes.functional as bnb_functional

        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # On AVX512-BF16 CPUs bitsandbytes repacks a 4-bit weight in place after the first inference forward;
            # its own inverse (what its state-dict saving uses) rebuilds the standard layout, here on a copy so the
            # Pilot's layer keeps its fast format.
            data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data, copy.deepcopy(state))
        return bnb_functional.dequantize_4bit(data, state).detach().float()
    return weight.detach().float()
