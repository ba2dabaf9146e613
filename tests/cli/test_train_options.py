"""`tcopilot train`'s options, generated from `CopilotConfig` and `CopilotSFTConfig`."""

import dataclasses

import pytest
from peft import PeftConfig

from tcopilot_peft.cli import build_parser
from tcopilot_peft.commands import TRAIN_DEFAULTS, parse_train_options
from tcopilot_peft.trainer import CopilotSFTConfig
from tcopilot_peft.tuner import CopilotConfig


def parse(*argv):
    return build_parser("train").parse_args(["train", "--model", "m", "--dataset", "d.json", *argv])


def option_strings():
    subparsers = next(action for action in build_parser("train")._actions if action.dest == "command")
    return {option for action in subparsers.choices["train"]._actions for option in action.option_strings}


def test_every_user_field_of_both_configs_is_an_option():
    options = option_strings()
    created = {spec.name for spec in dataclasses.fields(CopilotConfig) if spec.metadata["help"].startswith("Set on")}
    user_fields = set(CopilotConfig.__dataclass_fields__) - set(PeftConfig.__dataclass_fields__) - created
    trainer_fields = {spec.name for spec in dataclasses.fields(CopilotSFTConfig) if spec.init}
    for name in user_fields | trainer_fields:
        assert f"--{name}" in options and f"--{name.replace('_', '-')}" in options, name
    assert created == {"pilot_model_type", "pilot_vocab_size", "pilot_hidden_size", "copilot_architecture"} | {
        "pilot_lora_config"
    }
    assert not {f"--{name}" for name in created} & options


def test_options_reach_the_configs_with_the_commands_defaults(tmp_path):
    script, copilot, training = parse_train_options(
        parse("--output-dir", str(tmp_path), "--copilot-layers", "3", "--init", "random", "--pooled-layers", "0", "2")
    )
    assert (script.model, script.dataset, script.lora_r) == ("m", "d.json", 16)
    assert (copilot.num_layers, copilot.init, copilot.pooled_layers) == (3, "random", [0, 2])
    assert (copilot.copilot_loss, copilot.fusion_mode) == ("fused_ce", "logit")
    for name, value in TRAIN_DEFAULTS.items():
        assert getattr(training, name) == value
    _, copilot, training = parse_train_options(
        parse("--output_dir", str(tmp_path), "--copilot-loss", "rmse", "--batch-size", "2", "--epochs", "0.5")
    )
    assert (copilot.copilot_loss, copilot.fusion_mode, training.copilot_loss) == ("rmse", "prob", "rmse")
    assert (training.per_device_train_batch_size, training.num_train_epochs) == (2, 0.5)


def test_a_bad_value_is_a_usage_error(tmp_path):
    from tcopilot_peft.cli import UsageError

    with pytest.raises(UsageError, match="fusion_lambda"):
        parse_train_options(parse("--output-dir", str(tmp_path), "--fusion-lambda", "-1"))
    with pytest.raises(UsageError, match="copilot_steps_factor"):
        parse_train_options(parse("--output-dir", str(tmp_path), "--copilot-steps-factor", "0"))
    with pytest.raises(UsageError, match="--output-dir is required"):
        parse_train_options(parse())
