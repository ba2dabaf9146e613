"""CopilotSFTTrainer: Algorithm 1 on TRL, on tiny offline models."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from trl import SFTConfig, SFTTrainer

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tests.conftest import QUANTIZABLE_WIDTH, arithmetic_dataset, char_tokenizer, tiny_pilot


TOKENIZER = char_tokenizer()
QUIET = dict(report_to=[], disable_tqdm=True, dataloader_pin_memory=False, save_strategy="no", seed=0)


def copilot_args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3)
    settings.update(QUIET)
    settings.update(overrides)
    return CopilotSFTConfig(**settings)


def pilot(seed=0):
    return tiny_pilot(vocab_size=len(TOKENIZER), seed=seed)


def train(model, args, dataset=None, **kwargs):
    trainer = CopilotSFTTrainer(
        model=model, args=args, train_dataset=dataset or arithmetic_dataset(), processing_class=TOKENIZER, **kwargs
    )
    trainer.train()
    return trainer


def test_logs_pilot_and_copilot_losses_and_mistake_log_size(tmp_path):
    args = copilot_args(tmp_path, logging_steps=2, copilot_schedule="joint")
    trainer = train(get_peft_model(pilot(), CopilotConfig()), args)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["copilot_loss"] > 0 and entry["mistake_log_bytes"] > 0 and entry["mistake_log_rows"] > 0
    assert logged[-1]["mistake_log_rows"] == 16  # 4 rounds of 4 sequences, none evicted


def test_by_default_the_pilot_trains_first_then_the_copilot_on_the_finished_pilot(tmp_path):
    """`copilot_schedule="after_pilot"`: the Pilot's steps are exactly a plain SFT run's; then the Copilot learns for
    four times as many steps from the finished Pilot, frozen (its learning rate 0), and its Mistake Log holds that
    Pilot's."""
    model = get_peft_model(pilot(), CopilotConfig())
    copilot_before = [p.detach().clone() for p in model.base_model.copilot_model.parameters()]
    trainer = train(model, copilot_args(tmp_path, max_steps=3, logging_steps=1))
    assert trainer.state.global_step == 15 and (trainer.pilot_steps, trainer.copilot_start) == (3, 3)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [("copilot_loss" in e) for e in logged] == [False] * 3 + [True] * 12
    assert all(e["learning_rate"] > 0 for e in logged[:3]) and all(e["learning_rate"] == 0 for e in logged[3:])
    assert len(trainer.mistake_log) == 48 and trainer.copilot_updater.scheduler.last_epoch == 12
    assert any(not torch.equal(a, b) for a, b in zip(copilot_before, model.base_model.copilot_model.parameters()))
    plain = pilot()
    sft_args = SFTConfig(output_dir=str(tmp_path / "plain"), max_steps=3, per_device_train_batch_size=4, bf16=False)
    for key, value in {**QUIET, "learning_rate": 1e-3}.items():
        setattr(sft_args, key, value)
    SFTTrainer(model=plain, args=sft_args, train_dataset=arithmetic_dataset(), processing_class=TOKENIZER).train()
    ours = trainer.copilot_tuner.model.state_dict()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(ours[name], value, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("schedule", "factor", "run", "copilot_steps", "learns"),
    [
        ("after_pilot", 2.0, 9, 6, [False] * 3 + [True] * 6),  # the Pilot's 3 steps, then the Copilot's 6
        ("after_pilot", 0.5, 5, 2, [False] * 3 + [True] * 2),  # round(1.5) = 2
        ("joint", None, 3, 3, [True] * 3),  # unset: the paper's Algorithm 1, both for the Pilot's steps
        ("joint", 2.0, 6, 6, [True] * 6),  # both for 3 steps, then the Copilot alone on the finished Pilot
        ("joint", 1 / 3, 3, 1, [True] + [False] * 2),
    ],
)
def test_copilot_steps_factor_sets_the_copilots_phase(tmp_path, schedule, factor, run, copilot_steps, learns):
    """The Copilot learns for `copilot_steps_factor` × the Pilot's steps, its schedule spanning exactly those; the
    Pilot's training is a plain SFT run's whatever the factor (its learning rate 0 once its own steps are done)."""
    args = copilot_args(tmp_path, max_steps=3, logging_steps=1, copilot_schedule=schedule, copilot_steps_factor=factor)
    trainer = train(get_peft_model(pilot(), CopilotConfig()), args)
    assert (trainer.state.global_step, trainer.pilot_steps, trainer.copilot_steps) == (run, 3, copilot_steps)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [("copilot_loss" in e) for e in logged] == learns
    assert [e["learning_rate"] > 0 for e in logged] == [True] * 3 + [False] * (run - 3)
    assert trainer.copilot_updater.scheduler.last_epoch == copilot_steps
    assert trainer.copilot_updater.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # cosine ran out


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan")])
def test_a_copilot_steps_factor_that_is_not_positive_is_refused_by_name(tmp_path, factor):
    with pytest.raises(ValueError, match="copilot_steps_factor must be > 0"):
        copilot_args(tmp_path, copilot_steps_factor=factor)


@pytest.mark.parametrize(("factor", "steps"), [(None, 3), (2.0, 6)])  # unset: the configured steps are the Copilot's
def test_a_frozen_pilot_has_no_pilot_phase_to_wait_for(tmp_path, factor, steps):
    args = copilot_args(tmp_path, max_steps=3, train_pilot="none", copilot_steps_factor=factor)
    trainer = train(get_peft_model(pilot(), CopilotConfig()), args)
    assert trainer.state.global_step == steps and trainer.copilot_start == 0
    assert trainer.copilot_updater.scheduler.last_epoch == steps


def test_copilot_learns_from_the_log(tmp_path):
    """On a fixed Pilot the Copilot beats predicting no correction on held-out sequences (positive skill)."""
    model = get_peft_model(pilot(), CopilotConfig())
    held_out = [TOKENIZER(f"{a}+{b}={a + b}</s>").input_ids for a, b in [(12, 30), (45, 17), (33, 48), (61, 19)]]
    ids = torch.tensor(held_out)
    labels = ids.clone()
    labels[:, :6] = -100

    def held_out_copilot_loss():
        model.eval()
        with torch.no_grad():
            return model(input_ids=ids, labels=labels).copilot_loss.item()

    zero_prediction = held_out_copilot_loss()  # the output map starts at zero: this is RMSE(0, ℓ)
    args = copilot_args(
        tmp_path, max_steps=60, train_pilot="none", copilot_learning_rate=3e-3, copilot_lr_scheduler_type="constant"
    )
    train(model, args, dataset=arithmetic_dataset(256))
    assert held_out_copilot_loss() < 0.93 * zero_prediction


def test_the_copilot_never_changes_the_pilots_training(tmp_path):
    """A full-precision Pilot trained with the Copilot ends exactly where plain SFT ends: no Copilot gradient leaks."""
    trainer = train(get_peft_model(pilot(), CopilotConfig()), copilot_args(tmp_path, max_steps=3))
    assert trainer.pilot_training == "full"
    plain = pilot()
    sft_args = SFTConfig(
        output_dir=str(tmp_path / "plain"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, bf16=False
    )
    for key, value in QUIET.items():
        setattr(sft_args, key, value)
    SFTTrainer(model=plain, args=sft_args, train_dataset=arithmetic_dataset(), processing_class=TOKENIZER).train()
    ours = trainer.copilot_tuner.model.state_dict()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(ours[name], value, atol=2e-5, rtol=1e-4, msg=name)
    assert not torch.equal(
        plain.model.layers[0].mlp.up_proj.weight,
        tiny_pilot(vocab_size=len(TOKENIZER)).model.layers[0].mlp.up_proj.weight,
    )


def test_a_plain_sft_config_keeps_its_values_and_takes_the_copilot_defaults(tmp_path):
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, learning_rate=3e-4, bf16=False
    )
    for key, value in QUIET.items():
        setattr(args, key, value)
    trainer = train(get_peft_model(pilot(), CopilotConfig()), args)
    assert isinstance(trainer.args, CopilotSFTConfig)
    assert trainer.args.learning_rate == 3e-4 and trainer.args.max_steps == 1
    assert trainer.args.copilot_learning_rate == CopilotSFTConfig(output_dir=str(tmp_path)).copilot_learning_rate
    assert trainer.copilot_updater.scheduler.last_epoch == 4  # the default Copilot phase: 4 × the Pilot's step


def test_lora_pilot_trains_only_lora_and_copilot(tmp_path):
    lora = get_peft_model(pilot(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model = get_peft_model(lora, CopilotConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = train(model, copilot_args(tmp_path))
    assert trainer.pilot_training == "adapter"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and any("copilot_model" in n for n in changed)
    assert all("lora_" in n or "copilot_model" in n for n in changed)


def test_plain_model_with_peft_config(tmp_path):
    trainer = train(pilot(), copilot_args(tmp_path, max_steps=2), peft_config=CopilotConfig(num_layers=2))
    assert isinstance(trainer.model, PeftModel)


def test_gradient_accumulation_and_gradient_checkpointing(tmp_path):
    args = copilot_args(tmp_path, gradient_accumulation_steps=2, gradient_checkpointing=True, max_steps=2)
    trainer = train(get_peft_model(pilot(), CopilotConfig()), args)
    assert trainer.state.global_step == 10  # 2 of the Pilot, then 8 of the Copilot
    assert trainer.copilot_updater.scheduler.last_epoch == 8  # one Copilot update per optimiser step of its phase


@pytest.mark.parametrize("policy", ["current", "uniform", "newest"])
def test_sampling_policies(tmp_path, policy):
    trainer = train(get_peft_model(pilot(), CopilotConfig()), copilot_args(tmp_path, mistake_log_sampling=policy))
    assert trainer.state.global_step == 20 and trainer.copilot_updater.scheduler.last_epoch == 16


def test_bf16_run(tmp_path):
    trainer = train(
        get_peft_model(pilot(), CopilotConfig()),
        copilot_args(tmp_path, bf16=True, use_cpu=not torch.cuda.is_available(), max_steps=2),
    )
    assert trainer.state.global_step == 10


def test_cpu_defaults_need_no_flags(tmp_path):
    assert CopilotSFTConfig(output_dir=str(tmp_path)).bf16 is (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )


def test_conversational_dataset(tmp_path):
    from datasets import Dataset

    tokenizer = char_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": f"{a}+{a}"}],
            "completion": [{"role": "assistant", "content": str(2 * a)}],
        }
        for a in range(20)
    ]
    trainer = CopilotSFTTrainer(
        model=get_peft_model(pilot(), CopilotConfig()),
        args=copilot_args(tmp_path, max_steps=2),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.mistake_log.total_bytes > 0


def test_qlora_pilot_on_cpu(tmp_path):
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    # The frozen Pilot's phase runs bitsandbytes' inference path, which needs quantizable widths.
    tiny_pilot(vocab_size=len(TOKENIZER), hidden_size=QUANTIZABLE_WIDTH).save_pretrained(tmp_path / "pilot")
    quantized = LlamaForCausalLM.from_pretrained(
        tmp_path / "pilot", quantization_config=BitsAndBytesConfig(load_in_4bit=True)
    )
    model = get_peft_model(
        get_peft_model(quantized, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])), CopilotConfig()
    )
    trainer = train(model, copilot_args(tmp_path, max_steps=2))
    assert trainer.pilot_training == "adapter"


def test_quantized_pilot_without_adapter_is_refused(tmp_path):
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    pilot().save_pretrained(tmp_path / "pilot")
    quantized = LlamaForCausalLM.from_pretrained(
        tmp_path / "pilot", quantization_config=BitsAndBytesConfig(load_in_4bit=True)
    )
    with pytest.raises(ValueError, match="quantized Pilot"):
        CopilotSFTTrainer(
            model=get_peft_model(quantized, CopilotConfig()),
            args=copilot_args(tmp_path),
            train_dataset=arithmetic_dataset(),
            processing_class=TOKENIZER,
        )


def test_copilot_only_phase_keeps_the_pilot_fixed(tmp_path):
    model = get_peft_model(pilot(), CopilotConfig())
    pilot_before = {n: p.detach().clone() for n, p in model.base_model.model.named_parameters()}
    trainer = train(model, copilot_args(tmp_path, train_pilot="none"))
    assert all(torch.equal(p, pilot_before[n]) for n, p in model.base_model.model.named_parameters())
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_bad_inputs_are_refused_with_the_reason(tmp_path):
    from datasets import Dataset

    model = get_peft_model(pilot(), CopilotConfig())
    bad = Dataset.from_list([{"question": "1+1", "answer": "2"}])
    with pytest.raises(ValueError, match=r"found \['answer', 'question'\]"):
        CopilotSFTTrainer(model=model, args=copilot_args(tmp_path), train_dataset=bad, processing_class=TOKENIZER)
    with pytest.raises(ValueError, match="packing"):
        CopilotSFTTrainer(
            model=model,
            args=copilot_args(tmp_path, packing=True),
            train_dataset=arithmetic_dataset(),
            processing_class=TOKENIZER,
        )
    with pytest.raises(ValueError, match="needs a Copilot"):
        CopilotSFTTrainer(
            model=pilot(), args=copilot_args(tmp_path), train_dataset=arithmetic_dataset(), processing_class=TOKENIZER
        )
    with pytest.raises(ValueError, match="mistake_log_max_bytes"):
        train(get_peft_model(pilot(), CopilotConfig()), copilot_args(tmp_path, mistake_log_max_bytes=64))


def test_llm_adapters_rows_train_as_the_cli_converts_them(tmp_path):
    from datasets import Dataset

    from tcopilot_peft.data import to_trl_format

    rows = [
        {"instruction": f"Add {a} and {b}.", "input": "" if a < 3 else "numbers", "output": f" {a + b}"}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]
    ]
    converted = to_trl_format(Dataset.from_list(rows))

    def prepared(dataset):
        model = get_peft_model(pilot(), CopilotConfig())
        args = copilot_args(tmp_path, max_steps=1, eval_strategy="no")
        return CopilotSFTTrainer(
            model=model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=TOKENIZER
        )

    trainer, reference = prepared(Dataset.from_list(rows)), prepared(converted)
    for split in ("train_dataset", "eval_dataset"):
        assert getattr(trainer, split).to_dict() == getattr(reference, split).to_dict()
    assert "### Instruction:" in converted[0]["prompt"] and "### Input:" in converted[1]["prompt"]
    trainer.train()
    assert any("copilot_loss" in entry for entry in trainer.state.log_history)


def test_non_finite_pilot_loss_skips_the_copilot_update(tmp_path):
    model = get_peft_model(pilot(), CopilotConfig())
    trainer = CopilotSFTTrainer(
        model=model,
        args=copilot_args(tmp_path, max_steps=2, logging_steps=1),
        train_dataset=arithmetic_dataset(),
        processing_class=TOKENIZER,
    )
    with torch.no_grad():
        model.base_model.model.lm_head.weight[5] = float("nan")
    copilot_before = [p.detach().clone() for p in trainer.copilot_parameters()]
    trainer.train()
    assert len(trainer.mistake_log) == 0
    assert all(torch.equal(a, b) for a, b in zip(copilot_before, trainer.copilot_parameters()))
    assert any(e.get("copilot_skipped_steps") for e in trainer.state.log_history)


def test_save_model_writes_a_loadable_adapter(tmp_path):
    lora = get_peft_model(pilot(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = train(get_peft_model(lora, CopilotConfig()), copilot_args(tmp_path, max_steps=2))
    trainer.save_model(str(tmp_path / "final"))
    loaded = PeftModel.from_pretrained(pilot(), tmp_path / "final").eval()
    ids = TOKENIZER("12+34=", return_tensors="pt").input_ids
    trainer.model.eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits)


def test_eval_reports_copilot_loss(tmp_path):
    args = copilot_args(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = train(get_peft_model(pilot(), CopilotConfig()), args, eval_dataset=arithmetic_dataset(8, seed=1))
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert evals and evals[0]["eval_copilot_loss"] > 0


@pytest.mark.parametrize("loss", ["fused_ce", "rmse"])
def test_the_log_rebuilds_the_dense_loss_when_it_keeps_the_whole_vocabulary(loss):
    """Replaying a logged round gives the loss of the fresh forward (exact with top-k = |V|; the gold token's
    log-probability is what the sparse fused cross-entropy needs besides the top-k)."""
    from tcopilot_peft.fusion import PilotPrediction, shift_targets
    from tcopilot_peft.mistake_log import MistakeLog
    from tests.conftest import randomise_copilot

    model = get_peft_model(pilot(), CopilotConfig())
    randomise_copilot(model, scale=0.05)
    tuner = model.base_model
    rows = [TOKENIZER(f"{a}+{b}={a + b}</s>").input_ids for a, b in [(12, 30), (45, 17), (33, 48)]]
    ids = torch.tensor(rows)
    labels = ids.clone()
    labels[:, :6] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels, copilot_teacher_forcing=False)
        targets = shift_targets(labels)
        log = MistakeLog(top_k=len(TOKENIZER))
        replay = log.collate(log.append(ids, None, targets, out.copilot_memory_h, out.pilot_target_logits))
        _, dense = tuner.copilot_teacher_forced(
            out.copilot_memory_x,
            out.copilot_memory_h,
            torch.ones_like(ids, dtype=torch.bool),
            targets,
            PilotPrediction.from_logits(out.pilot_target_logits),
            loss_kind=loss,
        )
        from_log = tuner.copilot_replay(replay, loss_kind=loss)
    torch.testing.assert_close(from_log, dense, atol=2e-3, rtol=2e-3)  # the log keeps p̂ in 16 bits


def test_the_trainers_loss_override_is_recorded_in_the_adapter(tmp_path):
    model = get_peft_model(pilot(), CopilotConfig())
    with pytest.warns(UserWarning, match="fusion_mode='logit' and inference_feed='pilot_error' are kept"):
        train(model, copilot_args(tmp_path, max_steps=1, copilot_loss="rmse"))
    assert model.peft_config["default"].copilot_loss == "rmse"
    with pytest.raises(ValueError, match="copilot_loss must be one of"):
        copilot_args(tmp_path, copilot_loss="l1")


def test_two_phase_recipe_trains_a_copilot_on_a_finished_lora_pilot(tmp_path):
    """docs/training.md's recipe: the Pilot fine-tuned first (a plain PEFT LoRA adapter), then a Copilot trained on it
    frozen. The Pilot's LoRA weights come through unchanged; the saved Copilot adapter restores both on the base."""
    lora_pilot = get_peft_model(pilot(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    SFTTrainer(
        model=lora_pilot,
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=4, bf16=False, **QUIET
        ),
        train_dataset=arithmetic_dataset(),
        processing_class=TOKENIZER,
    ).train()
    lora_pilot.save_pretrained(tmp_path / "pilot-lora")
    finished = PeftModel.from_pretrained(pilot(), tmp_path / "pilot-lora")
    lora = {n: p.detach().clone() for n, p in finished.named_parameters() if "lora_" in n}
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # phase 1 did train it

    model = get_peft_model(finished, CopilotConfig())
    copilot = model.base_model.copilot_model[model.active_adapter]
    copilot_before = {n: p.detach().clone() for n, p in copilot.named_parameters()}
    train(model, copilot_args(tmp_path, train_pilot="none"))
    after = {n[n.index("layers.") :]: p for n, p in model.named_parameters() if "lora_" in n}
    assert sorted(after) == sorted(n[n.index("layers.") :] for n in lora)
    assert all(torch.equal(p, after[n[n.index("layers.") :]]) for n, p in lora.items())
    assert any(not torch.equal(p, copilot_before[n]) for n, p in copilot.named_parameters())

    model.save_pretrained(tmp_path / "copilot")
    ids = torch.tensor([TOKENIZER("12+30=42</s>").input_ids])
    reloaded = PeftModel.from_pretrained(pilot(), tmp_path / "copilot").eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)


def _count_pilot_forwards(model) -> list[int]:
    calls = [0]
    model.base_model.model.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(
    ("overrides", "rows", "pilot_forwards", "replayed_steps", "max_rounds"),
    [
        ({}, 16, 4, 8, 128),  # a whole epoch (4 rounds of 4 rows) logged in epoch 0; epochs 1 and 2 replay it
        ({"mistake_log_max_rounds": 2}, 16, 4, 8, 4),  # the log's bound is raised to hold an epoch
        ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, 16, 8, 8, 128),  # 8 rounds an epoch
        ({"gradient_accumulation_steps": 2}, 12, 3, 10, 128),  # 3 micro-batches in an epoch's 2 steps
        ({"mistake_log_reuse": False}, 16, 12, 0, 128),
        ({"mistake_log_max_bytes": 8_000}, 16, 12, 0, 128),  # an epoch does not fit: back to the configured bound
        ({"mistake_log_sampling": "current"}, 16, 12, 0, 128),
        ({"mistake_log_sampling": "newest"}, 16, 12, 0, 128),
    ],
)
def test_once_the_log_holds_an_epoch_of_a_frozen_pilot_the_pilot_stops_running(
    tmp_path, overrides, rows, pilot_forwards, replayed_steps, max_rounds
):
    """The frozen Pilot's states do not change from epoch to epoch: once the Mistake Log holds every row of one, the
    Copilot learns from it alone for the rest of its steps (its schedule unchanged) and the Pilot no longer runs."""
    model = get_peft_model(pilot(), CopilotConfig())
    forwards = _count_pilot_forwards(model)
    args = copilot_args(tmp_path, max_steps=12, logging_steps=1, train_pilot="none", **overrides)
    trainer = train(model, args, dataset=arithmetic_dataset(rows))
    assert forwards[0] == pilot_forwards
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [e["mistake_log_replay"] for e in logged] == [0.0] * (12 - replayed_steps) + [1.0] * replayed_steps
    assert all(e["copilot_loss"] > 0 for e in logged) and trainer.copilot_updater.scheduler.last_epoch == 12
    assert trainer.mistake_log.max_rounds == max_rounds
    if replayed_steps:
        assert len(trainer.mistake_log) == rows  # each row once
        frozen = [
            e["loss"] for e in logged[: 12 - replayed_steps]
        ]  # the frozen Pilot's loss, now its mean over the log
        assert logged[-1]["loss"] == pytest.approx(sum(frozen) / len(frozen), rel=0.1)


def test_after_the_pilot_the_log_replaces_it_from_the_copilots_second_epoch(tmp_path):
    model = get_peft_model(pilot(), CopilotConfig())
    forwards = _count_pilot_forwards(model)
    trainer = train(model, copilot_args(tmp_path, max_steps=4), dataset=arithmetic_dataset(16))
    assert trainer.state.global_step == 20 and trainer.copilot_updater.scheduler.last_epoch == 16
    assert forwards[0] == 4 + 4  # the Pilot's epoch of training, then one epoch of logging its finished self


def test_a_frozen_pilot_is_logged_without_dropout_the_same_in_every_epoch(tmp_path):
    """The Copilot reads the Pilot's evaluation-mode states at inference, so that is what a frozen Pilot logs: the
    same row logged in two epochs is the same, though the Pilot's LoRA (trained: B is not zero) has dropout."""
    lora = get_peft_model(
        pilot(), LoraConfig(r=4, lora_dropout=0.5, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    )
    args = copilot_args(tmp_path, max_steps=8, train_pilot="none", mistake_log_reuse=False)
    trainer = train(get_peft_model(lora, CopilotConfig()), args, dataset=arithmetic_dataset(16))
    rows = [row for rows in trainer.mistake_log.rounds for row in rows]
    assert len(rows) == 32
    first = {tuple(row.input_ids.tolist()): row for row in rows[:16]}
    for row in rows[16:]:
        again = first[tuple(row.input_ids.tolist())]
        assert torch.equal(row.hidden, again.hidden) and torch.equal(row.gold_log_probs, again.gold_log_probs)
