"""How the Copilot's blocks are initialised: from the Pilot's layers, a smaller pretrained decoder, or randomly."""

import pytest
import torch
from peft import PeftModel, get_peft_model

from tcopilot_peft import CopilotConfig
from tests.conftest import randomise_copilot, tiny_pilot


def test_default_depth_is_a_quarter_of_the_pilot_and_blocks_copy_pilot_layers():
    pilot = tiny_pilot(layers=8)
    model = get_peft_model(pilot, CopilotConfig())
    network = model.base_model.copilot_model["default"]
    assert network.config.num_layers == 2
    # Evenly spaced source layers: 0 and 7.
    for block, index in zip(network.layers, (0, 7)):
        source = pilot.model.layers[index]
        torch.testing.assert_close(block.attn.k_proj.weight, source.self_attn.k_proj.weight)
        torch.testing.assert_close(block.mlp.down_proj.weight, source.mlp.down_proj.weight)
    assert [block.attn.is_cross for block in network.layers] == [False, True]
    # A fresh Copilot corrects nothing: the output map starts at zero (logit fusion, the default, adds nothing).
    ids = torch.randint(3, 97, (1, 5))
    expected = tiny_pilot(layers=8)(ids).logits
    torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_init_layers_out_of_range_or_of_the_wrong_count_are_refused():
    with pytest.raises(ValueError, match="init_layers"):
        get_peft_model(tiny_pilot(layers=4), CopilotConfig(num_layers=2, init_layers=[0, 4]))
    with pytest.raises(ValueError, match="init_layers"):
        get_peft_model(tiny_pilot(layers=4), CopilotConfig(num_layers=2, init_layers=[1]))


def test_init_from_a_smaller_pretrained_decoder_of_the_same_family(tmp_path):
    small = tiny_pilot(hidden_size=16, layers=3, seed=5)
    small.save_pretrained(tmp_path / "small")
    pilot = tiny_pilot(hidden_size=32)
    config = CopilotConfig(init="pretrained", pretrained_model_name_or_path=str(tmp_path / "small"))
    model = get_peft_model(pilot, config)
    network = model.base_model.copilot_model["default"]
    assert network.config.hidden_size == 16 and network.config.memory_size == 32
    assert network.config.num_layers == 3
    torch.testing.assert_close(network.layers[2].attn.q_proj.weight, small.model.layers[2].self_attn.q_proj.weight)
    assert isinstance(network.memory_proj, torch.nn.Linear)  # dimension alignment 32 -> 16
    randomise_copilot(model)
    ids = torch.randint(3, 97, (2, 6))
    reference = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    # Loading needs neither the pretrained source nor a download: the saved architecture rebuilds the network.
    (tmp_path / "small" / "model.safetensors").unlink()
    loaded = PeftModel.from_pretrained(tiny_pilot(hidden_size=32), tmp_path / "adapter")
    torch.testing.assert_close(loaded(input_ids=ids).logits, reference)


def test_pretrained_source_of_another_family_is_refused(tmp_path):
    tiny_pilot("qwen2").save_pretrained(tmp_path / "qwen")
    config = CopilotConfig(init="pretrained", pretrained_model_name_or_path=str(tmp_path / "qwen"))
    with pytest.raises(ValueError, match="'qwen2'.*'llama'"):
        get_peft_model(tiny_pilot("llama"), config)


def test_random_init_differs_from_pilot_layers():
    model = get_peft_model(tiny_pilot(), CopilotConfig(init="random"))
    block = model.base_model.copilot_model["default"].layers[0]
    assert not torch.allclose(block.attn.q_proj.weight, tiny_pilot().model.layers[0].self_attn.q_proj.weight)
