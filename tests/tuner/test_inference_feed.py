"""Outside training the Copilot reads the Pilot's error built as the Mistake Log gives it in training (the top-k of p̂,
`CopilotConfig.pilot_error_top_k`); an adapter saved before that field reads the dense p̂, as it did."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.fusion import shift_targets
from tcopilot_peft.mistake_log import DEFAULT_TOP_K, MistakeLog
from tests.conftest import randomise_copilot, tiny_pilot


IDS = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))


def copilot_on(pilot=None, **config):
    model = get_peft_model(pilot if pilot is not None else tiny_pilot(), CopilotConfig(**config))
    randomise_copilot(model, seed=1)
    return model.eval()


def replayed_correction(model, top_k: int) -> torch.Tensor:
    """The Copilot's correction teacher-forced on the errors a Mistake Log of this `top_k` logs for `IDS` (the
    Pilot's states taken unrounded, so only the error differs from the fused forward's)."""
    tuner = model.base_model
    out = model(input_ids=IDS, labels=IDS, copilot_teacher_forcing=False)
    targets = shift_targets(IDS)
    log = MistakeLog(top_k=top_k)
    log.append(IDS, None, targets, out.copilot_memory_h, out.pilot_target_logits)
    batch = log.collate(log.rounds[-1])
    valid = torch.ones_like(IDS, dtype=torch.bool)
    correction, _ = tuner.copilot_layer.teacher_forced(
        out.copilot_memory_x, out.copilot_memory_h, valid, targets, batch.prediction(), "fused_ce", True
    )
    return correction


@torch.no_grad()
@pytest.mark.parametrize("top_k", [1, 5, DEFAULT_TOP_K])
def test_inference_feed_is_the_mistake_logs_replay_feed(top_k):
    # Every position after the first treated as generated: each reads the error at the one before, as in training.
    model = copilot_on(pilot_error_top_k=top_k)
    scored = model(input_ids=IDS, copilot_prompt_length=1).copilot_logits
    torch.testing.assert_close(scored, replayed_correction(model, top_k), rtol=1e-5, atol=1e-5)
    # The dense feed (adapters saved before the field) is not what the Copilot was trained on.
    model.peft_config["default"].pilot_error_top_k = 0
    dense = model(input_ids=IDS, copilot_prompt_length=1).copilot_logits
    assert not torch.allclose(dense, replayed_correction(model, top_k), rtol=1e-3, atol=1e-3)


@torch.no_grad()
def test_generation_steps_read_the_same_feed_as_scoring():
    model = copilot_on()
    generated = model.generate(
        input_ids=IDS, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    scored = model(input_ids=generated.sequences, copilot_prompt_length=IDS.shape[1]).logits
    steps = torch.stack(generated.logits, dim=1)
    torch.testing.assert_close(steps, scored[:, IDS.shape[1] - 1 : -1], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_teacher_forced_evaluation_reads_the_top_k_and_keeps_the_dense_loss():
    model = copilot_on(pilot_error_top_k=3)
    out = model(input_ids=IDS, labels=IDS)
    torch.testing.assert_close(out.copilot_logits, replayed_correction(model, 3), rtol=1e-5, atol=1e-5)
    model.peft_config["default"].pilot_error_top_k = 0
    dense = model(input_ids=IDS, labels=IDS)
    assert not torch.allclose(out.copilot_logits, dense.copilot_logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("top_k", [0, 3])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_cached_and_uncached_generation_agree_for_either_feed(top_k, num_beams):
    model = copilot_on(pilot_error_top_k=top_k)
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=num_beams)
    assert torch.equal(
        model.generate(input_ids=IDS, use_cache=True, **kwargs),
        model.generate(input_ids=IDS, use_cache=False, **kwargs),
    )


def test_lambda_zero_with_the_top_k_feed_is_the_pilot():
    model, pilot = copilot_on(pilot_error_top_k=2, fusion_lambda=0.0), tiny_pilot()
    kwargs = dict(max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(input_ids=IDS, **kwargs), pilot.generate(input_ids=IDS, **kwargs))


def test_an_adapter_saved_without_the_field_reads_the_dense_feed_as_before(tmp_path):
    model = copilot_on()
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    assert saved["pilot_error_top_k"] == DEFAULT_TOP_K
    assert PeftModel.from_pretrained(tiny_pilot(), tmp_path).peft_config["default"].pilot_error_top_k == DEFAULT_TOP_K
    del saved["pilot_error_top_k"]  # as written before the field existed
    path.write_text(json.dumps(saved))
    old = PeftModel.from_pretrained(tiny_pilot(), tmp_path).eval()
    assert old.peft_config["default"].pilot_error_top_k == 0
    model.peft_config["default"].pilot_error_top_k = 0  # the dense feed every adapter read before
    with torch.no_grad():
        ids = torch.cat([IDS, IDS[:, :3]], dim=1)
        expected = model(input_ids=ids, copilot_prompt_length=IDS.shape[1]).logits
        assert torch.equal(old(input_ids=ids, copilot_prompt_length=IDS.shape[1]).logits, expected)
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=4)
    assert torch.equal(old.generate(input_ids=IDS, **kwargs), model.generate(input_ids=IDS, **kwargs))


def test_config_field_defaults_and_validation():
    assert CopilotConfig().pilot_error_top_k == DEFAULT_TOP_K
    assert CopilotConfig(pilot_error_top_k=0).pilot_error_top_k == 0
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="pilot_error_top_k"):
            CopilotConfig(pilot_error_top_k=bad)
