"""Long and odd inputs: prompts up to the Pilot's context, batches mixing one-token and long prompts under left
padding, all-padding rows, empty completions in training data, and NaN/Inf in the Pilot's logits during generation."""

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tcopilot_peft.tuner.cache import CACHE_FIELD
from tests.conftest import char_tokenizer, randomise_copilot, tiny_pilot, tiny_t5


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


class PoisonedLogits:
    """Writes `value` into the Pilot's logits of one row at one absolute position, through hooks on its decoder (to
    learn the positions of each call) and its LM head. Positions are counted over the whole sequence, so cached and
    uncached generation poison the same prediction."""

    def __init__(self, pilot, row: int, position: int, value: float) -> None:
        self.row, self.position, self.value, self.end = row, position, value, 0
        decoder = pilot.get_decoder()
        self.handles = [
            decoder.register_forward_pre_hook(self._positions, with_kwargs=True),
            pilot.get_output_embeddings().register_forward_hook(self._poison),
        ]

    def _positions(self, module, args, kwargs) -> None:
        cache = kwargs.get(CACHE_FIELD)  # transformers names the cache argument as it names the output field
        # The runner embeds once and hands the decoder `inputs_embeds`; T5's decoder still gets ids.
        tokens = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        self.end = (cache.get_seq_length() if cache is not None else 0) + tokens.shape[1]

    def _poison(self, module, args, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        if logits.dim() == 2:  # the head re-run only at positions already found poisoned: the same logits again
            logits[:, :] = self.value
            return logits
        index = self.position - (self.end - logits.shape[1])  # the head sees the call's last positions
        if 0 <= index < logits.shape[1]:
            logits[self.row, index, :: 1 if self.value != float("inf") else logits.shape[-1]] = self.value
        return logits

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def copilot_of(pilot: str, feed: str):
    if pilot == "t5":
        model = get_peft_model(tiny_t5(vocab_size=len(TOKENIZER)), CopilotConfig(inference_feed=feed))
        randomise_copilot(model, scale=0.2)
        return model.eval()
    return copilot(feed)


def copilot_slots_are_finite(model, cache) -> bool:
    slots = getattr(cache, "self_attention_cache", cache)
    pilot_layers = model.base_model.model.config.get_text_config().num_hidden_layers
    return all(
        torch.isfinite(layer.keys).all() and torch.isfinite(layer.values).all()
        for layer in slots.layers[pilot_layers:]
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("feed", ["pilot_error", "copilot"])
@pytest.mark.parametrize("pilot", ["llama", "t5"])
def test_non_finite_pilot_logits_in_one_row_are_skipped_counted_and_kept_out_of_the_copilot(pilot, feed, value):
    model = copilot_of(pilot, feed)
    ids = torch.randint(4, len(TOKENIZER), (3, 6), generator=torch.Generator().manual_seed(2))
    settings = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    clean = model.generate(**settings)
    # The prediction of row 1's fourth new token: at the prompt's last position + 3 (for T5, the decoder's prompt is
    # its start token).
    step = 3
    last_prompt_position = 0 if pilot == "t5" else ids.shape[1] - 1
    poison = PoisonedLogits(model.base_model.model, row=1, position=last_prompt_position + step, value=value)
    with pytest.warns(UserWarning, match="`model.copilot_skipped_positions` counts such positions"):
        out = model.generate(**settings, return_dict_in_generate=True, output_scores=True)
    assert model.copilot_skipped_positions == 1
    kept = [0, 2]
    assert torch.equal(out.sequences[kept], clean[kept])
    assert copilot_slots_are_finite(model, out[CACHE_FIELD])
    assert not torch.isfinite(out.scores[step][1]).all()  # the Pilot's own logits, unfused
    later = torch.stack(out.scores[step + 1 :], 1)[1]
    assert torch.isfinite(later).all(), "the poisoned row's later predictions must stay usable"
    assert torch.equal(model.generate(**settings, use_cache=False), out.sequences)
    # Counted per forward that returns the position's logits: uncached, T5's decoder returns every position each step.
    recounted = settings["max_new_tokens"] - step if pilot == "t5" else 1
    assert model.copilot_skipped_positions == 1 + recounted
    poison.remove()


@pytest.mark.parametrize("feed", ["pilot_error", "copilot"])
@torch.no_grad()
def test_a_forward_returns_the_pilots_own_logits_where_they_are_not_finite(feed):
    model = copilot(feed)
    ids = torch.randint(4, len(TOKENIZER), (2, 9), generator=torch.Generator().manual_seed(3))
    clean = model(input_ids=ids, copilot_prompt_length=3)
    poison = PoisonedLogits(model.base_model.model, row=0, position=5, value=float("inf"))
    with pytest.warns(UserWarning, match="there the returned logits are the Pilot's own"):
        out = model(input_ids=ids, copilot_prompt_length=3)
    poison.remove()
    assert torch.equal(out.logits[0, 5], out.pilot_logits[0, 5]) and out.logits[0, 5].isinf().any()
    torch.testing.assert_close(out.logits[1], clean.logits[1])
    torch.testing.assert_close(out.logits[0, :5], clean.logits[0, :5])
    assert torch.isfinite(out.logits[0, 6:]).all() and not torch.equal(out.logits[0, 6:], out.pilot_logits[0, 6:])
    assert model.copilot_skipped_positions == 1


@pytest.mark.parametrize("pilot", ["llama", "t5"])
def test_a_poisoned_beam_leaves_the_other_prompts_alone_and_cached_equals_uncached(pilot):
    model = copilot_of(pilot, "pilot_error")
    ids = torch.randint(4, len(TOKENIZER), (3, 6), generator=torch.Generator().manual_seed(4))
    settings = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, num_beams=3)
    clean = model.generate(**settings)
    # Row 1 of the expanded batch is the first prompt's second beam.
    poison = PoisonedLogits(
        model.base_model.model, row=1, position=(0 if pilot == "t5" else 5) + 2, value=float("nan")
    )
    with pytest.warns(UserWarning):
        out = model.generate(**settings, return_dict_in_generate=True)
    assert torch.equal(out.sequences[1:], clean[1:])
    assert copilot_slots_are_finite(model, out[CACHE_FIELD])
    assert torch.equal(model.generate(**settings, use_cache=False), out.sequences)
    poison.remove()
