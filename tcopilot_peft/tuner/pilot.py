"""What the tuner does with a Pilot: refuse one it cannot serve, unwrap a LoRA-tuned one, and build the Copilot of its
family (`families.py` holds what differs between families)."""

from __future__ import annotations

import torch
from peft import PeftModel
from peft.utils import PeftType
from torch import nn

from .config import CopilotConfig
from .families import FAMILIES, family_of, pilot_model_type
from .network import CopilotNetwork


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
    family, model_type = family_of(model), pilot_model_type(model)
    saved_type = config.pilot_model_type
    if saved_type in FAMILIES and FAMILIES[saved_type].runner is not family.runner:
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
    return family_of(model).num_layers(model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The Pilot's decoder layers, where its family's entry says they live."""
    return family_of(model).module(model, "layers")


def build_copilot(model: nn.Module, config: CopilotConfig) -> CopilotNetwork:
    """The Copilot network for `config` on the Pilot `model`: a saved adapter's shape (its weights are loaded after),
    or a new one initialised from the Pilot's layers, a smaller pretrained decoder's, or randomly."""
    family = family_of(model)
    network_class = family.network_class
    if config.copilot_architecture is not None:
        _check_saved_size(model, network_class, _saved_architecture(family, config))
    if config.copilot_architecture is not None and config.inference_mode:
        return network_class(
            _saved_architecture(family, config)
        )  # weights are overwritten right after: nothing to copy
    source = _pretrained_source(model, config) if config.init == "pretrained" else model
    architecture = (
        _saved_architecture(family, config)
        if config.copilot_architecture is not None
        else _new_architecture(model, config, source)
    )
    if config.init == "random":
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        return network_class.with_random_blocks(architecture, std)
    return network_class.from_decoder_layers(
        architecture, decoder_layers(source), family.weight_map, config.init_layers
    )


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


def _saved_architecture(family, config: CopilotConfig):
    fields = dict(config.copilot_architecture)
    fields.pop("family", None)
    architecture = family.network_config_class(**fields)
    architecture.dropout = config.dropout
    return architecture


def _new_architecture(model: nn.Module, config: CopilotConfig, source: nn.Module):
    """Blocks of the source's shape (the Pilot's, or the pretrained decoder's) reading the Pilot's width."""
    num_layers = config.num_layers
    if num_layers is None:
        source_layers = num_decoder_layers(source)
        num_layers = source_layers if config.init == "pretrained" else max(2, num_decoder_layers(model) // 4)
    return family_of(model).architecture(model, source, config, num_layers)


def _pretrained_source(model: nn.Module, config: CopilotConfig) -> nn.Module:
    """The smaller pretrained decoder of `init="pretrained"`, refused unless it is of the Pilot's family."""
    import transformers

    auto_class = getattr(transformers, family_of(model).auto_class)
    source = auto_class.from_pretrained(config.pretrained_model_name_or_path, dtype=torch.float32)
    pilot_type = model.config.get_text_config().model_type
    if source.config.model_type != pilot_type:
        raise ValueError(
            f"The Copilot's pretrained source {config.pretrained_model_name_or_path!r} is a "
            f"{source.config.model_type!r} model; it must be of the Pilot's family ({pilot_type!r})."
        )
    return source
