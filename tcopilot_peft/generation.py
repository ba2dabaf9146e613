"""Generation with and without the Copilot from one model, shared by the demo, the benchmarks and `tcopilot eval`."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch


ARMS = ("pilot", "fused")


@torch.inference_mode()
def generate_arms(
    model, tokenizer, prompts: Sequence[str], arms: Sequence[str] = ARMS, **generate_kwargs
) -> tuple[dict[str, list[str]], dict[str, tuple[int, float]]]:
    """Completions of one batch of `prompts` by each arm, from one left-padded tokenisation.

    Args:
        model (`PeftModel`): a Pilot carrying a Copilot adapter (or, for the arm `"fused"` alone, any causal or
            seq2seq LM).
        tokenizer: its tokenizer.
        prompts (`Sequence[str]`): the prompts of one batch.
        arms (`Sequence[str]`): `"fused"` is the model as it is (Pilot + Copilot); `"pilot"` runs it with the
            adapter disabled. They run one after the other on the same inputs, so timings are comparable.
        **generate_kwargs: passed unchanged to every `generate()` call.

    Returns:
        The new text of each arm (special tokens removed), and each arm's (generated non-pad tokens, seconds).
    """
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"Unknown generation arm(s) {sorted(unknown)}; choose from {ARMS}.")
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    # Only what a causal LM's generate() accepts (some tokenizers add token_type_ids).
    inputs = {name: encoded[name].to(model.device) for name in ("input_ids", "attention_mask")}
    width = inputs["input_ids"].shape[1]
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    completions, costs = {}, {}
    for arm in arms:
        began = time.perf_counter()
        if arm == "pilot":
            with model.disable_adapter():
                out = model.generate(**inputs, **generate_kwargs)
        else:
            out = model.generate(**inputs, **generate_kwargs)
        seconds = time.perf_counter() - began
        new = out if encoder_decoder else out[:, width:]  # an encoder-decoder's output holds no prompt
        pad = generate_kwargs.get("pad_token_id", tokenizer.pad_token_id)
        costs[arm] = (int((new != pad).sum()), seconds)
        completions[arm] = tokenizer.batch_decode(new, skip_special_tokens=True)
    return completions, costs


def generate_greedy(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64, arms: Sequence[str] = ARMS
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Greedy completions of `prompts` by each arm, batch by batch (the arms interleaved per batch so both see the
    same machine), and each arm's generated tokens per second."""
    completions: dict[str, list[str]] = {arm: [] for arm in arms}
    tokens, seconds = dict.fromkeys(arms, 0), dict.fromkeys(arms, 0.0)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for start in range(0, len(prompts), batch_size):
        batch, costs = generate_arms(model, tokenizer, prompts[start : start + batch_size], arms, **settings)
        for arm in arms:
            completions[arm] += batch[arm]
            tokens[arm] += costs[arm][0]
            seconds[arm] += costs[arm][1]
    return completions, {arm: tokens[arm] / seconds[arm] for arm in arms}
