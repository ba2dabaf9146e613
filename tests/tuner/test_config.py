import json

import pytest
from peft import PeftConfig, PeftType, get_peft_model

import tcopilot_peft
from tcopilot_peft import CopilotConfig
from tests.conftest import tiny_pilot


def test_registered_as_peft_method_and_import_twice_is_safe():
    import importlib

    importlib.reload(tcopilot_peft.tuner.config)
    importlib.reload(tcopilot_peft.tuner)
    assert PeftType.COPILOT.value == "COPILOT"
    assert CopilotConfig().peft_type == PeftType.COPILOT


def test_every_field_has_help_text():
    own = set(CopilotConfig.__dataclass_fields__) - set(PeftConfig.__dataclass_fields__)
    assert own, "CopilotConfig declares its own fields"
    for name in own | {"modules_to_save", "trainable_token_indices"}:
        assert CopilotConfig.__dataclass_fields__[name].metadata.get("help"), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fusion_mode": "sum"}, "fusion_mode"),
        ({"fusion_lambda": -0.5}, "fusion_lambda"),
        ({"fusion_lambda": float("nan")}, "fusion_lambda"),
        ({"fusion_lambda": float("inf")}, "fusion_lambda"),
        ({"num_layers": 0}, "num_layers"),
        ({"init": "copy"}, "init"),
        ({"init": "pretrained"}, "pretrained_model_name_or_path"),
        ({"inference_feed": "gold"}, "inference_feed"),
        ({"copilot_loss": "l1"}, "copilot_loss"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CopilotConfig(**kwargs)


def test_fusion_settings_are_checked_when_changed_on_a_live_config():
    config = CopilotConfig()
    with pytest.raises(ValueError, match="fusion_lambda"):
        config.fusion_lambda = -1.0
    with pytest.raises(ValueError, match="fusion_mode"):
        config.fusion_mode = "sum"


def test_the_objective_sets_fusion_and_feed_unless_they_are_given():
    default = CopilotConfig()
    assert (default.copilot_loss, default.fusion_mode, default.inference_feed) == ("fused_ce", "logit", "pilot_error")
    paper = CopilotConfig(copilot_loss="rmse")  # the paper's objective is one flag away
    assert (paper.fusion_mode, paper.inference_feed) == ("prob", "copilot")
    mixed = CopilotConfig(copilot_loss="rmse", fusion_mode="logit")
    assert (mixed.fusion_mode, mixed.inference_feed) == ("logit", "copilot")
    mixed.fusion_mode = None  # unset on a live config: back to the objective's own
    assert mixed.fusion_mode == "prob"


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="'gpt2'"):
        get_peft_model(gpt2, CopilotConfig())


def test_config_round_trips_through_json(tmp_path):
    model = get_peft_model(tiny_pilot(), CopilotConfig(num_layers=3, fusion_lambda=0.7))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "COPILOT" and saved["num_layers"] == 3 and saved["pilot_vocab_size"] == 97
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CopilotConfig) and loaded.fusion_lambda == 0.7
    assert (loaded.copilot_loss, loaded.fusion_mode, loaded.inference_feed) == ("fused_ce", "logit", "pilot_error")
