"""The benchmark's controls (e) and (f) must start from what they claim to be, or RESULTS.md compares wrong things."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tcopilot_peft.demo import PILOT_DIR


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from controls import copilot_layer_indices, ensemble_generate, expanded_pilot, small_model  # noqa: E402


PROMPTS = ["sort 52814:", "rev abcdef:", "count a abcab:"]


def _greedy(model, tokenizer, prompts):
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def test_copilot_layer_indices_match_the_default_copilot_init():
    assert copilot_layer_indices(4, 2) == [0, 3]
    assert copilot_layer_indices(12, 3) == [0, 6, 11]
    assert copilot_layer_indices(4, 1) == [0]


def test_expanded_pilot_starts_as_the_pilot_with_more_parameters():
    pilot = AutoModelForCausalLM.from_pretrained(PILOT_DIR).eval()
    larger, new_layers = expanded_pilot(str(PILOT_DIR), 2)
    larger.eval()
    assert len(larger.model.layers) == 6 and larger.config.num_hidden_layers == 6
    assert new_layers == [1, 5]
    layer_size = sum(p.numel() for p in pilot.model.layers[0].parameters())
    assert sum(p.numel() for p in larger.parameters()) == sum(p.numel() for p in pilot.parameters()) + 2 * layer_size
    tokenizer = AutoTokenizer.from_pretrained(PILOT_DIR)
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(larger(**batch).logits, pilot(**batch).logits)
    assert _greedy(larger, tokenizer, PROMPTS) == _greedy(pilot, tokenizer, PROMPTS)  # the KV cache sees 6 layers


def test_small_model_keeps_the_named_layers():
    pilot = AutoModelForCausalLM.from_pretrained(PILOT_DIR)
    small = small_model(str(PILOT_DIR), [0, 3])
    assert small.config.num_hidden_layers == 2
    torch.testing.assert_close(small.model.layers[1].mlp.up_proj.weight, pilot.model.layers[3].mlp.up_proj.weight)


def test_ensemble_with_weight_zero_is_the_pilot_and_a_weight_changes_it():
    tokenizer = AutoTokenizer.from_pretrained(PILOT_DIR)
    pilot = AutoModelForCausalLM.from_pretrained(PILOT_DIR).eval()
    small = small_model(str(PILOT_DIR), [0])
    assert ensemble_generate(pilot, small, 0.0, tokenizer, PROMPTS, 10) == _greedy(pilot, tokenizer, PROMPTS)
    # A random-ish one-layer model with a large weight must move the greedy choice somewhere.
    assert ensemble_generate(pilot, small, 50.0, tokenizer, PROMPTS, 10) != _greedy(pilot, tokenizer, PROMPTS)
