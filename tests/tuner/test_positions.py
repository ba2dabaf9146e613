"""The Copilot's options `copilot_positions` (rotary positions, the Pilot family's own) and `copilot_same_position`
(X̃_t, and h_t, at the Copilot's own position): order, padding, caching, fusion, saving, training."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.fusion import PilotPrediction, shift_targets
from tcopilot_peft.mistake_log import MistakeLog
from tests.conftest import ARCHITECTURES, VOCAB, randomise_copilot, tiny_pilot, tiny_t5


# The paper's layout (no positions, no same-position path), named: unset, the fields take the family's defaults.
PAPER_LAYOUT = dict(copilot_positions="none", copilot_same_position="none")
# Every new option alone, and all of them together.
OPTIONS = {
    "rotary": dict(copilot_positions="rotary"),
    "token": dict(copilot_same_position="token"),
    "hidden": dict(copilot_same_position="hidden"),
    "token_hidden": dict(copilot_same_position="token_hidden"),
    "rotary+token_hidden": dict(copilot_positions="rotary", copilot_same_position="token_hidden"),
}


def copilot_on(pilot=None, seed=0, **config):
    model = get_peft_model(pilot if pilot is not None else tiny_pilot(seed=seed), CopilotConfig(**config))
    randomise_copilot(model, seed=seed + 1)
    for network in model.base_model.copilot_model.values():
        if hasattr(network, "hidden_proj"):  # zero-initialised like the output map: give it weights too
            with torch.no_grad():
                network.hidden_proj.weight.normal_(std=0.5)
    return model.eval()


def network_inputs(batch=1, length=6, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, width, generator=generator) for _ in range(3)]


def prompts(batch=2, length=6, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ positions are the family's own


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_rotary_positions_are_the_pilot_familys_own_rope_with_its_theta_and_scaling(arch):
    config = tiny_pilot(arch).config
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    pilot = type(tiny_pilot(arch))(config).eval()
    model = copilot_on(pilot, copilot_positions="rotary")
    network = model.base_model.active_network
    assert model.peft_config["default"].copilot_architecture["positions"]["rope_parameters"]["factor"] == 2.0
    x, positions = torch.zeros(2, 5, 8), torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    ours = network.rotary(x, positions)
    theirs = pilot.model.rotary_emb(x, positions)
    for mine, pilots in zip(ours, theirs):
        torch.testing.assert_close(mine, pilots, rtol=0, atol=0)


def test_a_permuted_prefix_changes_the_correction_only_with_rotary_positions():
    """Position-free attention reads a set: reordering the earlier positions (inputs, X̃ and h together) leaves the
    last position's output as it was. Rotary positions make it depend on the order."""
    feed, memory_x, memory_h = network_inputs()
    valid = torch.ones(1, 6, dtype=torch.bool)
    order = torch.tensor([3, 0, 4, 1, 2, 5])  # the last position stays last
    for positions, order_matters in (("none", False), ("rotary", True)):
        network = copilot_on(copilot_positions=positions).base_model.active_network
        with torch.no_grad():
            last = network(feed, memory_x, memory_h, valid)[:, -1]
            permuted = network(feed[:, order], memory_x[:, order], memory_h[:, order], valid)[:, -1]
        assert torch.allclose(last, permuted, atol=1e-5) is not order_matters, positions


@pytest.mark.parametrize("option", list(OPTIONS))
def test_left_padding_changes_nothing_at_the_real_positions(option):
    network = copilot_on(**OPTIONS[option]).base_model.active_network
    feed, memory_x, memory_h = network_inputs(length=5)
    noise = network_inputs(length=3, seed=1)  # what sits under the padding must not matter either
    padded = [torch.cat([pad, real], dim=1) for pad, real in zip(noise, (feed, memory_x, memory_h))]
    valid = torch.tensor([[0, 0, 0] + [1] * 5], dtype=torch.bool)
    with torch.no_grad():
        alone = network(feed, memory_x, memory_h, torch.ones(1, 5, dtype=torch.bool))
        left_padded = network(*padded, valid)[:, 3:]
    torch.testing.assert_close(left_padded, alone, rtol=1e-5, atol=1e-5)


def test_a_left_padded_batch_generates_what_each_row_generates_alone():
    model = copilot_on(**OPTIONS["rotary+token_hidden"])
    rows = [prompts(1, 7, seed=1)[0], prompts(1, 4, seed=2)[0]]
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 7 - len(row) :], mask[i, 7 - len(row) :] = row, 1
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=3, pad_token_id=0)
    batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    for i, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], attention_mask=torch.ones(1, len(row), dtype=torch.long), **kwargs)
        assert torch.equal(batched[i, 7:], alone[0, len(row) :]), f"row {i}"


# ------------------------------------------------------------------ generation and fusion


@pytest.mark.parametrize(
    "option, feed", [(option, "pilot_error") for option in OPTIONS] + [("rotary+token_hidden", "copilot")]
)
def test_cached_and_uncached_generation_agree_under_greedy_beams_and_sampling(option, feed):
    model = copilot_on(inference_feed=feed, **OPTIONS[option])
    ids = prompts()
    for kwargs in (dict(do_sample=False), dict(do_sample=False, num_beams=3), dict(do_sample=True, top_k=20)):
        outputs = []
        for use_cache in (True, False):
            torch.manual_seed(0)
            outputs.append(model.generate(input_ids=ids, max_new_tokens=6, use_cache=use_cache, **kwargs))
        assert torch.equal(*outputs), kwargs


@pytest.mark.parametrize("option", list(OPTIONS))
def test_the_options_change_the_correction_and_lambda_zero_is_still_the_pilot(option):
    ids = prompts()
    default, model, pilot = copilot_on(**PAPER_LAYOUT), copilot_on(**OPTIONS[option]), tiny_pilot()
    # From position 3 on the inputs are treated as generated: the Copilot then reads non-zero errors (on prompt
    # positions it reads zeros, and its first attention query is zero, which no rotation changes).
    scored = [m(input_ids=ids, copilot_prompt_length=3).copilot_logits for m in (model, default)]
    assert not torch.allclose(*scored)
    model.peft_config["default"].fusion_lambda = 0.0
    assert torch.equal(model(input_ids=ids).logits, pilot(ids).logits)
    kwargs = dict(max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(input_ids=ids, **kwargs), pilot.generate(input_ids=ids, **kwargs))


def test_a_new_token_hidden_copilot_computes_what_a_token_copilot_does():
    """h_t enters through a zero-initialised map: before training, `"token_hidden"` is `"token"`."""
    token = get_peft_model(tiny_pilot(), CopilotConfig(copilot_same_position="token"))
    token_hidden = get_peft_model(tiny_pilot(), CopilotConfig(copilot_same_position="token_hidden"))
    randomise_copilot(token)
    randomise_copilot(token_hidden)
    ids = prompts()
    with torch.no_grad():
        torch.testing.assert_close(token_hidden(input_ids=ids).logits, token(input_ids=ids).logits, rtol=0, atol=0)


# ------------------------------------------------------------------ saving and loading


def test_an_adapter_with_the_options_reloads_to_identical_outputs(tmp_path):
    model = copilot_on(fusion_lambda=0.8, **OPTIONS["rotary+token_hidden"])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["copilot_positions"], saved["copilot_same_position"]) == ("rotary", "token_hidden")
    assert saved["copilot_architecture"]["positions"]["kind"] == "rotary"
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path).eval()
    ids = prompts()
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=3)
    assert torch.equal(loaded.generate(input_ids=ids, **kwargs), model.generate(input_ids=ids, **kwargs))


def test_an_adapter_saved_before_the_options_existed_loads_position_free(tmp_path):
    model = copilot_on(**PAPER_LAYOUT)
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    for key in ("copilot_positions", "copilot_same_position"):
        del saved[key]
    for key in ("positions", "same_position"):
        del saved["copilot_architecture"][key]
    config_path.write_text(json.dumps(saved))
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path).eval()
    config = loaded.peft_config["default"]
    assert (config.copilot_positions, config.copilot_same_position) == ("none", "none")
    assert loaded.base_model.active_network.rotary is None
    ids = prompts()
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("copilot_positions", "none", "copilot_positions='none' disagrees with the saved Copilot"),
        ("copilot_same_position", "token", "copilot_same_position='token' disagrees with the saved Copilot"),
    ],
)
def test_a_saved_config_that_contradicts_its_network_is_refused_by_field(tmp_path, field, value, match):
    copilot_on(**OPTIONS["rotary+token_hidden"]).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved[field] = value
    config_path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=match):
        PeftModel.from_pretrained(tiny_pilot(), tmp_path)


# ------------------------------------------------------------------ defaults and bad values


@pytest.mark.parametrize(
    "pilot, expected",
    [(tiny_pilot, ("rotary", "token_hidden")), (tiny_t5, ("none", "none"))],
    ids=["llama", "t5"],
)
def test_unset_fields_take_the_pilot_familys_defaults_and_are_saved(tmp_path, pilot, expected):
    task = "CAUSAL_LM" if pilot is tiny_pilot else "SEQ_2_SEQ_LM"
    model = get_peft_model(pilot(), CopilotConfig(task_type=task))
    config = model.peft_config["default"]
    assert (config.copilot_positions, config.copilot_same_position) == expected
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["copilot_positions"], saved["copilot_same_position"]) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(copilot_positions="alibi"), r"copilot_positions must be one of \('none', 'rotary'\), got 'alibi'"),
        (dict(copilot_same_position="feature"), "copilot_same_position must be one of .* got 'feature'"),
        (
            dict(
                copilot_architecture={
                    **dict.fromkeys(("memory_size", "hidden_size", "num_layers"), 8),
                    "num_attention_heads": 2,
                    "intermediate_size": 8,
                    "positions": {"kind": "alibi"},
                },
                copilot_positions="rotary",
            ),
            r"copilot_architecture\['positions'\] must be null or a rotary description",
        ),
    ],
)
def test_bad_values_of_the_new_fields_are_refused_with_the_field_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CopilotConfig(**kwargs)


def test_t5_pilots_refuse_rotary_positions_with_the_reason():
    with pytest.raises(ValueError, match="copilot_positions='rotary' does not apply to a T5 Pilot"):
        get_peft_model(tiny_t5(), CopilotConfig(task_type="SEQ_2_SEQ_LM", copilot_positions="rotary"))


@pytest.mark.parametrize("same_position", ["token", "hidden", "token_hidden"])
def test_t5_pilots_take_every_same_position_path(same_position):
    model = get_peft_model(tiny_t5(), CopilotConfig(task_type="SEQ_2_SEQ_LM", copilot_same_position=same_position))
    assert model.base_model.active_network.same_position == same_position


# ------------------------------------------------------------------ training


@pytest.mark.parametrize("option", list(OPTIONS))
def test_the_replayed_log_gives_the_loss_of_the_fresh_left_padded_forward(option):
    """The Mistake Log drops padding and re-embeds X̃: positions counted over real tokens, and X̃_t / h_t at their
    own positions, make its replay see exactly the inputs of the forward it logged."""
    model = copilot_on(**OPTIONS[option])
    tuner = model.base_model
    ids, mask = prompts(batch=3, length=9, seed=3), torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = mask[2, :5] = 0
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt, so no padding position has a target (each row's first real token is prompt)
    targets = shift_targets(labels)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, copilot_teacher_forcing=False)
        log = MistakeLog(top_k=VOCAB)
        replay = log.collate(log.append(ids, mask, targets, out.copilot_memory_h, out.pilot_target_logits))
        _, fresh = tuner.copilot_teacher_forced(
            out.copilot_memory_x,
            out.copilot_memory_h,
            mask.bool(),
            targets,
            PilotPrediction.from_logits(out.pilot_target_logits),
        )
        from_log = tuner.copilot_replay(replay)
    torch.testing.assert_close(from_log, fresh, atol=2e-3, rtol=2e-3)  # the log keeps p̂ in 16 bits


@pytest.mark.parametrize("option", list(OPTIONS))
def test_a_few_training_steps_with_each_option_give_finite_losses(tmp_path, option):
    from tcopilot_peft import CopilotSFTConfig, CopilotSFTTrainer
    from tests.conftest import arithmetic_dataset, char_tokenizer

    tokenizer = char_tokenizer()
    model = get_peft_model(tiny_pilot(vocab_size=len(tokenizer)), CopilotConfig(**OPTIONS[option]))
    args = CopilotSFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        mistake_log_sampling="uniform",  # the Copilot learns from the log's replay
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        dataloader_pin_memory=False,
    )
    trainer = CopilotSFTTrainer(
        model=model, args=args, train_dataset=arithmetic_dataset(8), processing_class=tokenizer
    )
    before = [p.detach().clone() for p in model.base_model.active_network.parameters()]
    trainer.train()
    losses = [entry["copilot_loss"] for entry in trainer.state.log_history if "copilot_loss" in entry]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))  # the Copilot's phase: 4 × 2 steps
    after = list(model.base_model.active_network.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_no_future_token_reaches_the_copilot_through_the_new_paths(option):
    """The token path reads X̃_t and h_t, and rotary keys sit at their own positions: changing the token at position 7
    (the target of position 6, and the input at 7) leaves the teacher-forced correction at positions ≤ 6 unchanged."""
    model = copilot_on(**OPTIONS[option])
    ids = prompts(batch=1, length=10)
    labels = ids.clone()
    labels[:, :3] = -100
    first = model(input_ids=ids, labels=labels).copilot_logits
    ids[0, 7] = labels[0, 7] = (ids[0, 7] + 5) % VOCAB
    second = model(input_ids=ids, labels=labels).copilot_logits
    torch.testing.assert_close(first[:, :7], second[:, :7], rtol=0, atol=0)
    assert not torch.allclose(first[:, 7:], second[:, 7:])
