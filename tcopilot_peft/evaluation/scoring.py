"""Fused scoring of given continuations: one forward that sees a continuation as the model's own generation.

Shared by the lm-eval integration (log-likelihoods of answer choices) and `explain` (the Copilot's corrections along
a reference or generated answer). The forward passes `copilot_prompt_length`, so on continuation tokens the Copilot
reads its own previous corrections exactly as in fused `generate()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContinuationLogits:
    """Next-token logits at the positions that predict a continuation's tokens.

    Args:
        pilot (`torch.Tensor` of shape `(steps, vocab)`): the Pilot's logits.
        fused (`torch.Tensor` of shape `(steps, vocab)`): Pilot + Copilot (what `generate()` decodes from).
        targets (`torch.LongTensor` of shape `(steps,)`): the continuation's tokens, `targets[t]` predicted at step t.
    """

    pilot: torch.Tensor
    fused: torch.Tensor
    targets: torch.Tensor


def scoring_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """The model input that scores `continuation` after `context`, and where its generated part starts.

    As in lm-eval's HFLM, the input is `(context + continuation)[:-1]` cut from the left to `max_length` tokens, and
    the logits at its last `len(continuation)` positions predict the continuation. The first continuation token sits at
    index `len(input) − len(continuation) + 1`; from there on the tokens count as generated.

    Returns:
        `(input_ids, copilot_prompt_length)`.
    """
    if not context or not continuation:
        raise ValueError("scoring needs a non-empty context and a non-empty continuation")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length={max_length}")
    tokens = (list(context) + list(continuation))[-(max_length + 1) :][:-1]
    return tokens, len(tokens) - len(continuation) + 1


def continuation_logits(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int, max_length: int
) -> list[ContinuationLogits]:
    """Pilot and fused logits for each `(context, continuation)` pair, from one batched forward.

    Rows are right-padded and passed without an attention mask, as lm-eval does: under causal attention the padding
    after a row cannot change that row's logits. The model must be a `PeftModel` with an active Copilot adapter.
    An encoder-decoder Pilot is scored by `seq2seq_continuation_logits`.
    """
    if model.config.is_encoder_decoder:
        return seq2seq_continuation_logits(model, pairs, pad_token_id, max_length)
    windows = [scoring_window(context, continuation, max_length) for context, continuation in pairs]
    device = next(model.parameters()).device
    width = max(len(tokens) for tokens, _ in windows)
    input_ids = torch.full((len(windows), width), pad_token_id, dtype=torch.long)
    for row, (tokens, _) in enumerate(windows):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    prompt_lengths = torch.tensor([start for _, start in windows], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=input_ids.to(device), copilot_prompt_length=prompt_lengths.to(device))
    if getattr(out, "pilot_logits", None) is None:
        raise ValueError("the model returned no separate Pilot logits: is its Copilot adapter enabled?")
    results = []
    for row, ((tokens, _), (_, continuation)) in enumerate(zip(windows, pairs)):
        steps = slice(len(tokens) - len(continuation), len(tokens))
        results.append(
            ContinuationLogits(
                pilot=out.pilot_logits[row, steps],
                fused=out.logits[row, steps],
                targets=torch.tensor(list(continuation), dtype=torch.long, device=out.logits.device),
            )
        )
    return results


def seq2seq_continuation_logits(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int, max_length: int
) -> list[ContinuationLogits]:
    """`continuation_logits` for an encoder-decoder Pilot (T5): the encoder reads the context (its last `max_length`
    tokens, under an attention mask), the decoder `[start] + continuation[:-1]`. Every decoder position after the
    start token counts as generated, so this forward gives each continuation token the fused logits `generate()`
    would give it after the same prefix."""
    if any(not context or not continuation for context, continuation in pairs):
        raise ValueError("scoring needs a non-empty context and a non-empty continuation")
    device = next(model.parameters()).device
    contexts = [list(context)[-max_length:] for context, _ in pairs]
    decoder_rows = [[model.config.decoder_start_token_id, *list(continuation)[:-1]] for _, continuation in pairs]
    input_ids = torch.full((len(pairs), max(map(len, contexts))), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    decoder_input_ids = torch.full((len(pairs), max(map(len, decoder_rows))), pad_token_id, dtype=torch.long)
    for row, (context, decoder_row) in enumerate(zip(contexts, decoder_rows)):
        input_ids[row, : len(context)] = torch.tensor(context)
        attention_mask[row, : len(context)] = 1
        decoder_input_ids[row, : len(decoder_row)] = torch.tensor(decoder_row)  # padding after a row: causal
    with torch.no_grad():
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            decoder_input_ids=decoder_input_ids.to(device),
        )
    if getattr(out, "pilot_logits", None) is None:
        raise ValueError("the model returned no separate Pilot logits: is its Copilot adapter enabled?")
    return [
        ContinuationLogits(
            pilot=out.pilot_logits[row, : len(continuation)],
            fused=out.logits[row, : len(continuation)],
            targets=torch.tensor(list(continuation), dtype=torch.long, device=out.logits.device),
        )
        for row, (_, continuation) in enumerate(pairs)
    ]
