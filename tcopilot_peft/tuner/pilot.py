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


SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


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
    config.pilot_lora_config = lora_dict
    return base


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"Cannot find the decoder layers of {type(model).__name__} (expected `model.layers`).")
    return layers


def build_copilot(model: nn.Module, config: CopilotConfig) -> CopilotNetwork:
    """The Copilot network for `config` on the Pilot `model`: a saved adapter's shape (its weights are loaded after),
    or a new one initialised from the Pilot's layers, a smaller pretrained decoder's, or randomly."""
    if config.copilot_architecture is not None and config.inference_mode:
        return CopilotNetwork(_saved_architecture(config))  # weights are overwritten right after: nothing to copy
    source = _pretrained_source(model, config) if config.init == "pretrained" else model
    architecture = (
        _saved_architecture(config)
        if config.copilot_architecture is not None
        else _new_architecture(model, config, source)
    )
    if config.init == "random":
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        return CopilotNetwork.with_random_blocks(architecture, std)
    return CopilotNetwork.from_decoder_layers(architecture, decoder_layers(source), config.init_layers)


def _saved_architecture(config: CopilotConfig) -> CopilotNetworkConfig:
    architecture = CopilotNetworkConfig(**config.copilot_architecture)
    architecture.dropout = config.dropout
    return architecture


def _new_architecture(model: nn.Module, config: CopilotConfig, source: nn.Module) -> CopilotNetworkConfig:
    """Blocks of the source's shape (the Pilot's, or the pretrained decoder's) reading the Pilot's width."""
    shape = source.config.get_text_config()
    num_layers = config.num_layers
    if num_layers is None:
        pilot_layers = model.config.get_text_config().num_hidden_layers
        num_layers = shape.num_hidden_layers if config.init == "pretrained" else max(2, pilot_layers // 4)
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


def _pretrained_source(model: nn.Module, config: CopilotConfig) -> nn.Module:
    """The smaller pretrained decoder of `init="pretrained"`, refused unless it is of the Pilot's family."""
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(config.pretrained_model_name_or_path, dtype=torch.float32)
    pilot_type = model.config.get_text_config().model_type
    if source.config.model_type != pilot_type:
        raise ValueError(
            f"The Copilot's pretrained source {config.pretrained_model_name_or_path!r} is a "
            f"{source.config.model_type!r} model; it must be of the Pilot's family ({pilot_type!r})."
        )
    return source
