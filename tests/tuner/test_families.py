"""The Pilot family table (`tuner/families.py`): every entry complete and consistent with a tiny Pilot of it."""

import pytest
import torch
from peft import get_peft_model
from torch import nn

from tcopilot_peft import CopilotConfig
from tcopilot_peft.tuner.causal import CausalRunner
from tcopilot_peft.tuner.families import FAMILIES, PilotFamily, default_lora_targets, family_of
from tcopilot_peft.tuner.seq2seq import Seq2SeqRunner
from tests.conftest import ARCHITECTURES, T5_VARIANTS, tiny_pilot, tiny_t5


PILOTS = [(arch, lambda arch=arch: tiny_pilot(arch)) for arch in ARCHITECTURES] + [
    (f"t5:{variant}", lambda variant=variant: tiny_t5(variant)) for variant in T5_VARIANTS
]


def test_every_family_of_the_table_has_a_tiny_pilot_here():
    assert set(FAMILIES) == set(ARCHITECTURES) | {"t5"}
    for family in FAMILIES.values():
        assert isinstance(family, PilotFamily)
        assert family.runner in (CausalRunner, Seq2SeqRunner)
        assert set(family.paths) == {"decoder", "layers", "norm", "embedding", "head"}
        assert family.memory_x and family.auto_class.startswith("AutoModelFor")


@pytest.mark.parametrize("name,make", PILOTS, ids=[name for name, _ in PILOTS])
def test_the_entry_describes_its_pilot(name, make):
    pilot = make()
    family = family_of(pilot)
    assert (family.runner is Seq2SeqRunner) == pilot.config.is_encoder_decoder
    layers = family.module(pilot, "layers")
    assert isinstance(layers, nn.ModuleList) and len(layers) == family.num_layers(pilot)
    assert family.module(pilot, "embedding") is pilot.get_input_embeddings()
    assert family.module(pilot, "head") is pilot.get_output_embeddings()
    assert isinstance(family.module(pilot, "norm"), nn.Module)
    positions = family.positions(pilot.config.get_text_config())
    assert positions["kind"] == ("relative_bias" if name.startswith("t5") else "rotary")
    assert all(value is not None for value in positions.values())
    # Every LoRA target names a module of the Pilot.
    targets = default_lora_targets(pilot)
    names = {module_name.rsplit(".", 1)[-1] for module_name, _ in pilot.named_modules()}
    assert targets == "all-linear" or set(targets) <= names


@pytest.mark.parametrize("name,make", PILOTS, ids=[name for name, _ in PILOTS])
def test_the_weight_map_initialises_every_block_weight_from_the_pilot(name, make):
    pilot = make()
    family = family_of(pilot)
    network = get_peft_model(pilot, CopilotConfig(num_layers=2)).base_model.copilot_model["default"]
    layer_keys = set(family.module(pilot, "layers")[0].state_dict())
    for block in network.layers:
        for key, _ in block.named_parameters():
            assert key in family.weight_map, f"{name}: the Copilot block's {key!r} is not in the weight map"
            assert family.weight_map[key] in layer_keys
    # The first block copies the first layer, through the map.
    block, layer = network.layers[0], family.module(pilot, "layers")[0].state_dict()
    for key, parameter in block.named_parameters():
        torch.testing.assert_close(parameter, layer[family.weight_map[key]].float())


def test_an_unsupported_family_is_refused_by_name():
    pilot = tiny_pilot()
    pilot.config.model_type = "gpt2"
    with pytest.raises(ValueError, match="does not support the Pilot architecture 'gpt2'.*llama, qwen2, mistral, t5"):
        family_of(pilot)
