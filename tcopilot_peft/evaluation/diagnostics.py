"""Teacher-forced diagnostics of a trained Copilot on prompt/completion rows: does it predict the Pilot's errors
(`copilot_rmse_skill`), does its correction make gold tokens more likely (`copilot_ce_skill`), and how calibrated is
the Pilot it corrects (`pilot_calibration`). All read completion tokens only, from one fused forward per batch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..fusion import IGNORE_INDEX, PilotPrediction, error_distance, fused_cross_entropy, shift_targets


def completion_batches(tokenizer, rows: list[dict], batch_size: int) -> Iterator[tuple[dict, torch.Tensor]]:
    """Right-padded `prompt + completion + eos` batches of `rows` (dicts with "prompt" and "completion") and their
    labels, -100 on the prompt and on padding."""
    tokenizer.padding_side = "right"
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [r["prompt"] + r["completion"] + tokenizer.eos_token for r in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        for i, row in enumerate(chunk):
            labels[i, : len(tokenizer(row["prompt"]).input_ids)] = IGNORE_INDEX
        yield batch, labels


def _completion_predictions(model, tokenizer, rows: list[dict], batch_size: int):
    """Per batch: the Pilot's prediction, the Copilot's correction and the gold tokens at completion positions."""
    for batch, labels in completion_batches(tokenizer, rows, batch_size):
        out = model(**batch, labels=labels)
        targets = shift_targets(labels)
        valid = targets != IGNORE_INDEX
        yield PilotPrediction.from_logits(out.pilot_logits[valid]), out.copilot_logits[valid], targets[valid]


@torch.no_grad()
def copilot_rmse_skill(model, tokenizer, rows: list[dict], batch_size: int = 32) -> float:
    """1 − RMSE(f, ℓ) / RMSE(0, ℓ), teacher-forced: above 0 the Copilot predicts the Pilot's errors ℓ better than
    predicting no correction; near 0 it predicts no gain; implausibly high suggests a leak. Meaningful for the
    paper's regression objective; a `"fused_ce"` Copilot's f is a log-odds correction, not an estimate of ℓ."""
    copilot_sq, zero_sq, count = 0.0, 0.0, 0
    for prediction, correction, gold in _completion_predictions(model, tokenizer, rows, batch_size):
        copilot_sq += error_distance(correction, gold, prediction).square().sum().item()
        zero_sq += error_distance(torch.zeros_like(correction), gold, prediction).square().sum().item()
        count += len(gold)
    return 1.0 - math.sqrt(copilot_sq / count) / math.sqrt(zero_sq / count)


@torch.no_grad()
def copilot_ce_skill(model, tokenizer, rows: list[dict], batch_size: int = 32) -> dict[str, float]:
    """The Copilot's skill in the metric of the default loss: the cross-entropy of softmax(log p̂ + f) (logit fusion
    at λ = 1) against the Pilot's own, teacher-forced. `skill` = 1 − fused / Pilot: above 0 the Copilot's correction
    makes the gold tokens more likely on these rows."""
    fused_sum, pilot_sum, count = 0.0, 0.0, 0
    for prediction, correction, gold in _completion_predictions(model, tokenizer, rows, batch_size):
        fused_sum += fused_cross_entropy(correction, gold, prediction).sum().item()
        pilot_sum += fused_cross_entropy(torch.zeros_like(correction), gold, prediction).sum().item()
        count += len(gold)
    return {"pilot_ce": pilot_sum / count, "fused_ce": fused_sum / count, "skill": 1.0 - fused_sum / pilot_sum}


@torch.no_grad()
def pilot_calibration(model, tokenizer, rows: list[dict], batch_size: int = 32, bins: int = 10) -> dict[str, float]:
    """The Pilot's teacher-forced token accuracy and expected calibration error (top-1 confidence vs accuracy, in
    equal-width bins). A calibrated Pilot's errors ℓ have conditional mean ≈ 0 given what it saw, which is all a
    Copilot trained by regression on ℓ can learn to predict."""
    confidences, hits = [], []
    for prediction, _, gold in _completion_predictions(model, tokenizer, rows, batch_size):
        confidence, top = prediction.probs().max(-1)
        confidences.append(confidence)
        hits.append((top == gold).float())
    confidence, hit = torch.cat(confidences), torch.cat(hits)
    which = (confidence * bins).long().clamp_max(bins - 1)
    gap = sum(
        (confidence[which == b].sum() - hit[which == b].sum()).abs().item() for b in range(bins) if (which == b).any()
    )
    return {"token_accuracy": hit.mean().item(), "expected_calibration_error": gap / len(hit)}
