"""`CopilotSeq2SeqTrainer`: Algorithm 1 for encoder-decoder Pilots, with the causal trainer's guarantees — the Pilot
ends where a plain `Seq2SeqTrainer` run ends (no leak), the log replays the dense loss, only LoRA and the Copilot
train on a LoRA Pilot, and a resumed run ends where the uninterrupted one does."""

import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from tcopilot_peft import CopilotConfig, CopilotSeq2SeqConfig, CopilotSeq2SeqTrainer
from tcopilot_peft.fusion import PilotPrediction
from tcopilot_peft.mistake_log import MistakeLog
from tests.conftest import addition_dataset, char_tokenizer, tiny_pilot, tiny_t5


TOKENIZER = char_tokenizer()
QUIET = dict(report_to=[], disable_tqdm=True, dataloader_pin_memory=False, seed=0, per_device_train_batch_size=4)


def seq2seq_dataset(n: int = 32) -> Dataset:
    rows = addition_dataset(n)
    return Dataset.from_list(
        [
            {"input_ids": TOKENIZER(r["prompt"]).input_ids, "labels": TOKENIZER(r["completion"] + "</s>").input_ids}
            for r in rows
        ]
    )


def t5(lora: bool = False):
    pilot = tiny_t5(vocab_size=len(TOKENIZER))
    return get_peft_model(pilot, LoraConfig(r=4, target_modules=["q", "v"])) if lora else pilot


def make_trainer(output_dir, model, **settings):
    args = CopilotSeq2SeqConfig(output_dir=str(output_dir), learning_rate=1e-3, **{**QUIET, **settings})
    pilot = model.base_model.model
    return CopilotSeq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=seq2seq_dataset(),
        data_collator=DataCollatorForSeq2Seq(TOKENIZER, model=pilot),
        processing_class=TOKENIZER,
    )


def test_training_logs_both_losses_and_fills_the_mistake_log(tmp_path):
    model = get_peft_model(t5(), CopilotConfig())
    trainer = make_trainer(tmp_path, model, max_steps=3, logging_steps=1, copilot_schedule="joint")
    before = [p.detach().clone() for p in trainer.copilot_parameters()]
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {"loss", "copilot_loss", "mistake_log_rows", "mean_token_accuracy"} <= logged.keys()
    assert len(trainer.mistake_log) == 12 and trainer.mistake_log.rounds[0][0].source_ids.numel() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.copilot_parameters()))


@pytest.mark.parametrize("policy", ["current", "uniform"])
def test_the_token_path_trains_on_the_fresh_forward_and_on_the_log(tmp_path, policy):
    """With a token path the Copilot's X̃ carries the decoder's input embeddings: the fresh forward hands them over,
    the log's replay rebuilds them from the logged decoder ids."""
    model = get_peft_model(t5(), CopilotConfig(copilot_same_position="token_hidden"))
    trainer = make_trainer(tmp_path, model, max_steps=2, logging_steps=1, mistake_log_sampling=policy)
    before = [p.detach().clone() for p in trainer.copilot_parameters()]
    trainer.train()
    losses = [entry["copilot_loss"] for entry in trainer.state.log_history if "copilot_loss" in entry]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))  # the Copilot's 4 × 2 steps
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.copilot_parameters()))


def test_the_copilot_never_changes_the_pilots_training(tmp_path):
    trainer = make_trainer(tmp_path / "copilot", get_peft_model(t5(), CopilotConfig()), max_steps=3)
    trainer.train()
    plain = t5()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=3, learning_rate=1e-3, **QUIET)
    Seq2SeqTrainer(
        model=plain,
        args=args,
        train_dataset=seq2seq_dataset(),
        data_collator=DataCollatorForSeq2Seq(TOKENIZER, model=plain),
    ).train()
    ours = trainer.copilot_tuner.model.state_dict()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(ours[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_a_lora_pilot_trains_only_lora_and_the_copilot(tmp_path):
    model = get_peft_model(t5(lora=True), CopilotConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(tmp_path, model, max_steps=2)
    trainer.train()
    assert trainer.pilot_training == "adapter"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "copilot_" in n for n in changed)
    assert any("lora_" in n for n in changed) and any("copilot_" in n for n in changed)


@torch.no_grad()
@pytest.mark.parametrize("same_position", ["none", "token", "hidden", "token_hidden"])
def test_the_log_replays_the_dense_loss(same_position):
    model = get_peft_model(t5(), CopilotConfig(copilot_same_position=same_position))
    model.base_model.active_network.output_proj.weight.normal_(std=0.05)
    if same_position in ("hidden", "token_hidden"):
        model.base_model.active_network.hidden_proj.weight.normal_(std=0.05)
    batch = DataCollatorForSeq2Seq(TOKENIZER, model=model.base_model.model)(list(seq2seq_dataset(3)))
    out = model(**batch, copilot_teacher_forcing=False)
    log = MistakeLog(top_k=len(TOKENIZER))
    tuner = model.base_model
    labels = batch["labels"]
    keep = (labels != -100).flip(1).cummax(1).values.flip(1)
    rows = log.append(
        batch["decoder_input_ids"],
        keep,
        labels,
        out.copilot_memory_h,
        out.pilot_target_logits,
        source_ids=batch["input_ids"],
        source_mask=batch["attention_mask"],
    )
    _, dense = tuner.copilot_teacher_forced(
        out.copilot_memory_x,
        out.copilot_memory_h,
        batch["attention_mask"].bool(),
        labels,
        PilotPrediction.from_logits(out.pilot_target_logits),
    )
    torch.testing.assert_close(tuner.copilot_replay(log.collate(rows)), dense, atol=2e-3, rtol=2e-3)


def test_resume_ends_where_the_uninterrupted_run_ends(tmp_path):
    settings = dict(max_steps=4, save_strategy="steps", save_steps=2)
    full = make_trainer(tmp_path / "full", get_peft_model(t5(), CopilotConfig()), **settings)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert {"copilot_trainer_state.pt", "mistake_log_rank0.safetensors", "pilot"} <= set(os.listdir(checkpoint))
    resumed = make_trainer(tmp_path / "resumed", get_peft_model(t5(), CopilotConfig()), **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


def test_refuses_what_it_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="for encoder-decoder Pilots; train a causal LM with CopilotSFTTrainer"):
        make_trainer(tmp_path, get_peft_model(tiny_pilot(), CopilotConfig()))
    with pytest.raises(ValueError, match="needs a Copilot"):
        CopilotSeq2SeqTrainer(model=t5(), args=CopilotSeq2SeqConfig(output_dir=str(tmp_path)))


def test_out_of_sample_mistakes_work_for_seq2seq_pilots(tmp_path):
    trainer = make_trainer(tmp_path, get_peft_model(t5(), CopilotConfig()), max_steps=2, copilot_holdout_fraction=0.25)
    assert len(trainer.train_dataset) == 24 and len(trainer.copilot_holdout) == 8
    trainer.train()
    assert len(trainer.mistake_log) == 32  # 8 holdout batches of 4 (the Copilot's 4 × 2 steps), none of the Pilot's
