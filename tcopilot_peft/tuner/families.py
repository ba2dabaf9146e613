"""Every Pilot family the Copilot supports, in one table keyed by the Pilot config's `model_type`.

An entry says everything the tuner needs to know about a family: which runner runs it (`CausalRunner` for decoder-only
Pilots, `Seq2SeqRunner` for encoder-decoder ones), which Copilot network serves it and how that network's config is
derived from the Pilot (or from a smaller pretrained decoder of the family), what positions the family uses (as data,
which a Copilot with `copilot_positions="rotary"` records and rebuilds its rotary embedding from), where its decoder,
decoder layers, final norm, embedding and LM head live, how
a Copilot block's weights are copied from a decoder layer (by state-dict key), how X̃ (the Copilot's first memory) is
read, and the default LoRA targets of a LoRA-tuned Pilot.

Adding a family is one entry here and its tests (`tests/tuner/test_families.py` checks every entry against a tiny
Pilot of its family).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from .bnb import base_linear
from .causal import CausalRunner
from .config import CopilotConfig
from .network import CopilotNetwork, CopilotNetworkConfig
from .network_t5 import T5CopilotNetwork, T5CopilotNetworkConfig
from .seq2seq import Seq2SeqRunner


@dataclass(frozen=True)
class PilotFamily:
    """How a Copilot is built for, and run on, one Pilot family.

    Args:
        runner: `CausalRunner` or `Seq2SeqRunner`.
        network_class: the Copilot network; `network_config_class` its config.
        architecture: `(pilot, source, config, num_layers) -> network config`: blocks of the source's shape (the
            Pilot's, or the pretrained decoder's) reading the Pilot's width.
        positions: `(text config) -> dict`: what positions the family's own layers use, as JSON-ready data (a rotary
            Copilot saves it in its architecture and rebuilds its rotary embedding from it).
        rotary_embeddings: model_type → the transformers rotary embedding of that model type (none for T5).
        paths: where the parts live, as `get_submodule` paths from the Pilot: `decoder` (what the causal runner
            runs), `layers` (the decoder layers the Copilot's blocks copy), `norm`, `embedding`, `head`.
        num_layers_field: the text config's field holding the decoder's depth.
        weight_map: Copilot block state-dict key → decoder layer state-dict key.
        memory_x: how X̃ is read, the same in the fused forward and when the Mistake Log is replayed.
        lora_targets: `LoraConfig.target_modules` for a LoRA-tuned Pilot of the family.
        auto_class: the transformers auto class a pretrained source of the family loads with.
        copilot_defaults: `CopilotConfig` field → the family's value where the user left it unset (the layout that
            measured best on the family: benchmarks/RESULTS_DIAGNOSIS.md).
    """

    runner: type[CausalRunner] | type[Seq2SeqRunner]
    network_class: type[CopilotNetwork]
    network_config_class: type
    architecture: Callable[[nn.Module, nn.Module, CopilotConfig, int], object]
    positions: Callable[[object], dict]
    rotary_embeddings: dict[str, type[nn.Module]]
    paths: dict[str, str]
    num_layers_field: str
    weight_map: dict[str, str]
    memory_x: str
    lora_targets: list[str] | str
    auto_class: str
    copilot_defaults: dict[str, str]

    def module(self, pilot: nn.Module, part: str) -> nn.Module:
        """The Pilot's `part` (a key of `paths`)."""
        try:
            return pilot.get_submodule(self.paths[part])
        except AttributeError as error:
            raise ValueError(
                f"Cannot find the {part} of {type(pilot).__name__} (expected `{self.paths[part]}`)."
            ) from error

    def num_layers(self, pilot: nn.Module) -> int:
        return getattr(pilot.config.get_text_config(), self.num_layers_field)


def _llama_architecture(pilot: nn.Module, source: nn.Module, config: CopilotConfig, num_layers: int):
    shape = source.config.get_text_config()
    first_layer = family_of(source).module(source, "layers")[0]
    return CopilotNetworkConfig(
        memory_size=pilot.config.get_text_config().hidden_size,
        hidden_size=shape.hidden_size,
        num_layers=num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=getattr(shape, "num_key_value_heads", None) or shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        rms_norm_eps=getattr(shape, "rms_norm_eps", 1e-6),
        attention_bias=base_linear(first_layer.self_attn.q_proj).bias is not None,
        dropout=config.dropout,
        # The rope the copied layers were trained with: the source's (the Pilot, or the pretrained decoder).
        positions=family_of(source).positions(shape) if config.copilot_positions == "rotary" else None,
        same_position=config.copilot_same_position,
    )


def _t5_architecture(pilot: nn.Module, source: nn.Module, config: CopilotConfig, num_layers: int):
    if config.copilot_positions != "none":
        raise ValueError(
            f"CopilotConfig.copilot_positions={config.copilot_positions!r} does not apply to a T5 Pilot: its Copilot "
            "always has T5's relative position bias; leave it 'none'."
        )
    shape = source.config
    return T5CopilotNetworkConfig(
        memory_size=pilot.config.d_model,
        hidden_size=shape.d_model,
        num_layers=num_layers,
        num_attention_heads=shape.num_heads,
        head_dim=shape.d_kv,
        intermediate_size=shape.d_ff,
        gated=shape.is_gated_act,
        activation=shape.dense_act_fn,
        relative_attention_num_buckets=shape.relative_attention_num_buckets,
        relative_attention_max_distance=shape.relative_attention_max_distance,
        rms_norm_eps=shape.layer_norm_epsilon,
        dropout=config.dropout,
        same_position=config.copilot_same_position,
    )


def _rotary(text_config) -> dict:
    """Rotary positions: the rope parameters (type, θ, scaling) and the context length the rope types read."""
    return {
        "kind": "rotary",
        "model_type": text_config.model_type,
        "rope_parameters": dict(text_config.rope_parameters),
        "max_position_embeddings": text_config.max_position_embeddings,
    }


def _t5_relative_bias(text_config) -> dict:
    return {
        "kind": "relative_bias",
        "num_buckets": text_config.relative_attention_num_buckets,
        "max_distance": text_config.relative_attention_max_distance,
    }


# A Llama-shaped decoder layer: grouped-query attention (Qwen2 has q/k/v biases), SwiGLU MLP, two RMSNorms. A
# cross-attention block puts the self-attention weights to a new use.
_LLAMA_WEIGHTS = {
    **{
        f"attn.{n}.{p}": f"self_attn.{n}.{p}"
        for n in ("q_proj", "k_proj", "v_proj", "o_proj")
        for p in ("weight", "bias")
    },
    **{f"mlp.{n}.weight": f"mlp.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")},
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
}

# A T5 decoder block: `layer.0` self-attention, `layer.1` cross-attention, `layer.2` feed-forward (gated `wi_0`/`wi_1`
# in T5 v1.1 and FLAN-T5, a single `wi` in T5), each with its norm. The relative position bias table is the network's
# (`T5CopilotNetwork.from_decoder_layers` copies it from the first block).
_T5_WEIGHTS = {
    **{f"self_attn.{n}.weight": f"layer.0.SelfAttention.{n}.weight" for n in "qkvo"},
    **{f"cross_attn.{n}.weight": f"layer.1.EncDecAttention.{n}.weight" for n in "qkvo"},
    **{f"ff.{n}.weight": f"layer.2.DenseReluDense.{n}.weight" for n in ("wi", "wi_0", "wi_1", "wo")},
    "self_attn_norm.weight": "layer.0.layer_norm.weight",
    "cross_attn_norm.weight": "layer.1.layer_norm.weight",
    "ff_norm.weight": "layer.2.layer_norm.weight",
}

_LLAMA_FAMILY = PilotFamily(
    runner=CausalRunner,
    network_class=CopilotNetwork,
    network_config_class=CopilotNetworkConfig,
    architecture=_llama_architecture,
    positions=_rotary,
    rotary_embeddings={
        "llama": LlamaRotaryEmbedding,
        "qwen2": Qwen2RotaryEmbedding,
        "mistral": MistralRotaryEmbedding,
    },
    paths={
        "decoder": "model",
        "layers": "model.layers",
        "norm": "model.norm",
        "embedding": "model.embed_tokens",
        "head": "lm_head",
    },
    num_layers_field="num_hidden_layers",
    weight_map=_LLAMA_WEIGHTS,
    memory_x="the input embeddings of the tokens (the embedding layer's output, which layer 0 reads)",
    lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
    auto_class="AutoModelForCausalLM",
    copilot_defaults={"copilot_positions": "rotary", "copilot_same_position": "token_hidden"},
)

FAMILIES: dict[str, PilotFamily] = {
    "llama": _LLAMA_FAMILY,
    "qwen2": _LLAMA_FAMILY,
    "mistral": _LLAMA_FAMILY,
    # T5, T5 v1.1 and FLAN-T5 configs all have model_type "t5".
    "t5": PilotFamily(
        runner=Seq2SeqRunner,
        network_class=T5CopilotNetwork,
        network_config_class=T5CopilotNetworkConfig,
        architecture=_t5_architecture,
        positions=_t5_relative_bias,
        rotary_embeddings={},
        paths={
            "decoder": "decoder",
            "layers": "decoder.block",
            "norm": "decoder.final_layer_norm",
            "embedding": "shared",
            "head": "lm_head",
        },
        num_layers_field="num_decoder_layers",
        weight_map=_T5_WEIGHTS,
        memory_x="the encoder's output over the source, under the encoder's attention mask",
        # Every linear layer: T5's projections are named q/k/v/o/wi/wo, not the Llama family's.
        lora_targets="all-linear",
        auto_class="AutoModelForSeq2SeqLM",
        # Its relative position bias is always there; its same-position paths are not measured yet, so off.
        copilot_defaults={"copilot_positions": "none", "copilot_same_position": "none"},
    ),
}


def pilot_model_type(model: nn.Module) -> str | None:
    text_config = getattr(model, "config", None)
    return getattr(text_config.get_text_config() if text_config is not None else None, "model_type", None)


def family_of(model: nn.Module) -> PilotFamily:
    """The family of a Pilot, refused by name when the Copilot does not support it."""
    model_type = pilot_model_type(model)
    if model_type not in FAMILIES:
        raise ValueError(
            f"Transformer Copilot does not support the Pilot architecture {model_type!r} "
            f"({type(model).__name__}); supported: {', '.join(FAMILIES)}."
        )
    return FAMILIES[model_type]


def rotary_embedding_class(model_type: str) -> type[nn.Module]:
    """The transformers rotary embedding of a model type, refused by name when its family has none."""
    rotary = FAMILIES[model_type].rotary_embeddings if model_type in FAMILIES else {}
    if model_type not in rotary:
        raise ValueError(
            f"Rotary Copilot positions need a rotary family ({', '.join(_LLAMA_FAMILY.rotary_embeddings)}), "
            f"got model_type {model_type!r}."
        )
    return rotary[model_type]


def fill_family_defaults(pilot: nn.Module, config: CopilotConfig) -> None:
    """Set the `CopilotConfig` fields the user left unset to the Pilot family's values (saved with the adapter)."""
    for name, value in family_of(pilot).copilot_defaults.items():
        if getattr(config, name) is None:
            setattr(config, name, value)


def default_lora_targets(pilot: nn.Module) -> list[str] | str:
    """The LoRA `target_modules` of a LoRA-tuned Pilot of a supported family."""
    return family_of(pilot).lora_targets
