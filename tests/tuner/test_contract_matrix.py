"""PEFT's adapter contracts as one matrix, in the manner of PEFT's own `PeftCommonTester`: every supported Pilot family
× {plain, LoRA-tuned} Pilot × {prob, logit} fusion keeps the promises a PEFT user relies on."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tcopilot_peft import CopilotConfig
from tests.conftest import VOCAB, randomise_copilot, tiny_pilot, tiny_t5


FAMILIES = ["llama", "qwen2", "mistral", "t5"]
FORMS = ["plain", "lora"]
MODES = ["prob", "logit"]
IDS = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
STRATEGIES = [{}, {"num_beams": 3}, {"do_sample": True, "top_k": 4}, {"num_beams": 2, "num_return_sequences": 2}]
matrix = pytest.mark.parametrize(
    ("family", "form", "mode"), [(f, p, m) for f in FAMILIES for p in FORMS for m in MODES]
)


def pilot(family: str, form: str, seed: int = 0):
    model = tiny_t5(seed=seed) if family == "t5" else tiny_pilot(family, seed=seed)
    if form == "lora":
        targets = ["q", "v"] if family == "t5" else ["q_proj", "v_proj"]
        model = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.3, generator=torch.Generator().manual_seed(seed))
    return model


def copilot(family, form, mode, adapter_name="default"):
    model = get_peft_model(pilot(family, form), CopilotConfig(fusion_mode=mode), adapter_name=adapter_name)
    randomise_copilot(model)
    return model.eval()


def logits(model, family):
    if family == "t5":
        return model(input_ids=IDS, decoder_input_ids=IDS[:, :4]).logits
    return model(input_ids=IDS).logits


@matrix
def test_round_trip_under_another_adapter_name_with_safetensors_only(family, form, mode, tmp_path):
    model = copilot(family, form, mode, adapter_name="mine")
    reference = logits(model, family)
    model.save_pretrained(tmp_path)
    saved = {p.name for p in (tmp_path / "mine").iterdir()}
    assert "adapter_model.safetensors" in saved and not any(name.endswith(".bin") for name in saved)
    loaded = PeftModel.from_pretrained(pilot(family, "plain"), tmp_path / "mine", adapter_name="mine").eval()
    assert loaded.active_adapter == "mine"
    torch.testing.assert_close(logits(loaded, family), reference, atol=1e-4, rtol=1e-4)


@matrix
def test_two_copilots_switch_with_set_adapter(family, form, mode):
    model = copilot(family, form, mode)
    first = logits(model, family)
    model.add_adapter("second", CopilotConfig(fusion_mode=mode))
    model.base_model.copilot_model["second"].output_proj.weight.data.normal_(std=0.5)
    model.set_adapter("second")
    second = logits(model, family)
    assert not torch.allclose(first, second)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, family), first)


@matrix
def test_only_the_copilot_and_lora_are_trainable_and_counted(family, form, mode):
    model = copilot(family, form, mode)
    trainable, total = model.get_nb_trainable_parameters()
    copilot_size = sum(p.numel() for p in model.base_model.copilot_model.parameters())
    lora_size = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable == copilot_size + lora_size and total > trainable


@matrix
def test_every_generation_strategy_runs_fused(family, form, mode):
    model = copilot(family, form, mode)
    for strategy in STRATEGIES:
        torch.manual_seed(0)
        out = model.generate(input_ids=IDS, max_new_tokens=4, pad_token_id=0, **strategy)
        assert out.shape[0] == IDS.shape[0] * strategy.get("num_return_sequences", 1)


@matrix
def test_a_bf16_model_runs_fused(family, form, mode):
    model = copilot(family, form, mode).to(torch.bfloat16)
    assert torch.isfinite(logits(model, family).float()).all()


@matrix
def test_a_trainable_load_trains_further(family, form, mode, tmp_path):
    copilot(family, form, mode).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(pilot(family, "plain"), tmp_path, is_trainable=True)
    network = loaded.base_model.active_network
    assert all(p.requires_grad for p in network.parameters())
    labels = IDS[:, :4].contiguous() if family == "t5" else IDS  # T5 views its labels: they must be contiguous
    out = loaded(input_ids=IDS, labels=labels)
    out.copilot_loss.backward()
    assert network.input_proj.weight.grad is not None and network.input_proj.weight.grad.abs().sum() > 0
