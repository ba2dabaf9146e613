"""Analytic per-token cost of the Pilot and the Copilot, to set beside measured overheads (RESULTS.md's cost table).

Counts are 2 × multiply-accumulates of the weight matrices each token passes through; attention-score FLOPs and
element-wise work are left out (the same convention as the usual 6·N training estimate). Backward passes cost twice
the forward for weights that train, and once for frozen weights that only pass a gradient through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tuner import CopilotModel
from .tuner.pilot import decoder_layers


@dataclass
class CostModel:
    pilot_block_macs: int  # per token, the Pilot's decoder layers
    head_macs: int  # |V|·d, one pass through the (shared) LM head / embedding matrix
    copilot_block_macs: int  # per token, the Copilot's blocks, in/out maps and memory projections
    gram_macs: int  # d², the Copilot's own-output feedback u·G at inference

    def inference_share(self) -> float:
        """Copilot share of one decoding step: its blocks, the correction through the LM head, the feedback."""
        copilot = self.copilot_block_macs + self.head_macs + self.gram_macs
        return copilot / (copilot + self.pilot_block_macs + self.head_macs)

    def training_share(
        self, pilot_weights_train: bool, target_fraction: float = 1.0, dense_errors: bool = False
    ) -> float:
        """Copilot share of one training token.

        Args:
            pilot_weights_train: all Pilot weights train (full fine-tuning: backward = 2 forwards) or only adapters
                (LoRA: backward passes activation gradients only, 1 forward's worth).
            target_fraction: share of tokens that carry a loss (completion tokens); the |V|-sized LM-head work of
                both models runs only there, as in TRL's own loss.
            dense_errors: the Copilot's input ℓ·E is built from a dense p̂ (`mistake_log_sampling="current"`: one
                more |V|·d pass per target) rather than the log's top-k (negligible).
        """
        backward = 2 if pilot_weights_train else 1
        pilot = (1 + backward) * (self.pilot_block_macs + self.head_macs * target_fraction)
        copilot = 3 * self.copilot_block_macs + (2 + int(dense_errors)) * self.head_macs * target_fraction
        return copilot / (copilot + pilot)


def cost_model(model: torch.nn.Module) -> CostModel:
    """The cost model of a model carrying a Copilot (a `PeftModel` or the `CopilotModel` tuner)."""
    tuner = next(m for m in model.modules() if isinstance(m, CopilotModel))
    if tuner.encoder_decoder:
        raise ValueError("The analytic cost model covers decoder-only Pilots; time an encoder-decoder Pilot instead.")
    pilot = tuner.model
    vocab, hidden = pilot.get_output_embeddings().weight.shape
    pilot_blocks = sum(_weights(p) for n, p in decoder_layers(pilot).named_parameters() if "lora_" not in n)
    network = tuner.active_network
    copilot = sum(p.numel() for p in network.parameters())
    # Cross-attention layers project two memory entries (X̃ and pooled h) per position through k/v and, when the
    # widths differ, through the alignment map.
    for block in network.layers:
        if block.attn.is_cross:
            copilot += block.attn.k_proj.weight.numel() + block.attn.v_proj.weight.numel()
    if isinstance(network.memory_proj, torch.nn.Linear):
        copilot += network.memory_proj.weight.numel()
    return CostModel(
        pilot_block_macs=pilot_blocks,
        head_macs=vocab * hidden,
        copilot_block_macs=copilot,
        gram_macs=hidden * hidden,
    )


def _weights(parameter: torch.nn.Parameter) -> int:
    """How many weights a parameter holds: a bitsandbytes 4-bit one packs two per stored byte (its quant state keeps
    the unpacked shape)."""
    state = getattr(parameter, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else parameter.numel()
