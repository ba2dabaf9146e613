"""Long and odd inputs: prompts up to the Pilot's context, batches mixing one-token and long prompts under left
padding, all-padding rows, and empty completions in training data."""

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tests.conftest import char_tokenizer, randomise_copilot, tiny_pilot


TOKENIZER = char_tokenizer()


def copilot(feed: str = "pilot_error"):
    model = get_peft_model(tiny_pilot(vocab_size=len(TOKENIZER)), CopilotConfig(inference_feed=feed))
    randomise_copilot(model, scale=0.2)
    return model.eval()


@pytest.mark.parametrize("feed", ["pilot_error", "copilot"])
def test_a_prompt_as_long_as_the_context_generates_the_same_with_and_without_the_cache(feed):
    model = copilot(feed)
    limit = model.base_model.model.config.max_position_embeddings
    ids = torch.randint(4, len(TOKENIZER), (2, limit - 8), generator=torch.Generator().manual_seed(0))
    settings = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(**settings), model.generate(**settings, use_cache=False))


@pytest.mark.parametrize("feed", ["pilot_error", "copilot"])
def test_a_short_prompt_scores_the_same_alone_and_left_padded_beside_a_long_one(feed):
    model = copilot(feed)
    short, long = "7", "q sortrev 93817264 and then some more words to make it long\n"
    TOKENIZER.padding_side = "left"
    settings = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True)
    batch = TOKENIZER([short, long], return_tensors="pt", padding=True)
    together = torch.stack(model.generate(**batch, **settings).scores, 1)[0]
    alone = torch.stack(model.generate(**TOKENIZER([short], return_tensors="pt"), **settings).scores, 1)[0]
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_an_all_padding_row_gives_finite_outputs_and_leaves_the_others_alone():
    model = copilot()
    ids = torch.randint(4, len(TOKENIZER), (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    alone = model(input_ids=ids[1:], attention_mask=mask[1:]).logits
    mask[0] = 0
    out = model(input_ids=ids, attention_mask=mask)
    assert torch.isfinite(out.logits[0]).all()
    torch.testing.assert_close(out.logits[1:], alone, atol=1e-5, rtol=1e-5)


def test_empty_completions_train_without_a_copilot_loss_of_nan(tmp_path):
    rows = [{"prompt": f"{a}+{a}=", "completion": "" if a % 2 else str(2 * a)} for a in range(16)]
    args = CopilotSFTConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
        report_to=[], disable_tqdm=True, save_strategy="no", seed=0,
    )  # fmt: skip
    model = get_peft_model(tiny_pilot(vocab_size=len(TOKENIZER)), CopilotConfig())
    trainer = CopilotSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=TOKENIZER
    )
    trainer.train()
    losses = [e["copilot_loss"] for e in trainer.state.log_history if "copilot_loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in trainer.copilot_parameters())
