"""Shared by the benchmark scripts (one home for each helper; no script imports another):

* the randomly initialised Llama Pilot the cost benchmarks measure (speed does not depend on the weights' values, so
  nothing is downloaded), their synthetic pre-tokenised data and trainer settings, and a device-synchronised timer;
* plain SFT with the LM head run on the targets only (the equal-footing baseline);
* the validation grid of λ and ensemble weights, and the tables' mean ± sd;
* the result scripts' training options, seq2seq rows and timestamped log lines.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTTrainer

from tcopilot_peft.fusion import IGNORE_INDEX


# The validation grid of λ (and of the logit ensemble's weight w) every result script chooses from.
LAMBDAS = (0.3, 0.5, 1.0, 2.0, 4.0)


def grid_weight(key: str) -> float:
    """The weight (λ or ensemble weight) of a validation grid key "<name>/<weight>"."""
    return float(key.rsplit("/", 1)[-1])


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def stamped_log(prefix: str) -> Callable[[str], None]:
    """A progress printer: `[prefix HH:MM:SS] message`, flushed at once (the result scripts run for an hour)."""

    def log(message: str) -> None:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    return log


def seconds(fn, device: str) -> float:
    """Wall time of `fn()`, with the CUDA queue drained before and after so the GPU's work is counted."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def random_llama(hidden: int, layers: int, vocab: int, seed: int = 0) -> LlamaForCausalLM:
    """A Llama of the given width, depth and vocabulary with Llama-like proportions (SwiGLU ≈ 8/3·d, GQA 2:1)."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


class TargetOnlySFTTrainer(SFTTrainer):
    """Plain SFT with the loss TRL's `SFTTrainer` optimises (mean cross-entropy over the completion's tokens) and the
    LM head run only where there is a label, as `CopilotSFTTrainer`'s Pilot loss runs it. Off a Triton device (on a
    CPU) TRL 1.16 projects every position, prompt included, onto the vocabulary: this is the baseline on equal
    footing. For a decoder-only Pilot, bare or PEFT-wrapped (LoRA)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = causal_lm.model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        labels = inputs["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        logits = causal_lm.lm_head(hidden.last_hidden_state[:, :-1][scored])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[scored])
        return (loss, None) if return_outputs else loss


def synthetic_dataset(args) -> Dataset:
    """Pre-tokenised prompt/completion rows; the loss covers the completion (the second half).

    `args` has `steps`, `batch_size`, `length` and `vocab`: enough rows for every step plus one batch.
    """
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.steps * args.batch_size + args.batch_size):
        ids = torch.randint(4, args.vocab, (args.length,), generator=generator).tolist()
        half = args.length // 2
        rows.append({"input_ids": ids, "completion_mask": [0] * half + [1] * (args.length - half)})
    return Dataset.from_list(rows)


def common_settings(args) -> dict:
    """The `SFTConfig` settings every arm of a step-time benchmark shares (`args` has `steps` and `batch_size`)."""
    return dict(
        output_dir="/tmp/tcopilot-bench-training",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=False,
        logging_steps=10**6,
        seed=0,
        bf16=False,
        max_length=None,
    )


def training_options(
    seed: int, epochs: float, output_dir: Path, batch_size: int, learning_rate: float, logging_steps: int, **overrides
) -> dict:
    """The training arguments the result scripts share (cosine schedule, 5 % warm-up, nothing saved or reported)."""
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=logging_steps,
        seed=seed,
        **overrides,
    )


def seq2seq_rows(tokenizer, rows) -> Dataset:
    """Prompt → completion pairs as encoder input ids and labels (the completion and end of sequence)."""
    return Dataset.from_list(
        [
            {
                "input_ids": tokenizer(r["prompt"]).input_ids,
                "labels": tokenizer(r["completion"] + tokenizer.eos_token).input_ids,
            }
            for r in rows
        ]
    )
