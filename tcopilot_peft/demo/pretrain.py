"""Pre-train the demo's small Pilot on the synthetic skill mixture (`tasks.PRETRAINING_SKILLS`).

The package ships the result (`tcopilot_peft/demo/pilot/`, a few MB of safetensors with its tokenizer), so the demo
starts from a *pretrained* Pilot, the regime of the paper. Rebuild it with:

    python -m tcopilot_peft.demo.pretrain --output-dir tcopilot_peft/demo/pilot

`--architecture t5` pre-trains a FLAN-T5-shaped encoder-decoder Pilot on the same skills instead (the encoder reads a
skill's prompt, the decoder writes its answer); the benchmarks' T5 Pilot (`benchmarks/pilots/t5`) is built so.

Deterministic for a given seed and thread count, on the CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from ..fusion import IGNORE_INDEX
from ..toy import char_tokenizer
from .tasks import PRETRAINING_SKILLS, pretraining_text


PILOT_DIR = Path(__file__).with_name("pilot")


def pilot_config(vocab_size: int, hidden_size: int = 128, layers: int = 4) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )


def t5_pilot_config(vocab_size: int, hidden_size: int = 128, layers: int = 4) -> T5Config:
    """FLAN-T5's shape (gated GELU, untied head) at the demo Pilot's width, `layers` encoder and decoder blocks."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=hidden_size,
        d_kv=hidden_size // 4,
        num_heads=4,
        d_ff=3 * hidden_size,
        num_layers=layers,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def build_pilot(architecture: str, vocab_size: int, hidden_size: int, layers: int):
    if architecture == "t5":
        return T5ForConditionalGeneration(t5_pilot_config(vocab_size, hidden_size, layers))
    return LlamaForCausalLM(pilot_config(vocab_size, hidden_size, layers))


def batch_of_pairs(tokenizer, rng: random.Random, size: int) -> dict[str, torch.Tensor]:
    """An encoder-decoder batch: skill prompts in, answers (and end of sequence) out."""
    pairs = [rng.choice(list(PRETRAINING_SKILLS.values()))(rng) for _ in range(size)]
    source = tokenizer([prompt for prompt, _ in pairs], return_tensors="pt", padding=True)
    target = tokenizer([answer + tokenizer.eos_token for _, answer in pairs], return_tensors="pt", padding=True)
    labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, IGNORE_INDEX)
    return {**source, "labels": labels}


def batch_of_lines(tokenizer, rng: random.Random, size: int) -> dict[str, torch.Tensor]:
    lines = [pretraining_text(rng) + tokenizer.eos_token for _ in range(size)]
    batch = tokenizer(lines, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return {**batch, "labels": labels}


def pretrain(
    output_dir: Path,
    steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden_size: int = 128,
    layers: int = 4,
    seed: int = 0,
    log_every: int = 250,
    architecture: str = "llama",
) -> dict:
    """Train from scratch and save model, tokenizer and a `pretraining.json` record; returns that record."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = char_tokenizer()
    model = build_pilot(architecture, len(tokenizer), hidden_size, layers)
    make_batch = batch_of_pairs if architecture == "t5" else batch_of_lines
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.05)
    model.train()
    start, history = time.perf_counter(), []
    for step in range(1, steps + 1):
        loss = model(**make_batch(tokenizer, rng, batch_size)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    skill_accuracy = evaluate_skills(model, tokenizer)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    record = {
        "architecture": architecture,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - start, 1),
        "loss_history": history,
        "skill_exact_match": skill_accuracy,
    }
    (output_dir / "pretraining.json").write_text(json.dumps(record, indent=2))
    return record


@torch.no_grad()
def evaluate_skills(model, tokenizer, per_skill: int = 100, seed: int = 12345) -> dict[str, float]:
    """Greedy exact match per pre-training skill on fresh examples."""
    rng = random.Random(seed)
    tokenizer.padding_side = "left"
    scores = {}
    for name, make in PRETRAINING_SKILLS.items():
        pairs = [make(rng) for _ in range(per_skill)]
        batch = tokenizer([p for p, _ in pairs], return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = out if model.config.is_encoder_decoder else out[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        scores[name] = sum(t.strip() == a for t, (_, a) in zip(texts, pairs)) / per_skill
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=PILOT_DIR)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architecture", choices=["llama", "t5"], default="llama")
    args = parser.parse_args()
    record = pretrain(
        args.output_dir,
        args.steps,
        args.batch_size,
        args.learning_rate,
        args.hidden_size,
        args.layers,
        args.seed,
        architecture=args.architecture,
    )
    print(json.dumps(record["skill_exact_match"], indent=2))


if __name__ == "__main__":
    main()
