"""Where the Copilot keeps its state between generation steps: extra layer slots of the Pilot's own KV cache.

Living in the Pilot's `DynamicCache` (after the Pilot's decoder layers; for an encoder-decoder Pilot, in its
`EncoderDecoderCache`) means `generate()`'s beam reordering, batch expansion and cropping apply to the Copilot's
keys/values for free. The network decides what its slots hold (`CopilotNetwork.cache_slots` of them from
`pilot_layers` on: one per block for the decoder-only Copilot, two per block for the T5 one); the slot after them holds
the Copilot's pending input, what it reads at the next generated position, and whether it may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_outputs import CausalLMOutputWithPast


# transformers renamed the outputs' `past_key_values` to `cache` (5.2x); read and write whichever this version uses.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class CopilotCacheView:
    """The Copilot's part of a Pilot's `DynamicCache`.

    Args:
        cache: the Pilot's cache, shared.
        first_slot: the Copilot's first slot (= the Pilot's number of decoder layers).
        pending_slot: the slot holding the pending input (after the Copilot's slots).
        past: positions already in the Copilot's slots before this call.
    """

    cache: DynamicCache
    first_slot: int
    pending_slot: int
    past: int

    @classmethod
    def attach(cls, cache, pilot_layers: int, copilot_slots: int) -> CopilotCacheView:
        """The view of `cache` (a `DynamicCache`, or an encoder-decoder Pilot's `EncoderDecoderCache`, whose
        self-attention part then holds the slots), adding the Copilot's slots on its first use."""
        slots = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        if not isinstance(slots, DynamicCache):
            raise ValueError(
                f"Copilot generation needs a DynamicCache (the default), got {type(cache).__name__}; "
                "do not pass cache_implementation='static' or another cache type."
            )
        pending_slot = pilot_layers + copilot_slots
        for part in (slots, cache.cross_attention_cache) if slots is not cache else (slots,):
            while len(part.layers) <= pending_slot:
                part.layers.append(DynamicLayer())
        return cls(cache, pilot_layers, pending_slot, slots.layers[pending_slot].get_seq_length())

    @property
    def _slots(self) -> DynamicCache:
        return self.cache.self_attention_cache if isinstance(self.cache, EncoderDecoderCache) else self.cache

    def pending(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pending input of the last position seen, `(batch, 1, width)` float32, and whether it may be read,
        `(batch, 1)` bool (False after a position whose Pilot prediction was undefined: the Copilot then reads 0)."""
        layer = self._slots.layers[self.pending_slot]
        return layer.keys[:, 0, -1:, :].float(), layer.values[:, 0, -1:, 0] > 0

    def store_pending(self, pending: torch.Tensor, readable: torch.Tensor) -> None:
        """Append this call's pending inputs `(batch, n, width)` as keys, and whether each may be read `(batch, n)`
        as values (in the cache, so beam reordering and cropping keep the two together)."""
        stored = pending.unsqueeze(1)
        self._slots.update(stored, readable.to(stored.dtype)[:, None, :, None], self.pending_slot)
