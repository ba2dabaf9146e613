"""What the tuner needs to know about a Pilot: whether it is supported, how a LoRA-tuned one is unwrapped, and how a
Copilot of its family is built (its shape, and the decoder layers its blocks start from)."""

from __future__ import annotations

import torch
from peft import PeftModel
from peft.utils import PeftType
from torch import nn

from .bnb import base_linear
from .config import CopilotConfig
from .network import CopilotNetwork, CopilotNetworkConfig
from .network_t5 import T5CopilotNetwork, T5CopilotNetworkConfig


DECODER_ONLY_MODEL_TYPES = ("llama", "qwen2", "mistral")
ENCODER_DECODER_MODEL_TYPES = ("t5",)  # T5, T5 v1.1 and FLAN-T5 configs all have model_type "t5"
SUPPORTED_MODEL_TYPES = DECODER_ONLY_MODEL_TYPES + ENCODER_DECODER_MODEL_TYPES


def pilot_signature(model: nn.Module) -> dict[str, object]:
    """The Pilot's family, vocabulary and width, as `CopilotConfig`'s `pilot_*` fields record them."""
    text_config = getattr(model, "config", None)
    text_config = text_config.get_text_config() if text_config is not None else None
    return {
        "pilot_model_type": getattr(text_config, "model_type", None),
        "pilot_vocab_size": model.get_output_embeddings().weight.shape[0],
        "pilot_hidden_size": getattr(text_config, "hidden_size", None),
    }


def check_pilot(model: nn.Module, config: CopilotConfig) -> None:
    """Refuse, by name, a Pilot of an unsupported family or one that does not match a saved Copilot."""
    text_config = getattr(model, "config", None)
    model_type = getattr(text_config.get_text_config() if text_config is not None else None, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Transformer Copilot does not support the Pilot architecture {model_type!r} "
            f"({type(model).__name__}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    saved_type = config.pilot_model_type
    if saved_type is not None and (saved_type in ENCODER_DECODER_MODEL_TYPES) != is_encoder_decoder(model):
        raise ValueError(
            f"This Copilot was trained for a {saved_type!r} Pilot and cannot run on a {model_type!r} Pilot: "
            "encoder-decoder and decoder-only Copilots are different networks."
        )
    signature = pilot_signature(model)
    for field, what in (("pilot_vocab_size", "vocabulary size"), ("pilot_hidden_size", "hidden size")):
        saved = getattr(config, field)
        if saved is not None and saved != signature[field]:
            raise ValueError(
                f"This Copilot was trained for a Pilot with {what} {saved}, but the Pilot it is being loaded onto "
                f"has {what} {signature[field]}."
            )


def unwrap_lora_pilot(model: PeftModel, config: CopilotConfig) -> nn.Module:
    """A LoRA-tuned Pilot: keep its LoRA layers in place and remember its LoRA config for saving."""
    lora = model.peft_config[model.active_adapter]
    if lora.peft_type != PeftType.LORA:
        raise ValueError(
            f"A Pilot that is a PeftModel must carry LoRA adapters; got {lora.peft_type}. Unload it first."
        )
    base = model.get_base_model()
    # LoRA leaves its config dict on the base model; the Copilot tuner keeps its own, so that one must go.
    base.__dict__.pop("peft_config", None)
    lora_dict = lora.to_dict()
    for key, value in list(lora_dict.items()):
        if isinstance(value, set):
            lora_dict[key] = sorted(value)
        elif hasattr(value, "value"):
            lora_dict[key] = value.value
    lora_dict["adapter_name"] = model.active_adapter  # its weights are saved under this name
    config.pilot_lora_config = lora_dict
    return base


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def num_decoder_layers(model: nn.Module) -> int:
    config = model.config.get_text_config()
    return config.num_decoder_layers if is_encoder_decoder(model) else config.num_hidden_layers


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The Pilot's decoder blocks: `model.layers` (Llama family) or `decoder.block` (T5)."""
    owner, name = (getattr(model, "decoder", None), "block") if is_encoder_decoder(model) else (model.model, "layers")
    layers = getattr(owner, name, None)
    if layers is None:
        raise ValueError(f"Cannot find the decoder layers of {type(model).__name__} (expected `model.layers`).")
    return layers


def build_copilot(model: nn.Module, config: CopilotConfig) -> CopilotNetwork:
    """The Copilot network for `config` on the Pilot `model`: a saved adapter's shape (its weights are loaded after),
    or a new one initialised from the Pilot's layers, a smaller pretrained decoder's, or randomly."""
    network_class = T5CopilotNetwork if is_encoder_decoder(model) else CopilotNetwork
    if config.copilot_architecture is not None:
        _check_saved_size(model, network_class, _saved_architecture(config))
    if config.copilot_architecture is not None and config.inference_mode:
        return network_class(_saved_architecture(config))  # weights are overwritten right after: nothing to copy
    source = _pretrained_source(model, config) if config.init == "pretrained" else model
    architecture = (
        _saved_architecture(config)
        if config.copilot_architecture is not None
        else _new_architecture(model, config, source)
    )
    if config.init == "random":
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        return network_class.with_random_blocks(architecture, std)
    return network_class.from_decoder_layers(architecture, decoder_layers(source), config.init_layers)


def _check_saved_size(model: nn.Module, network_class, architecture) -> None:
    """Refuse, before allocating it, a saved Copilot larger than twice its Pilot: no Copilot of the paper is, and a
    corrupt or foreign adapter_config.json could otherwise ask for any amount of memory."""
    with torch.device("meta"):
        size = sum(p.numel() for p in network_class(architecture).parameters())
    pilot = sum(p.numel() for p in model.parameters())
    if size > 2 * pilot:
        raise ValueError(
            f"adapter_config.json describes a Copilot of {size:,} parameters beside a Pilot of {pilot:,}; refusing "
            "to build it (the file is corrupt or belongs to another Pilot)."
        )


def _saved_architecture(config: CopilotConfig) -> CopilotNetworkConfig | T5CopilotNetworkConfig:
    fields = dict(config.copilot_architecture)
    architecture_class = T5CopilotNetworkConfig if fields.get("family") == "t5" else CopilotNetworkConfig
    fields.pop("family", None)
    architecture = architecture_class(**fields)
    architecture.dropout = config.dropout
    return architecture


def _new_architecture(model: nn.Module, config: CopilotConfig, source: nn.Module):
    """Blocks of the source's shape (the Pilot's, or the pretrained decoder's) reading the Pilot's width."""
    num_layers = config.num_layers
    if num_layers is None:
        source_layers = num_decoder_layers(source)
        num_layers = source_layers if config.init == "pretrained" else max(2, num_decoder_layers(model) // 4)
    if is_encoder_decoder(model):
        return _t5_architecture(model, config, source, num_layers)
    shape = source.config.get_text_config()
    return CopilotNetworkConfig(
        memory_size=model.config.get_text_config().hidden_size,
        hidden_size=shape.hidden_size,
        num_layers=num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=getattr(shape, "num_key_value_heads", None) or shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        rms_norm_eps=getattr(shape, "rms_norm_eps", 1e-6),
        attention_bias=base_linear(decoder_layers(source)[0].self_attn.q_proj).bias is not None,
        dropout=config.dropout,
    )


def _t5_architecture(model: nn.Module, config: CopilotConfig, source: nn.Module, num_layers: int):
    shape = source.config
    return T5CopilotNetworkConfig(
        memory_size=model.config.d_model,
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
    )


def _pretrained_source(model: nn.Module, config: CopilotConfig) -> nn.Module:
    """The smaller pretrained decoder of `init="pretrained"`, refused unless it is of the Pilot's family."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto_class = AutoModelForSeq2SeqLM if is_encoder_decoder(model) else AutoModelForCausalLM
    source = auto_class.from_pretrained(config.pretrained_model_name_or_path, dtype=torch.float32)
    pilot_type = model.config.get_text_config().model_type
    if source.config.model_type != pilot_type:
        raise ValueError(
            f"The Copilot's pretrained source {config.pretrained_model_name_or_path!r} is a "
            f"{source.config.model_type!r} model; it must be of the Pilot's family ({pilot_type!r})."
        )
    return source
