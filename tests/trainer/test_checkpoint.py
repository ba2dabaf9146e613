"""Checkpoints hold the Copilot, its optimiser and schedule, and the Mistake Log: a resumed run ends where the
uninterrupted one does."""

import os

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tests.conftest import arithmetic_dataset, char_tokenizer, tiny_pilot


TOKENIZER = char_tokenizer()


def make_trainer(
    output_dir, lora: bool, policy: str = "uniform", schedule: str = "after_pilot", factor: float = 1.0, rows: int = 64
):
    pilot = tiny_pilot(vocab_size=len(TOKENIZER))
    if lora:
        pilot = get_peft_model(pilot, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = CopilotSFTConfig(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=3,
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
        mistake_log_sampling=policy,
        copilot_schedule=schedule,
        copilot_steps_factor=factor,
    )
    return CopilotSFTTrainer(
        model=get_peft_model(pilot, CopilotConfig()),
        args=args,
        train_dataset=arithmetic_dataset(rows),
        processing_class=TOKENIZER,
    )


def trainable_state(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n or "copilot_" in n}


@pytest.mark.parametrize(
    ("lora", "policy", "schedule", "factor", "rows", "step"),
    [
        (True, "uniform", "after_pilot", 1.0, 64, 3),  # inside the Pilot's phase
        (True, "uniform", "after_pilot", 1.0, 64, 9),  # inside the Copilot's phase
        (False, "newest", "after_pilot", 1.0, 64, 9),
        (False, "newest", "joint", 1.0, 64, 3),
        (True, "uniform", "after_pilot", 1.5, 64, 12),  # inside a Copilot phase longer than the Pilot's
        # 4 steps an epoch: the frozen Pilot's epoch 2 (steps 8-11) is logged whole and replayed from step 12 on
        (True, "uniform", "after_pilot", 1.5, 16, 9),  # resumed inside the logged epoch
        (True, "uniform", "after_pilot", 1.5, 16, 12),  # resumed where the replay begins
    ],
)
def test_resume_ends_where_the_uninterrupted_run_ends(tmp_path, lora, policy, schedule, factor, rows, step):
    full = make_trainer(tmp_path / "full", lora, policy, schedule, factor, rows)
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{step}"
    names = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "copilot_trainer_state.pt", "mistake_log_rank0.safetensors"} <= names
    if not lora:
        assert "pilot" in names  # a fully fine-tuned Pilot is checkpointed beside the adapter

    resumed = make_trainer(tmp_path / "resumed", lora, policy, schedule, factor, rows)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert len(resumed.mistake_log) == len(full.mistake_log)
    assert resumed.mistake_log.holds_a_pass == full.mistake_log.holds_a_pass == (rows == 16)
    expected, actual = trainable_state(full), trainable_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    if not lora:
        for (name, a), b in zip(full.copilot_tuner.model.named_parameters(), resumed.copilot_tuner.model.parameters()):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("damage", ["truncated", "another run's"])
def test_a_damaged_mistake_log_is_dropped_with_a_warning_and_the_run_resumes(tmp_path, damage):
    first = make_trainer(tmp_path / "first", lora=True)
    first.train()
    checkpoint = tmp_path / "first" / "checkpoint-9"  # in the Copilot's phase: the log has rows
    log_file = checkpoint / "mistake_log_rank0.safetensors"
    if damage == "truncated":
        log_file.write_bytes(log_file.read_bytes()[:100])
    else:  # rows of another Pilot's width
        from safetensors.torch import load_file, save_file

        tensors = load_file(log_file)
        tensors = {k: v[..., :5].contiguous() if k.endswith(".hidden") else v for k, v in tensors.items()}
        save_file(tensors, log_file)
    resumed = make_trainer(tmp_path / "resumed", lora=True)
    with pytest.warns(UserWarning, match="cannot be resumed"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 12 and len(resumed.mistake_log) > 0  # it refilled
