"""The Copilot network of Transformer Copilot (Zou et al., NeurIPS 2025, §3.1 and App. A.2), for decoder-only Pilots.

Read top to bottom: RMSNorm, SwiGLU MLP, one attention module used both as causal self-attention and as the
paper's modified cross-attention (Eq. 6), a block, and the network.

    error_embeds (ℓ_{<i}·E, d_P) [+ X̃_t] ──input_proj──►  x  (d_C)   [+ hidden_proj(norm(h_t))]
    for l = 1..L_C:
        odd l:   x = x + SelfAttn(norm(x))                         causal over the Copilot's own positions
        even l:  x = x + CrossAttn(norm(x), memory)                memory = [X̃ ; mean_l h_l], causally masked
        x = x + MLP(norm(x))
    u = output_proj(final_norm(x))   (d_P)   ──► the Pilot's frozen LM head gives f ∈ R^|V|  (outside this file)

The blocks have the shape of the Llama / Qwen2 / Mistral decoder layer (pre-RMSNorm, grouped-query attention,
SwiGLU), so their weights can be copied from the Pilot's layers or from a smaller pretrained decoder of the same
family.

Positions (`CopilotConfig.copilot_positions`): by default there are none (App. E.2: position comes through the Pilot's
states). With `"rotary"`, queries and keys of both attentions are rotated as the source decoder's own layers rotate
them (its family's transformers rotary embedding, with its rope type, θ and scaling): the query at t and the keys of
the Copilot's inputs, of X̃ and of the pooled states at their own positions. Positions count real tokens
(`key_valid`'s running sum), so left padding, and the Mistake Log's dropping of it, changes nothing.

Same-position path (`CopilotConfig.copilot_same_position`): the input at t is the feed alone (the paper's), or the
feed plus X̃_t (`"token"`), or that plus the pooled state h_t through a zero-initialised projection (`"token_hidden"`;
EAGLE's fc(cat(token, feature)) written as a sum of maps, so a new Copilot starts as a `"token"` one), or the feed plus
that projection of h_t alone (`"hidden"`).

Causality: the query at position t sees Copilot inputs, X̃ and pooled Pilot states at positions ≤ t only. Each of those
depends on tokens ≤ t, which the Pilot has already read at position t, so no future target can leak in.

KV caching: when `cache` is given (any object with the transformers `Cache.update(k, v, layer_idx)` method), every
block appends its keys/values under `cache_offset + block_index`. Cross-attention layers store the keys of X̃ and of
the pooled states side by side in the head dimension, so one cache slot per block keeps them aligned by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import rotate_half

from .bnb import base_linear, dequantized_weight


# `CopilotConfig.copilot_same_position` values whose input at t adds X̃_t, and those that add h_t.
TOKEN_PATHS = ("token", "token_hidden")
HIDDEN_PATHS = ("hidden", "token_hidden")


@dataclass
class CopilotNetworkConfig:
    memory_size: int  # d_P: width of the Pilot's hidden states, error embeddings and the LM head's input
    hidden_size: int  # d_C: the Copilot's width
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False  # q/k/v biases (Qwen2 has them)
    dropout: float = 0.0
    positions: dict[str, Any] | None = None  # rotary positions (the family table's `positions` entry) or none
    same_position: str = "none"  # `CopilotConfig.copilot_same_position`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryPositions:
    """Rotary positions as a Pilot family's own layers use them: its transformers rotary embedding, built from the
    recorded rope configuration (type, θ, scaling) at the Copilot's head size.

    Not a submodule: its frequencies follow from the config (nothing to save), and it is built at the first call, so a
    Copilot created on `meta` (PEFT's `low_cpu_mem_usage`, the size check of a saved adapter) still gets real ones.
    """

    def __init__(self, positions: dict[str, Any], num_heads: int, head_dim: int) -> None:
        from .families import rotary_embedding_class  # the family table imports this module

        self.positions, self.num_heads, self.head_dim = positions, num_heads, head_dim
        self.embedding_class = rotary_embedding_class(positions["model_type"])
        self.embedding: nn.Module | None = None

    def _build(self, device: torch.device) -> nn.Module:
        family_config = AutoConfig.for_model(
            self.positions["model_type"],
            rope_parameters=dict(self.positions["rope_parameters"]),
            max_position_embeddings=self.positions["max_position_embeddings"],
            hidden_size=self.num_heads * self.head_dim,
            num_attention_heads=self.num_heads,
            head_dim=self.head_dim,
        )
        # Outside inference mode, so frequencies built during generation serve later autograd-tracked calls too.
        with torch.inference_mode(False), torch.device(device):
            return self.embedding_class(family_config)

    def __call__(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin `(batch, n, head_dim)` at `position_ids` `(batch, n)`, in `x`'s dtype."""
        if self.embedding is None or self.embedding.inv_freq.device != x.device:
            self.embedding = self._build(x.device)
        return self.embedding(x, position_ids)


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """`x` `(batch, heads, n, head_dim)` rotated by `rope` (cos, sin `(batch, n, head_dim)`); unchanged without."""
    if rope is None:
        return x
    cos, sin = (part.unsqueeze(1) for part in rope)
    return x * cos + rotate_half(x) * sin


def real_positions(key_valid: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids `(batch, length)` of the last `length` keys, counting real tokens only (padding reads 0)."""
    return (key_valid.long().cumsum(1) - 1).clamp(min=0)[:, -length:]


class MLP(nn.Module):
    def __init__(self, config: CopilotNetworkConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """Grouped-query attention. Self-attention reads keys/values from `x`; cross-attention from the memory."""

    def __init__(self, config: CopilotNetworkConfig, is_cross: bool):
        super().__init__()
        self.is_cross = is_cross
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        d, kv = config.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, kv, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, kv, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        memory: torch.Tensor,
        cache: Any | None,
        layer_idx: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q = rotate(self._heads(self.q_proj(x), self.num_heads), rope)
        if self.is_cross:
            # memory is [X̃ ; pooled h] stacked on the sequence axis (one projection pass for both). Their keys are
            # rotated at their own positions and cached side by side in the head dimension, so one cache slot stays
            # aligned by position.
            keys = self._heads(self.k_proj(memory), self.num_kv_heads).chunk(2, dim=2)
            k = torch.cat([rotate(part, rope) for part in keys], dim=-1)
            v = torch.cat(self._heads(self.v_proj(memory), self.num_kv_heads).chunk(2, dim=2), dim=-1)
            if cache is not None:
                k, v = cache.update(k, v, layer_idx)
            k = torch.cat(k.split(self.head_dim, dim=-1), dim=2)
            v = torch.cat(v.split(self.head_dim, dim=-1), dim=2)
            mask = torch.cat([mask, mask], dim=-1)
        else:
            k = rotate(self._heads(self.k_proj(x), self.num_kv_heads), rope)
            v = self._heads(self.v_proj(x), self.num_kv_heads)
            if cache is not None:
                k, v = cache.update(k, v, layer_idx)
        if self.num_kv_heads != self.num_heads:
            # Explicit head repetition: SDPA's `enable_gqa` does not combine with a boolean mask on every backend.
            k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.num_heads * self.head_dim)
        return self.o_proj(y)


class Block(nn.Module):
    def __init__(self, config: CopilotNetworkConfig, is_cross: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, is_cross)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask, memory, cache, layer_idx, rope=None):
        x = x + self.dropout(self.attn(self.input_layernorm(x), mask, memory, cache, layer_idx, rope))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class CopilotNetwork(nn.Module):
    def __init__(self, config: CopilotNetworkConfig):
        super().__init__()
        self.config = config
        d_p, d_c = config.memory_size, config.hidden_size
        self.input_proj = nn.Linear(d_p, d_c, bias=False)
        # X̃ (raw embeddings) and the pooled states have very different scales; each gets its own norm.
        self.memory_x_norm = RMSNorm(d_p, config.rms_norm_eps)
        self.memory_h_norm = RMSNorm(d_p, config.rms_norm_eps)
        # Dimension alignment (App. E.2) when the Copilot is narrower or wider than the Pilot; shared by all layers.
        self.memory_proj = nn.Linear(d_p, d_c, bias=False) if d_p != d_c else nn.Identity()
        self.layers = self._make_layers(config)
        self.final_norm = RMSNorm(d_c, config.rms_norm_eps)
        self.output_proj = nn.Linear(d_c, d_p, bias=False)
        # Configs saved before the option existed have no such field: the paper's feed alone.
        self.same_position = getattr(config, "same_position", "none")
        if self.same_position in HIDDEN_PATHS:
            self.hidden_norm = RMSNorm(d_p, config.rms_norm_eps)
            self.hidden_proj = nn.Linear(d_p, d_c, bias=False)
        positions = getattr(config, "positions", None)
        self.rotary = (
            RotaryPositions(positions, config.num_attention_heads, config.hidden_size // config.num_attention_heads)
            if positions is not None
            else None
        )
        self.reset_io_parameters()

    @staticmethod
    def _make_layers(config) -> nn.ModuleList:
        # 1-based odd layers self-attend, even layers cross-attend (the paper's "Pattern 1").
        return nn.ModuleList([Block(config, is_cross=(i % 2 == 1)) for i in range(config.num_layers)])

    @property
    def cache_slots(self) -> int:
        """KV-cache slots the network uses (`cache_offset` … `cache_offset + cache_slots − 1`)."""
        return self.config.num_layers

    @staticmethod
    def memory_span(memory_x, key_valid, start: int, end: int, past: int):
        """`memory_x` and `key_valid` for a call over positions `start:end` of a longer one (`past` positions before
        it): X̃ is per position, and keys are valid up to the last position of the span."""
        return memory_x[:, start:end], key_valid[:, : past + end]

    @staticmethod
    def scratch_cache():
        """An empty cache of the kind `forward` reads, for calls that must run position by position."""
        return DynamicCache()

    def reset_io_parameters(self) -> None:
        """Initialise the maps around the blocks. The output map starts at zero, so a new Copilot corrects nothing."""
        d_p, d_c = self.config.memory_size, self.config.hidden_size
        with torch.no_grad():
            if d_p == d_c:
                self.input_proj.weight.copy_(torch.eye(d_c))
            else:
                nn.init.normal_(self.input_proj.weight, std=d_p**-0.5)
                nn.init.normal_(self.memory_proj.weight, std=d_p**-0.5)
            nn.init.zeros_(self.output_proj.weight)
            if self.same_position in HIDDEN_PATHS:
                nn.init.zeros_(self.hidden_proj.weight)  # h_t enters as training finds it useful

    @staticmethod
    def attention_mask(key_valid: torch.Tensor, query_length: int) -> torch.Tensor:
        """Boolean mask `(batch, 1, query_length, key_length)`: causal, padding removed.

        Queries are the last `query_length` key positions. Each query always sees its own position, so rows of padding
        stay finite (their outputs are never used).
        """
        key_length = key_valid.shape[1]
        key_pos = torch.arange(key_length, device=key_valid.device)
        query_pos = key_pos[key_length - query_length :]
        causal = key_pos[None, :] <= query_pos[:, None]
        diagonal = key_pos[None, :] == query_pos[:, None]
        return ((causal[None] & key_valid[:, None, :].bool()) | diagonal[None]).unsqueeze(1)

    def forward(
        self,
        error_embeds: torch.Tensor,
        memory_x: torch.Tensor,
        memory_h: torch.Tensor,
        key_valid: torch.Tensor,
        cache: Any | None = None,
        cache_offset: int = 0,
    ) -> torch.Tensor:
        """
        Args:
            error_embeds (`(batch, n, d_P)`): the Copilot's feed at the n new positions (shifted ℓ·E, or zeros).
            memory_x (`(batch, n, d_P)`): X̃, the Pilot's input embeddings at those positions.
            memory_h (`(batch, n, d_P)`): the layer-pooled Pilot hidden states at those positions.
            key_valid (`(batch, past + n)`): 1 for real tokens, 0 for padding, over all positions seen so far.
            cache: optional KV cache; block i uses slot `cache_offset + i`.

        Returns:
            `(batch, n, d_P)`: u, which the Pilot's LM head maps to the correction f.
        """
        dtype = self.input_proj.weight.dtype
        x = self._inputs(error_embeds.to(dtype), memory_x.to(dtype), memory_h.to(dtype))
        memory = self.memory_proj(
            torch.cat([self.memory_x_norm(memory_x.to(dtype)), self.memory_h_norm(memory_h.to(dtype))], dim=1)
        )
        mask = self.attention_mask(key_valid, x.shape[1])
        rope = self.rotary(x, real_positions(key_valid, x.shape[1])) if self.rotary is not None else None
        for i, block in enumerate(self.layers):
            x = block(x, mask, memory, cache, cache_offset + i, rope)
        return self.output_proj(self.final_norm(x))

    def _inputs(self, feed: torch.Tensor, memory_x: torch.Tensor, memory_h: torch.Tensor) -> torch.Tensor:
        """The stream at each position starts from the feed and, with a same-position path, what the Pilot has there:
        X̃_t (in the feed's space, the rows of E) and, projected, h_t."""
        x = self.input_proj(feed + memory_x if self.same_position in TOKEN_PATHS else feed)
        if self.same_position in HIDDEN_PATHS:
            x = x + self.hidden_proj(self.hidden_norm(memory_h))
        return x

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_decoder_layers(
        cls,
        config: CopilotNetworkConfig,
        layers: Sequence[nn.Module],
        weight_map: dict[str, str],
        indices: Sequence[int] | None = None,
    ) -> CopilotNetwork:
        """A Copilot whose blocks start as copies of decoder layers (the Pilot's own, or a smaller pretrained
        decoder's): block i copies `layers[indices[i]]`, evenly spaced over `layers` by default, through `weight_map`
        (`copy_layer_weights`). The maps around the blocks start as in `__init__`."""
        count, available = config.num_layers, len(layers)
        if indices is None:
            indices = [round(i * (available - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]
        if len(indices) != count or any(not 0 <= i < available for i in indices):
            raise ValueError(
                f"init_layers must name {count} source layers (one per Copilot layer) in [0, {available}), "
                f"got {list(indices)}."
            )
        network = cls(config)
        with torch.no_grad():
            for block, index in zip(network.layers, indices):
                copy_layer_weights(block, layers[index], weight_map)
        return network

    @classmethod
    def with_random_blocks(cls, config: CopilotNetworkConfig, std: float) -> CopilotNetwork:
        """A Copilot whose blocks' linear weights are drawn from N(0, std²) (the Pilot's `initializer_range`)."""
        network = cls(config)
        for block in network.layers:
            for linear in block.modules():
                if isinstance(linear, nn.Linear):
                    nn.init.normal_(linear.weight, std=std)
                    if linear.bias is not None:
                        nn.init.zeros_(linear.bias)
        return network


@torch.no_grad()
def copy_layer_weights(block: nn.Module, layer: nn.Module, weight_map: dict[str, str]) -> None:
    """Copy a decoder layer's weights into a Copilot block: `weight_map` maps the block's state-dict keys to the
    layer's (as nanoGPT's `from_pretrained`). A key the block lacks (a bias it does not have, the other feed-forward
    variant) is skipped, as is a bias the layer lacks. LoRA-wrapped or quantized weights are copied dequantized; the
    layer is untouched."""
    for target_key, source_key in weight_map.items():
        try:
            target = block.get_parameter(target_key)
        except AttributeError:
            continue
        path, _, kind = source_key.rpartition(".")
        try:
            origin = base_linear(layer.get_submodule(path))
        except AttributeError as error:
            raise ValueError(
                f"The Pilot's decoder layer has no {path!r} to initialise the Copilot's {target_key!r}."
            ) from error
        if kind == "weight":
            target.copy_(dequantized_weight(origin))
        elif getattr(origin, kind, None) is not None:
            target.copy_(getattr(origin, kind).detach().float())
