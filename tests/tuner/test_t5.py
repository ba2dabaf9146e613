"""Encoder-decoder Pilots (T5, FLAN-T5): the same contract as decoder-only ones — `get_peft_model` builds a T5-decoder
Copilot from the Pilot's decoder blocks, generation with every strategy runs fused, cached == uncached, λ = 0 and
`disable_adapter` give the Pilot exactly, no future label leaks into the Copilot, and adapters round-trip."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.tuner.network_t5 import T5CopilotNetwork
from tests.conftest import T5_VARIANTS, VOCAB, randomise_copilot, tiny_pilot, tiny_t5


STRATEGIES = {
    "greedy": {},
    "beam": {"num_beams": 4},
    "sampling": {"do_sample": True, "top_k": 5},
    "beam-returns": {"num_beams": 3, "num_return_sequences": 2},
}


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # right padding in the encoder input
    ids[0, 5:] = 0
    return ids, mask


def copilot_t5(variant="flan-t5", **config):
    model = get_peft_model(tiny_t5(variant), CopilotConfig(**config))
    randomise_copilot(model)
    for network in model.base_model.copilot_model.values():
        if hasattr(network, "hidden_proj"):  # zero-initialised like the output map: give it weights too
            with torch.no_grad():
                network.hidden_proj.weight.normal_(std=0.5)
    return model.eval()


# The T5 Copilot's same-position options: the feed alone, the decoder's input token at t (the target at t − 1), the
# pooled decoder state h_t, and both.
SAME_POSITION = ["none", "token", "hidden", "token_hidden"]


@pytest.mark.parametrize("variant", sorted(T5_VARIANTS))
def test_the_copilot_is_a_t5_decoder_copied_from_the_pilots_blocks(variant):
    pilot = tiny_t5(variant)
    model = get_peft_model(pilot, CopilotConfig(num_layers=2))
    network = model.base_model.active_network
    assert isinstance(network, T5CopilotNetwork) and len(network.layers) == 2
    blocks = pilot.decoder.block
    for block, source in zip(network.layers, (blocks[0], blocks[-1])):  # evenly spaced: the first and the last
        torch.testing.assert_close(block.cross_attn.k.weight, source.layer[1].EncDecAttention.k.weight)
        torch.testing.assert_close(block.ff.wo.weight, source.layer[2].DenseReluDense.wo.weight)
    table = blocks[0].layer[0].SelfAttention.relative_attention_bias.weight
    torch.testing.assert_close(network.relative_attention_bias.weight, table)
    assert model.peft_config["default"].copilot_architecture["gated"] is (variant == "flan-t5")


@pytest.mark.parametrize("same_position", SAME_POSITION)
@pytest.mark.parametrize("feed", ["pilot_error", "copilot"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_generation_is_fused_and_cached_equals_uncached(feed, strategy, same_position):
    model = copilot_t5(inference_feed=feed, copilot_same_position=same_position)
    ids, mask = inputs()
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, **STRATEGIES[strategy])
    runs = {}
    for name, extra in (("cached", {}), ("uncached", {"use_cache": False})):
        torch.manual_seed(1)
        runs[name] = model.generate(**settings, **extra)
    with model.disable_adapter():
        torch.manual_seed(1)
        pilot = model.generate(**settings)
    assert torch.equal(runs["cached"], runs["uncached"])
    assert not torch.equal(runs["cached"], pilot)  # the correction changes tokens


def test_lambda_zero_and_disabled_adapter_are_the_pilot_exactly():
    model = copilot_t5()
    ids, mask = inputs()
    decoder = torch.randint(3, VOCAB, (3, 5))
    with model.disable_adapter():
        pilot_logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        pilot_tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=4)
    model.peft_config["default"].fusion_lambda = 0.0
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits, pilot_logits
    )
    assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=4), pilot_tokens)


@torch.no_grad()
@pytest.mark.parametrize("same_position", ["none", "token_hidden"])
def test_a_forward_scores_a_generated_target_as_generation_did(same_position):
    model = copilot_t5(inference_feed="copilot", copilot_same_position=same_position)
    ids, mask = inputs()
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, output_scores=True, return_dict_in_generate=True
    )
    scored = model(input_ids=ids, attention_mask=mask, decoder_input_ids=out.sequences[:, :-1]).logits
    torch.testing.assert_close(scored, torch.stack(out.scores, 1), atol=1e-3, rtol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("same_position", SAME_POSITION)
def test_no_future_label_reaches_the_copilot(same_position):
    model = copilot_t5(copilot_same_position=same_position)
    ids, mask = inputs()
    labels = torch.randint(3, VOCAB, (3, 6))
    first = model(input_ids=ids, attention_mask=mask, labels=labels).copilot_logits
    changed = labels.clone()
    changed[:, 4] = (changed[:, 4] + 1) % VOCAB
    second = model(input_ids=ids, attention_mask=mask, labels=changed).copilot_logits
    # Position 4's input is the error at position 3, which does not depend on label 4; position 5 reads label 4.
    torch.testing.assert_close(first[:, :5], second[:, :5])
    assert not torch.allclose(first[:, 5], second[:, 5])


@torch.no_grad()
@pytest.mark.parametrize("same_position", ["none", "token_hidden"])
def test_padded_encoder_tokens_are_not_read(same_position):
    model = copilot_t5(copilot_same_position=same_position)
    ids, mask = inputs()
    decoder = torch.randint(3, VOCAB, (3, 5))
    before = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    ids[0, 5:] = 7
    after = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    torch.testing.assert_close(before, after)


def test_the_copilot_loss_trains_the_copilot_only():
    model = copilot_t5()
    ids, mask = inputs()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.randint(3, VOCAB, (3, 6)))
    out.copilot_loss.backward()
    network = model.base_model.active_network
    assert network.input_proj.weight.grad is not None
    assert all(p.grad is None for p in model.base_model.model.parameters())


@pytest.mark.parametrize(
    ("task_type", "same_position"),
    [("CAUSAL_LM", "none"), ("SEQ_2_SEQ_LM", "hidden"), ("SEQ_2_SEQ_LM", "token_hidden")],
)
def test_round_trip_restores_identical_outputs(tmp_path, task_type, same_position):
    model = copilot_t5(task_type=task_type, copilot_same_position=same_position)
    ids, mask = inputs()
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=2)
    model.save_pretrained(tmp_path)
    assert model.peft_config["default"].copilot_architecture["same_position"] == same_position
    loaded = PeftModel.from_pretrained(tiny_t5(), tmp_path).eval()
    assert loaded.peft_config["default"].copilot_same_position == same_position
    assert torch.equal(loaded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, num_beams=2), reference)


def test_an_adapter_saved_before_the_same_position_field_loads_without_a_path(tmp_path):
    model = copilot_t5(copilot_same_position="none")
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    del saved["copilot_same_position"], saved["copilot_architecture"]["same_position"]
    config_path.write_text(json.dumps(saved))
    loaded = PeftModel.from_pretrained(tiny_t5(), tmp_path).eval()
    assert loaded.peft_config["default"].copilot_same_position == "none"
    ids, mask = inputs()
    decoder = torch.randint(3, VOCAB, (3, 5))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits,
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits,
            rtol=0,
            atol=0,
        )


@torch.no_grad()
def test_the_same_position_paths_change_the_correction_and_h_t_starts_at_zero():
    """The token at t enters at once (in the feed's space, before `input_proj`), so a `"token"` Copilot corrects
    otherwise than a `"none"` one with the same weights; h_t enters through a zero-initialised map, so a new
    `"hidden"` Copilot computes what a `"none"` one does, a new `"token_hidden"` what a `"token"` one does, and with
    weights in that map the correction changes."""
    ids, mask = inputs()
    decoder = torch.randint(3, VOCAB, (3, 5))
    new = {}
    for option in SAME_POSITION:
        model = get_peft_model(tiny_t5(), CopilotConfig(copilot_same_position=option))
        randomise_copilot(model)
        new[option] = model.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).copilot_logits
    torch.testing.assert_close(new["hidden"], new["none"], rtol=0, atol=0)
    torch.testing.assert_close(new["token_hidden"], new["token"], rtol=0, atol=0)
    assert not torch.allclose(new["token"], new["none"])
    for option, before in (("hidden", "none"), ("token_hidden", "token")):
        trained = copilot_t5(copilot_same_position=option)
        after = trained(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).copilot_logits
        assert not torch.allclose(after, new[before]), option


@torch.no_grad()
def test_the_token_path_reads_the_decoder_input_at_its_own_position():
    """Inside the network the token at position t feeds position t and, through attention, the later ones only."""
    network = copilot_t5(copilot_same_position="token").base_model.active_network
    g = torch.Generator().manual_seed(0)
    feed, memory_h, tokens = (torch.randn(2, 5, 32, generator=g) for _ in range(3))
    encoder, valid = torch.randn(2, 4, 32, generator=g), torch.ones(2, 4, dtype=torch.bool)
    first = network(feed, torch.cat([encoder, tokens], 1), memory_h, valid)
    tokens[:, 2] += 1.0
    second = network(feed, torch.cat([encoder, tokens], 1), memory_h, valid)
    torch.testing.assert_close(first[:, :2], second[:, :2], rtol=0, atol=0)
    assert not torch.allclose(first[:, 2], second[:, 2])
    with pytest.raises(ValueError, match="reads the decoder's input embeddings at its 5 positions .* got 0"):
        network(feed, encoder, memory_h, valid)


def test_copilots_do_not_cross_between_families(tmp_path):
    copilot_t5().save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="trained for a 't5' Pilot and cannot run on a 'llama' Pilot"):
        PeftModel.from_pretrained(tiny_pilot(), tmp_path / "t5")
    get_peft_model(tiny_pilot(), CopilotConfig()).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="trained for a 'llama' Pilot and cannot run on a 't5' Pilot"):
        PeftModel.from_pretrained(tiny_t5(), tmp_path / "llama")
    with pytest.raises(ValueError, match="vocabulary size 97, but .* has vocabulary size 50"):
        PeftModel.from_pretrained(tiny_t5(vocab_size=50), tmp_path / "t5")


def test_an_unsupported_encoder_decoder_is_refused_by_name():
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
    )
    with pytest.raises(ValueError, match="does not support the Pilot architecture 'bart'"):
        get_peft_model(BartForConditionalGeneration(config), CopilotConfig())


def test_a_lora_tuned_t5_round_trips_with_its_lora(tmp_path):
    from peft import LoraConfig

    lora = get_peft_model(tiny_t5(), LoraConfig(r=4, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"))
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # LoRA that changes the Pilot
    model = get_peft_model(lora, CopilotConfig())
    randomise_copilot(model)
    model.eval()
    ids, mask = inputs()
    reference = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_t5(), tmp_path).eval()
    assert torch.equal(loaded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6), reference)


def test_the_copilot_can_start_from_a_smaller_pretrained_t5(tmp_path):
    tiny_t5(d_model=16, layers=2, seed=3).save_pretrained(tmp_path)
    model = get_peft_model(tiny_t5(), CopilotConfig(init="pretrained", pretrained_model_name_or_path=str(tmp_path)))
    network = model.base_model.active_network
    assert network.config.hidden_size == 16 and network.config.memory_size == 32 and len(network.layers) == 2
    randomise_copilot(model)
    ids, mask = inputs()
    assert model.eval().generate(input_ids=ids, attention_mask=mask, max_new_tokens=4).shape == (3, 5)


@torch.no_grad()
@pytest.mark.parametrize("feed", ["pilot_error", "copilot"])
@pytest.mark.parametrize("variant", sorted(T5_VARIANTS))
def test_a_decoding_step_runs_the_lm_head_once(feed, variant, monkeypatch):
    # Every product with the head's weight (the Pilot's logits and the correction W·u alike) goes through F.linear;
    # the correction reads it detached, a new tensor over the same storage.
    model = copilot_t5(variant, inference_feed=feed)
    head_weight = model.get_output_embeddings().weight
    linear, passes, steps = torch.nn.functional.linear, [], []

    def counting_linear(x, weight, *args, **kwargs):
        passes.extend([1] if weight.data_ptr() == head_weight.data_ptr() else [])
        return linear(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    handle = model.base_model.model.decoder.register_forward_hook(lambda *args: steps.append(1))
    ids, mask = inputs()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, num_beams=2)
    handle.remove()
    assert len(steps) == 6 and len(passes) == len(steps)
