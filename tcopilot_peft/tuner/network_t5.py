"""The Copilot network for encoder-decoder Pilots (T5, T5 v1.1, FLAN-T5): the T5 decoder stack (SPEC §4.3).

    error_embeds (ℓ_{<i}·E, d_P) [+ E·y_{t−1}] ──input_proj──►  x  (d_C)   [+ hidden_proj(norm(h_t))]
    for every block:
        x = x + SelfAttn(norm(x))                  causal, with T5's relative position bias
        x = x + CrossAttn(norm(x), memory)         memory = [encoder output ; mean_l h_l], the h part causally masked
        x = x + FF(norm(x))                        ReLU (T5) or gated GELU (T5 v1.1, FLAN-T5)
    u = output_proj(final_norm(x))   (d_P)   ──► the Pilot's frozen LM head gives f ∈ R^|V|

The maps around the blocks are the decoder-only Copilot's (`CopilotNetwork`, whose subclass this is). Unlike it,
every block keeps both attentions, as T5's decoder does, so a block copies a Pilot decoder block weight for weight.
Choices where the paper is silent:

* **Position.** The self-attention uses T5's bucketed relative position bias (one table, from the source's first
  block, shared by every block as in T5) over the Copilot's own positions: the copied attention weights were trained
  with it. The cross-attention has none, as in T5; the pooled states carry their positions.
* **Same position.** As the decoder-only Copilot's (`copilot_same_position`): `"token"` adds the decoder's input
  embedding at t (E·y_{t−1}, the row of T5's shared embedding the Pilot's decoder reads there, unscaled as T5 reads it;
  the target at t − 1, never the one at t) to the feed before `input_proj`; `"hidden"` adds the pooled decoder state
  h_t through a zero-initialised map; `"token_hidden"` both. The encoder output, the X̃ of an encoder-decoder Pilot,
  has no position of the decoder's, so the token comes in with it: with a token path, `memory_x` is the encoder output
  followed on the sequence axis by the decoder's input embeddings at the call's positions (`key_valid`'s length says
  where one ends).
* **Scale.** Attention scores are not divided by √d, T5's convention (its weights are initialised for it).
* **Masks.** The encoder part of the memory is masked by the encoder's attention mask (`key_valid`); the
  pooled-state part is causal, so position t reads the Pilot's decoder states at positions ≤ t only (no future
  target leaks in). Decoder sequences are right-padded, so no other decoder mask is needed.

KV caching, in the Pilot's `EncoderDecoderCache`: block i keeps its self-attention keys in self-attention slot
`cache_offset + 2i` and the keys of the pooled states in slot `cache_offset + 2i + 1` (both grow by one per generated
position; beams reorder them), and the keys of the encoder output in cross-attention slot `cache_offset + 2i`
(computed once, at the first call, like the Pilot's own cross-attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Attention

from .network import TOKEN_PATHS, CopilotNetwork, RMSNorm


@dataclass
class T5CopilotNetworkConfig:
    memory_size: int  # d_P: width of the Pilot's states, error embeddings and the LM head's input
    hidden_size: int  # d_C: the Copilot's width (T5's d_model)
    num_layers: int
    num_attention_heads: int
    head_dim: int  # T5's d_kv (heads × d_kv need not equal d_model)
    intermediate_size: int  # T5's d_ff
    gated: bool  # gated feed-forward (T5 v1.1, FLAN-T5) or the plain one (T5)
    activation: str  # T5's dense_act_fn
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    rms_norm_eps: float = 1e-6
    dropout: float = 0.0
    same_position: str = "none"  # `CopilotConfig.copilot_same_position`
    family: str = "t5"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class T5CopilotAttention(nn.Module):
    """T5 attention: no biases, no 1/√d scaling; keys/values are projected by the caller's block (so the block can
    cache them) and attended to here."""

    def __init__(self, config: T5CopilotNetworkConfig):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = config.num_attention_heads, config.head_dim, config.dropout
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(config.hidden_size, inner, bias=False)
        self.k = nn.Linear(config.hidden_size, inner, bias=False)
        self.v = nn.Linear(config.hidden_size, inner, bias=False)
        self.o = nn.Linear(inner, config.hidden_size, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.k(source)), self._heads(self.v(source))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q(x))
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        return self.o(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class T5CopilotFeedForward(nn.Module):
    def __init__(self, config: T5CopilotNetworkConfig):
        super().__init__()
        d, d_ff = config.hidden_size, config.intermediate_size
        if config.gated:
            self.wi_0 = nn.Linear(d, d_ff, bias=False)
            self.wi_1 = nn.Linear(d, d_ff, bias=False)
        else:
            self.wi = nn.Linear(d, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d, bias=False)
        self.act = ACT2FN[config.activation]
        self.gated = config.gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))
        return self.wo(self.act(self.wi(x)))


class T5CopilotBlock(nn.Module):
    def __init__(self, config: T5CopilotNetworkConfig):
        super().__init__()
        self.self_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = T5CopilotAttention(config)
        self.cross_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.cross_attn = T5CopilotAttention(config)
        self.ff_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ff = T5CopilotFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, self_mask, cross_mask, memory_h, encoder, cache, slot) -> torch.Tensor:
        normed = self.self_attn_norm(x)
        k, v = self.self_attn.keys_values(normed)
        k_h, v_h = self.cross_attn.keys_values(memory_h)
        if cache is not None:
            k, v = cache.self_attention_cache.update(k, v, slot)
            k_h, v_h = cache.self_attention_cache.update(k_h, v_h, slot + 1)
        x = x + self.dropout(self.self_attn(normed, k, v, self_mask))
        k_e, v_e = self._encoder_keys_values(encoder, cache, slot)
        x = x + self.dropout(
            self.cross_attn(self.cross_attn_norm(x), torch.cat([k_e, k_h], 2), torch.cat([v_e, v_h], 2), cross_mask)
        )
        return x + self.dropout(self.ff(self.ff_norm(x)))

    def _encoder_keys_values(self, encoder, cache, slot) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder is None:  # cached by an earlier call
            layer = cache.cross_attention_cache.layers[slot]
            return layer.keys, layer.values
        k, v = self.cross_attn.keys_values(encoder)
        if cache is not None:
            cache.cross_attention_cache.update(k, v, slot)
        return k, v


class T5CopilotNetwork(CopilotNetwork):
    """The Copilot of a T5-family Pilot. `forward` takes what `CopilotNetwork.forward` takes, with two differences
    of meaning: `memory_x` is the encoder output `(batch, source_length, d_P)`, the same at every call, followed with a
    token path by the decoder's input embeddings at the call's n positions (`(batch, source_length + n, d_P)` in all),
    and `key_valid` is the encoder's attention mask `(batch, source_length)`."""

    def __init__(self, config: T5CopilotNetworkConfig):
        super().__init__(config)
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)
        nn.init.normal_(self.relative_attention_bias.weight, std=config.hidden_size**-0.5)  # T5's initialiser

    @staticmethod
    def _make_layers(config) -> nn.ModuleList:
        return nn.ModuleList([T5CopilotBlock(config) for _ in range(config.num_layers)])

    @property
    def cache_slots(self) -> int:
        return 2 * self.config.num_layers

    @staticmethod
    def memory_span(memory_x, key_valid, start: int, end: int, past: int):
        """The encoder output and its mask, whole (every position reads all of it), and the decoder's input
        embeddings at positions `start:end` when `memory_x` carries them."""
        source = key_valid.shape[1]
        return torch.cat([memory_x[:, :source], memory_x[:, source:][:, start:end]], dim=1), key_valid

    @staticmethod
    def scratch_cache():
        return EncoderDecoderCache(DynamicCache(), DynamicCache())

    def position_bias(self, past: int, length: int, device) -> torch.Tensor:
        """T5's causal relative position bias `(1, heads, length, past + length)`, −inf on future keys."""
        query = past + torch.arange(length, device=device)[:, None]
        key = torch.arange(past + length, device=device)[None, :]
        buckets = T5Attention._relative_position_bucket(
            key - query,
            bidirectional=False,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0).float()
        return bias.masked_fill(key > query, float("-inf"))

    def forward(
        self,
        error_embeds: torch.Tensor,
        memory_x: torch.Tensor,
        memory_h: torch.Tensor,
        key_valid: torch.Tensor,
        cache: Any | None = None,
        cache_offset: int = 0,
    ) -> torch.Tensor:
        dtype = self.input_proj.weight.dtype
        batch, length = error_embeds.shape[:2]
        memory_x, tokens = memory_x[:, : key_valid.shape[1]], memory_x[:, key_valid.shape[1] :]
        if self.same_position in TOKEN_PATHS and tokens.shape[1] != length:
            raise ValueError(
                f"A T5 Copilot with same_position={self.same_position!r} reads the decoder's input embeddings at its "
                f"{length} positions after the encoder output in memory_x; got {tokens.shape[1]}."
            )
        x = self._inputs(error_embeds.to(dtype), tokens.to(dtype), memory_h.to(dtype))
        past = cache.self_attention_cache.get_seq_length(cache_offset) if cache is not None else 0
        encoder_cached = cache is not None and cache.cross_attention_cache.get_seq_length(cache_offset) > 0
        encoder = None if encoder_cached else self.memory_proj(self.memory_x_norm(memory_x.to(dtype)))
        memory_h = self.memory_proj(self.memory_h_norm(memory_h.to(dtype)))
        self_mask = self.position_bias(past, length, x.device).to(dtype)
        causal = torch.isfinite(self_mask[:, :1])  # (1, 1, length, past + length)
        encoder_valid = key_valid.bool()[:, None, None, :].expand(batch, 1, length, key_valid.shape[1])
        cross_mask = torch.cat([encoder_valid, causal.expand(batch, -1, -1, -1)], dim=-1)
        for i, block in enumerate(self.layers):
            x = block(x, self_mask, cross_mask, memory_h, encoder, cache, cache_offset + 2 * i)
        return self.output_proj(self.final_norm(x))

    @classmethod
    def from_decoder_layers(
        cls,
        config: T5CopilotNetworkConfig,
        layers: Sequence[nn.Module],
        weight_map: dict[str, str],
        indices: Sequence[int] | None = None,
    ) -> T5CopilotNetwork:
        """As `CopilotNetwork.from_decoder_layers`, from T5 decoder blocks; the relative position bias table comes
        from the first block (the only one that has it in T5)."""
        network = super().from_decoder_layers(config, layers, weight_map, indices)
        with torch.no_grad():
            table = layers[0].layer[0].SelfAttention.relative_attention_bias.weight
            network.relative_attention_bias.weight.copy_(table.detach().float())
        return network
