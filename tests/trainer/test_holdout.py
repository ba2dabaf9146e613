"""`copilot_holdout_fraction`: a seeded slice of the training set that the Pilot never trains on, whose mistakes feed
the Mistake Log; it survives checkpoint and resume."""

import pytest
import torch
from peft import get_peft_model
from trl import SFTConfig, SFTTrainer

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tests.conftest import arithmetic_dataset, char_tokenizer, tiny_pilot


TOKENIZER = char_tokenizer()
QUIET = dict(report_to=[], disable_tqdm=True, dataloader_pin_memory=False, seed=0)


def make_trainer(output_dir, fraction=0.25, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        copilot_holdout_fraction=fraction,
        **QUIET,
    )
    settings.update(overrides)
    return CopilotSFTTrainer(
        model=get_peft_model(tiny_pilot(vocab_size=len(TOKENIZER)), CopilotConfig()),
        args=CopilotSFTConfig(**settings),
        train_dataset=arithmetic_dataset(64),
        processing_class=TOKENIZER,
    )


def prompts(dataset):
    return {tuple(row["input_ids"]) for row in dataset}


def test_the_holdout_is_a_seeded_disjoint_slice_and_only_it_feeds_the_log(tmp_path):
    trainer = make_trainer(tmp_path / "a")
    held, kept = prompts(trainer.copilot_holdout), prompts(trainer.train_dataset)
    assert len(trainer.copilot_holdout) == 16 and len(trainer.train_dataset) == 48
    assert not held & kept
    assert prompts(make_trainer(tmp_path / "b").copilot_holdout) == held  # the same seed withholds the same rows
    trainer.train()
    logged = {tuple(row.input_ids.tolist()) for rows in trainer.mistake_log.rounds for row in rows}
    assert logged and logged <= held


def test_the_pilot_never_trains_on_the_holdout(tmp_path):
    """The Pilot ends exactly where plain SFT on the non-withheld rows ends."""
    trainer = make_trainer(tmp_path / "copilot", max_steps=3)
    pilot_rows = trainer.train_dataset
    trainer.train()
    plain = tiny_pilot(vocab_size=len(TOKENIZER))
    args = SFTConfig(
        output_dir=str(tmp_path / "plain"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        bf16=False,
        save_strategy="no",
        **QUIET,
    )
    SFTTrainer(model=plain, args=args, train_dataset=pilot_rows, processing_class=TOKENIZER).train()
    ours = trainer.copilot_tuner.model.state_dict()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(ours[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_resume_reads_the_same_holdout_rows_and_ends_where_the_uninterrupted_run_ends(tmp_path):
    checkpoints = dict(max_steps=6, save_strategy="steps", save_steps=3)
    full = make_trainer(tmp_path / "full", **checkpoints)
    full.train()
    resumed = make_trainer(tmp_path / "resumed", **checkpoints)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed._holdout_draws == full._holdout_draws == 24  # one per step of the Copilot's 4 × 6
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        if "copilot_" in name:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    other = make_trainer(tmp_path / "other", fraction=0.5, **checkpoints)
    with pytest.raises(ValueError, match="withheld rows"):
        other.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_zero_one_is_refused(tmp_path, fraction):
    with pytest.raises(ValueError, match=r"copilot_holdout_fraction must be in \[0, 1\)"):
        CopilotSFTConfig(output_dir=str(tmp_path), copilot_holdout_fraction=fraction)


def test_a_fraction_that_leaves_nothing_for_the_copilot_is_refused(tmp_path):
    with pytest.raises(ValueError, match="leaves 0 rows"):
        make_trainer(tmp_path, fraction=0.001)
