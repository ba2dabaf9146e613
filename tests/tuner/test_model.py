"""The fused forward and fused generation of the Copilot tuner, on tiny offline Pilots."""

import pytest
import torch
from peft import get_peft_model

from tcopilot_peft import CopilotCausalLMOutput, CopilotConfig
from tcopilot_peft.fusion import COPILOT_LOSSES
from tests.conftest import randomise_copilot, tiny_pilot


def copilot_on(arch="llama", seed=0, **config):
    model = get_peft_model(tiny_pilot(arch, seed=seed), CopilotConfig(**config))
    randomise_copilot(model, seed=seed + 1)
    return model.eval()


def prompts(batch=2, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (batch, length), generator=generator)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_forward_returns_fused_logits_and_lambda_zero_is_the_pilot(arch):
    model, pilot = copilot_on(arch), tiny_pilot(arch)
    ids = prompts()
    fused = model(input_ids=ids)
    assert not torch.allclose(fused.logits, pilot(ids).logits)
    torch.testing.assert_close(fused.pilot_logits, pilot(ids).logits)
    model.peft_config["default"].fusion_lambda = 0.0  # takes effect at the next forward
    assert torch.equal(model(input_ids=ids).logits, pilot(ids).logits)


@pytest.mark.parametrize("loss", COPILOT_LOSSES)
@pytest.mark.parametrize("mode", ["logit", "prob"])
def test_lambda_zero_generates_the_pilots_tokens(mode, loss):
    model, pilot = copilot_on(fusion_lambda=0.0, fusion_mode=mode, copilot_loss=loss), tiny_pilot()
    ids = prompts()
    ours = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, pilot.generate(input_ids=ids, max_new_tokens=8, do_sample=False))


def test_copilot_changes_generation_and_disable_adapter_gives_the_pilot():
    model, pilot = copilot_on(), tiny_pilot()
    ids = prompts(batch=4)
    reference = pilot.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert not torch.equal(model.generate(input_ids=ids, max_new_tokens=8, do_sample=False), reference)
    with model.disable_adapter():
        assert torch.equal(model.generate(input_ids=ids, max_new_tokens=8, do_sample=False), reference)
        assert torch.equal(model(input_ids=ids).logits, pilot(ids).logits)
    assert not torch.equal(model.generate(input_ids=ids, max_new_tokens=8, do_sample=False), reference)


@pytest.mark.parametrize("feed", ["copilot", "pilot_error"])
@pytest.mark.parametrize("mode", ["logit", "prob"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_cached_and_uncached_generation_agree(feed, mode, num_beams):
    model = copilot_on(inference_feed=feed, fusion_mode=mode)
    ids = prompts(batch=2)
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=num_beams)
    cached = model.generate(input_ids=ids, use_cache=True, **kwargs)
    uncached = model.generate(input_ids=ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_sampling_and_num_return_sequences():
    model = copilot_on()
    ids = prompts(batch=2)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=True, top_k=20, num_return_sequences=3)
    assert out.shape == (6, 11)
    torch.manual_seed(0)
    again = model.generate(input_ids=ids, max_new_tokens=5, do_sample=True, top_k=20, num_return_sequences=3)
    assert torch.equal(out, again)
    beams = model.generate(input_ids=ids, max_new_tokens=5, num_beams=4, num_return_sequences=2, do_sample=False)
    assert beams.shape == (4, 11)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_left_padded_batch_generates_what_each_row_generates_alone(num_beams):
    model = copilot_on()
    rows = [prompts(1, 7, seed=1)[0], prompts(1, 4, seed=2)[0], prompts(1, 5, seed=3)[0]]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=num_beams, pad_token_id=0)
    batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], attention_mask=torch.ones(1, len(row), dtype=torch.long), **kwargs)
        assert torch.equal(batched[i, width:], alone[0, len(row) :]), f"row {i}"


def test_no_label_leakage_future_targets_do_not_change_earlier_copilot_outputs():
    model = copilot_on()
    ids = prompts(batch=1, length=10)
    labels = ids.clone()
    labels[:, :3] = -100
    first = model(input_ids=ids, labels=labels).copilot_logits
    changed = labels.clone()
    changed[0, 7] = (changed[0, 7] + 5) % 97  # the target of position 6
    second = model(input_ids=ids, labels=changed).copilot_logits
    torch.testing.assert_close(first[:, :7], second[:, :7], rtol=0, atol=0)
    assert not torch.allclose(first[:, 7:], second[:, 7:])


def test_labelled_forward_exposes_training_signals_without_gradient_into_the_pilot():
    model = copilot_on()
    model.train()
    for parameter in model.base_model.model.parameters():
        parameter.requires_grad_(True)  # as in full fine-tuning
    ids = prompts(batch=2, length=9)
    labels = ids.clone()
    labels[:, :4] = -100
    with pytest.warns(UserWarning, match="Pilot's own cross-entropy"):  # training on `loss` would skip the Copilot
        out = model(input_ids=ids, labels=labels)
    assert out.pilot_logits.shape == out.copilot_logits.shape == out.logits.shape
    assert out.copilot_memory_x.shape == out.copilot_memory_h.shape == (2, 9, 32)
    expected_pilot_loss = tiny_pilot()(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(out.loss, expected_pilot_loss)
    out.copilot_loss.backward()
    assert all(p.grad is None for p in model.base_model.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.base_model.copilot_model.parameters())


@pytest.mark.parametrize("mode", ["prob", "logit"])
def test_scoring_a_continuation_matches_generation_logits(mode):
    """With `copilot_prompt_length`, one forward over prompt + continuation reproduces the fused scores that
    generation used for each continuation token (the log-likelihood evaluation path). In logit mode generation
    fuses in hidden space, W·(h + λu), which equals z + λ·W·u up to rounding."""
    model = copilot_on(fusion_mode=mode)
    ids = prompts(batch=2, length=5)
    out = model.generate(
        input_ids=ids, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    scored = model(input_ids=out.sequences, copilot_prompt_length=5).logits
    for step, step_scores in enumerate(out.scores):
        torch.testing.assert_close(scored[:, 4 + step], step_scores, atol=1e-4, rtol=1e-4)


def test_a_nan_row_of_the_lm_head_returns_the_pilots_own_logits_everywhere_and_counts_them():
    model = copilot_on()
    ids = prompts()
    with torch.no_grad():
        model.base_model.model.lm_head.weight[5] = float("nan")
    with pytest.warns(UserWarning, match="the returned logits are the Pilot's own"):
        out = model(input_ids=ids)
    torch.testing.assert_close(out.logits, out.pilot_logits, equal_nan=True)
    assert torch.isnan(out.logits[..., 5]).all() and torch.isfinite(out.logits[..., :5]).all()
    assert model.copilot_skipped_positions == ids.numel()


def test_generation_in_inference_mode_then_forward_with_autograd():
    model = copilot_on()
    ids = prompts()
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    out = model(input_ids=ids, copilot_prompt_length=3)
    assert out.logits.requires_grad


def test_copilot_output_fields_are_defined_once_and_follow_the_pilots_own():
    from dataclasses import fields

    from transformers.modeling_outputs import CausalLMOutputWithPast, Seq2SeqLMOutput

    from tcopilot_peft.tuner.outputs import CopilotOutputFields, CopilotSeq2SeqLMOutput

    copilot = [f.name for f in fields(CopilotOutputFields)]
    for output, pilot in ((CopilotCausalLMOutput, CausalLMOutputWithPast), (CopilotSeq2SeqLMOutput, Seq2SeqLMOutput)):
        assert [f.name for f in fields(output)] == [f.name for f in fields(pilot)] + copilot
        assert not set(output.__dict__.get("__annotations__", {})) & set(copilot)  # not redeclared
    logits, correction = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    out = CopilotCausalLMOutput(logits=logits, copilot_logits=correction)
    assert list(out.keys()) == ["logits", "copilot_logits"] and out.to_tuple()[0] is logits


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_inject_adapter_in_model_refuses_with_the_reason_instead_of_a_silent_no_op(low_cpu_mem_usage):
    from peft import inject_adapter_in_model

    pilot = tiny_pilot()
    before = {name: tensor.clone() for name, tensor in pilot.state_dict().items()}
    with pytest.raises(ValueError, match="does not support .*COPILOT because it uses shared state .*get_peft_model"):
        inject_adapter_in_model(CopilotConfig(), pilot, low_cpu_mem_usage=low_cpu_mem_usage)
    assert not hasattr(pilot, "peft_config")
    after = pilot.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("pooled_layers", [None, [0, -1]])
def test_prefill_pools_as_the_layers_run_with_the_values_of_pooling_every_kept_state(family, pooled_layers):
    from tests.conftest import tiny_t5

    pilot = tiny_t5() if family == "t5" else tiny_pilot(layers=6)
    model = get_peft_model(pilot, CopilotConfig(pooled_layers=pooled_layers))
    ids = torch.randint(3, 97, (2, 7))
    decoder = pilot.get_decoder()
    seen = []
    handle = decoder.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("output_hidden_states")), with_kwargs=True
    )
    out = model(input_ids=ids, labels=ids, copilot_teacher_forcing=False)
    handle.remove()
    assert seen == [False]  # no per-layer states are kept: memory does not grow with depth
    with torch.no_grad():
        states = pilot(input_ids=ids, labels=ids, output_hidden_states=True)
    states = states.decoder_hidden_states if family == "t5" else states.hidden_states
    layers = states[1:]
    stacked = torch.stack([layers[i] for i in pooled_layers] if pooled_layers else list(layers)).float()
    stacked = stacked * torch.rsqrt(stacked.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out.copilot_memory_h, stacked.mean(0))
