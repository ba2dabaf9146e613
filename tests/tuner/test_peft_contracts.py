"""What a PEFT user expects of any adapter, for the Copilot: backward through the fused logits, `low_cpu_mem_usage`
loading, `delete_adapter`, `unload`, `merge_adapter`, and what the `loss` of a labelled forward is."""

import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model

from tcopilot_peft import CopilotConfig
from tests.conftest import randomise_copilot, tiny_pilot


ARCHS = ["llama", "qwen2", "mistral"]
MODES = ["prob", "logit"]
IDS = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
LABELS = torch.cat([torch.full((2, 3), -100), IDS[:, 3:]], dim=1)

pytestmark = [pytest.mark.parametrize("arch", ARCHS), pytest.mark.parametrize("mode", MODES)]


def copilot_on(arch, mode, **config):
    model = get_peft_model(tiny_pilot(arch), CopilotConfig(fusion_mode=mode, **config))
    randomise_copilot(model)
    return model.eval()


def copilot_parameters(model):
    return list(model.base_model.copilot_model.parameters())


def pilot_parameters(model):
    return list(model.base_model.model.parameters())


def next_token_loss(logits):
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), IDS[:, 1:].flatten())


def generate(model):
    return model.generate(input_ids=IDS, max_new_tokens=4, do_sample=False)


# ---------------------------------------------------------------------- 1. backward through the fused logits


@pytest.mark.parametrize("labels", [None, LABELS], ids=["no_labels", "labels"])
def test_backward_through_fused_logits_reaches_the_copilot_and_never_the_pilot(arch, mode, labels):
    model = copilot_on(arch, mode)
    with torch.no_grad():
        fast = model(input_ids=IDS, labels=labels).logits  # the in-place path
    out = model(input_ids=IDS, labels=labels)
    torch.testing.assert_close(out.logits, fast, rtol=0, atol=0)
    next_token_loss(out.logits).backward()
    assert all(p.grad is None for p in pilot_parameters(model))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in copilot_parameters(model))


@pytest.mark.parametrize("feed", ["copilot", "pilot_error"])
def test_the_copilots_correction_carries_no_gradient_into_a_trainable_pilot(arch, mode, feed):
    model = copilot_on(arch, mode, inference_feed=feed)
    for parameter in pilot_parameters(model):
        parameter.requires_grad_(True)  # as in full fine-tuning
    for labels in (None, LABELS):
        correction = model(input_ids=IDS, labels=labels).copilot_logits
        grads = torch.autograd.grad(correction.square().sum(), pilot_parameters(model), allow_unused=True)
        assert all(g is None for g in grads)


# ---------------------------------------------------------------------- 2. low_cpu_mem_usage loading


@pytest.mark.parametrize("is_trainable", [False, True])
def test_low_cpu_mem_usage_loads_the_saved_weights(arch, mode, is_trainable, tmp_path):
    model = copilot_on(arch, mode)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_pilot(arch), tmp_path, is_trainable=is_trainable, low_cpu_mem_usage=True)
    assert not any(p.is_meta for p in loaded.parameters())
    assert {p.device for p in loaded.parameters()} == {IDS.device}
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert all("copilot_model" in n for n in trainable) and bool(trainable) == is_trainable
    torch.testing.assert_close(loaded.eval()(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=0)


# ---------------------------------------------------------------------- 3. delete_adapter


def test_deleting_the_last_adapter_leaves_none_active_and_the_pilot_running(arch, mode):
    model, pilot = copilot_on(arch, mode), tiny_pilot(arch)
    model.delete_adapter("default")
    tuner = model.base_model
    assert model.active_adapters == [] and tuner.active_adapter == [] and tuner.copilot_layer.active_adapters == []
    assert "default" not in model.peft_config and "default" not in tuner.model.peft_config
    assert len(tuner.copilot_model) == 0
    # PeftModel's own forward needs an active config after this (as with LoRA); the tuner runs the Pilot alone.
    torch.testing.assert_close(tuner(input_ids=IDS).logits, pilot(IDS).logits, rtol=0, atol=0)
    assert torch.equal(generate(tuner), generate(pilot))


def test_deleting_the_active_adapter_activates_the_remaining_one(arch, mode):
    model = copilot_on(arch, mode)
    model.add_adapter("other", CopilotConfig(fusion_mode=mode))
    model.delete_adapter("other")  # not active: the active one stays
    assert model.active_adapters == ["default"]
    model.add_adapter("other", CopilotConfig(fusion_mode=mode))
    with pytest.warns(UserWarning, match="other"):
        model.delete_adapter("default")
    assert model.active_adapters == ["other"] and model.base_model.copilot_layer.active_adapters == ["other"]
    assert list(model.peft_config) == ["other"]
    assert model(input_ids=IDS).logits.shape == (2, 7, 97)


# ---------------------------------------------------------------------- 4. unload


def test_unload_returns_the_pilot_with_no_trace_of_the_copilot(arch, mode):
    pilot, reference = tiny_pilot(arch), tiny_pilot(arch)
    model = get_peft_model(pilot, CopilotConfig(fusion_mode=mode))
    randomise_copilot(model)
    generate(model)  # generation routes the Pilot's forward through fusion for a while
    unloaded = model.unload()
    assert unloaded is pilot and type(unloaded) is type(reference)
    assert not hasattr(unloaded, "peft_config") and "forward" not in unloaded.__dict__
    assert not any("copilot" in name for name, _ in unloaded.named_modules())
    # Beyond transformers' own output-capturing hooks (added the first time anyone asks for hidden states) the Pilot
    # carries no hook: the Copilot's layer-pooling hooks are gone with it.
    assert hooks(unloaded) == hooks(reference) == set()
    state, expected = unloaded.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    torch.testing.assert_close(unloaded(IDS).logits, reference(IDS).logits, rtol=0, atol=0)
    assert torch.equal(generate(unloaded), generate(reference))


def hooks(model):
    return {
        (name, kind, getattr(hook, "__qualname__", type(hook).__name__))
        for name, module in model.named_modules()
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        for hook in getattr(module, kind).values()
        if "output_capturing_hook" not in getattr(hook, "__qualname__", "")
    }


# ---------------------------------------------------------------------- 5. merge_adapter


def test_merge_adapter_refuses_like_merge_and_unload_and_changes_nothing(arch, mode):
    model = copilot_on(arch, mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(input_ids=IDS).logits
    for merge in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(ValueError, match="cannot be merged into the Pilot's weights"):
            merge()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert isinstance(model, PeftModel) and model.active_adapters == ["default"]
    torch.testing.assert_close(model(input_ids=IDS).logits, logits, rtol=0, atol=0)


# ---------------------------------------------------------------------- the loss of a labelled forward


def test_labelled_forward_returns_the_pilots_loss_and_warns_once_in_training(arch, mode):
    model = copilot_on(arch, mode).train()
    for parameter in pilot_parameters(model):
        parameter.requires_grad_(True)  # a trainable Pilot, so that the loss has a graph to inspect
    with pytest.warns(UserWarning, match="CopilotSFTTrainer"):
        out = model(input_ids=IDS, labels=LABELS)
    torch.testing.assert_close(out.loss, tiny_pilot(arch)(input_ids=IDS, labels=LABELS).loss)
    grads = torch.autograd.grad(out.loss, copilot_parameters(model), allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)  # the documented point: this loss does not train the Copilot
    grads = torch.autograd.grad(out.copilot_loss, copilot_parameters(model), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the loss a custom loop trains it with
    fresh = copilot_on(arch, mode).train()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*CopilotSFTTrainer")
        model(input_ids=IDS, labels=LABELS)  # once only
        fresh(input_ids=IDS, labels=LABELS, copilot_teacher_forcing=False)  # CopilotSFTTrainer's training call
        fresh.eval()(input_ids=IDS, labels=LABELS)  # evaluation
