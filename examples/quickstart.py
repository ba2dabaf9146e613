"""Transformer Copilot end to end in about a minute on a CPU, with nothing downloaded.

A tiny Llama Pilot (built from a config) is fine-tuned, all its weights, on 2-digit additions by `CopilotSFTTrainer`
(Algorithm 1: Pilot step, Mistake Log append, Copilot step). Then, on held-out prompts, it generates with and without
the Copilot, saves the Copilot adapter and the Pilot, reloads both and checks the fused logits match.

This run is far too small for the Copilot to be expected to help; it shows the API and the moving parts. Whether the
Copilot helps, and when, is measured in benchmarks/ (see the README).
"""

import tempfile
import time

import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tcopilot_peft.toy import addition_dataset, char_tokenizer


STEPS = 400


def build_pilot(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config)


def exact_match(model, tokenizer, rows, use_copilot: bool) -> float:
    tokenizer.padding_side = "left"
    batch = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        if use_copilot:
            out = model.generate(**batch, **settings)
        else:
            with model.disable_adapter():
                out = model.generate(**batch, **settings)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(a.strip() == r["completion"] for a, r in zip(answers, rows)) / len(rows)


def main() -> None:
    tokenizer = char_tokenizer()
    model = get_peft_model(build_pilot(len(tokenizer)), CopilotConfig(num_layers=2))
    model.print_trainable_parameters()

    with tempfile.TemporaryDirectory() as workdir:
        args = CopilotSFTConfig(
            output_dir=f"{workdir}/run",
            max_steps=STEPS,
            per_device_train_batch_size=32,
            learning_rate=2e-3,
            copilot_learning_rate=1e-3,
            logging_steps=25,
            save_strategy="no",
            report_to=[],
        )
        trainer = CopilotSFTTrainer(
            model=model, args=args, train_dataset=addition_dataset(2000, seed=0), processing_class=tokenizer
        )
        start = time.perf_counter()
        trainer.train()
        print(f"trained {STEPS} steps in {time.perf_counter() - start:.0f} s")
        logged = [e for e in trainer.state.log_history if "copilot_loss" in e]
        print(
            f"Pilot loss {logged[0]['loss']:.3f} -> {logged[-1]['loss']:.3f}; "
            f"Copilot loss {logged[0]['copilot_loss']:.3f} -> {logged[-1]['copilot_loss']:.3f}; "
            f"Mistake Log {trainer.mistake_log.total_bytes / 1e6:.1f} MB "
            f"({trainer.mistake_log.bytes_per_token:.0f} B/token)"
        )

        model.eval()
        held_out = addition_dataset(200, seed=1).to_list()
        print(
            f"held-out exact match: Pilot alone {exact_match(model, tokenizer, held_out, False):.1%}, "
            f"Pilot + Copilot {exact_match(model, tokenizer, held_out, True):.1%}"
        )

        trainer.save_model(f"{workdir}/final")  # the Copilot adapter, and the fully fine-tuned Pilot in final/pilot
        pilot = LlamaForCausalLM.from_pretrained(f"{workdir}/final/pilot")
        reloaded = PeftModel.from_pretrained(pilot, f"{workdir}/final").eval()
        ids = tokenizer("12+34=", return_tensors="pt").input_ids
        same = torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        print(f"saved and reloaded the Pilot and its Copilot: fused logits identical: {same}")


if __name__ == "__main__":
    main()
