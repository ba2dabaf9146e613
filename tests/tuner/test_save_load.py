"""Saving, loading and transferring a Copilot adapter; LoRA-tuned and quantized Pilots."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from tcopilot_peft import CopilotConfig
from tests.conftest import QUANTIZABLE_WIDTH, randomise_copilot, tiny_pilot


def trained_looking_copilot(pilot, **config):
    model = get_peft_model(pilot, CopilotConfig(**config))
    randomise_copilot(model)
    return model.eval()


IDS = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))


def test_save_writes_safetensors_with_only_copilot_weights(tmp_path):
    model = trained_looking_copilot(tiny_pilot())
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert weights and all("copilot_" in key for key in weights)
    assert not any(".default." in key for key in weights)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("copilot_" in n for n in trainable)
    assert sum(w.numel() for w in weights.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_round_trip_restores_identical_fused_logits_and_generation(tmp_path):
    model = trained_looking_copilot(tiny_pilot(), fusion_lambda=0.8)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=6, do_sample=False, num_beams=4)
    assert torch.equal(loaded.generate(input_ids=IDS, **kwargs), model.generate(input_ids=IDS, **kwargs))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_loading_as_trainable_keeps_only_the_copilot_trainable(tmp_path):
    trained_looking_copilot(tiny_pilot()).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path, is_trainable=True)
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all("copilot_model" in n for n in trainable)


def test_transfer_to_a_sibling_pilot_corrects_that_pilot(tmp_path):
    trained_looking_copilot(tiny_pilot(seed=0)).save_pretrained(tmp_path)
    sibling = tiny_pilot(seed=7)
    reference = tiny_pilot(seed=7)(IDS).logits
    transferred = PeftModel.from_pretrained(sibling, tmp_path).eval()
    out = transferred(input_ids=IDS)
    torch.testing.assert_close(out.pilot_logits, reference)
    assert not torch.allclose(out.logits, reference)
    with transferred.disable_adapter():
        torch.testing.assert_close(transferred(input_ids=IDS).logits, reference)


@pytest.mark.parametrize(
    ("sibling_kwargs", "values"),
    [({"vocab_size": 120}, ("97", "120")), ({"hidden_size": 48}, ("32", "48"))],
)
def test_loading_onto_a_mismatched_pilot_names_both_values(tmp_path, sibling_kwargs, values):
    trained_looking_copilot(tiny_pilot()).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        PeftModel.from_pretrained(tiny_pilot(**sibling_kwargs), tmp_path)
    assert all(value in str(error.value) for value in values)


def test_missing_adapter_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftModel.from_pretrained(tiny_pilot(), tmp_path / "nothing-here")


def test_corrupt_adapter_file_is_refused(tmp_path):
    trained_looking_copilot(tiny_pilot()).save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    with pytest.raises(Exception, match="(?i)safetensor|header|deserializ"):
        PeftModel.from_pretrained(tiny_pilot(), tmp_path)


def test_incomplete_adapter_file_names_the_missing_weights(tmp_path):
    from safetensors.torch import save_file

    trained_looking_copilot(tiny_pilot()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    weights.pop(next(k for k in weights if "output_proj" in k))
    save_file(weights, tmp_path / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="missing 1 of"):
        PeftModel.from_pretrained(tiny_pilot(), tmp_path)


def lora_pilot(seed=0):
    pilot = get_peft_model(tiny_pilot(seed=seed), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed + 3)
    with torch.no_grad():
        for name, parameter in pilot.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # a LoRA that has moved away from its zero init
    return pilot


def test_lora_tuned_pilot_keeps_lora_and_saves_it_with_the_copilot(tmp_path):
    pilot = lora_pilot()
    lora_logits = pilot(input_ids=IDS).logits.detach()
    model = trained_looking_copilot(pilot)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("copilot_" in n for n in trainable)
    assert all("lora_" in n or "copilot_" in n for n in trainable)
    with model.disable_adapter():  # the Pilot alone is the LoRA-tuned Pilot, not the bare base model
        torch.testing.assert_close(model(input_ids=IDS).logits, lora_logits)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["pilot_lora_config"]["r"] == 4
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)
    with loaded.disable_adapter():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, lora_logits)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_pilot(bits, tmp_path):
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    tiny_pilot(hidden_size=QUANTIZABLE_WIDTH).save_pretrained(tmp_path / "pilot")
    quantization = BitsAndBytesConfig(load_in_4bit=True) if bits == 4 else BitsAndBytesConfig(load_in_8bit=True)
    quantized = LlamaForCausalLM.from_pretrained(tmp_path / "pilot", quantization_config=quantization).eval()
    with torch.no_grad():  # the inference path (bitsandbytes computes differently when its input needs a gradient)
        reference_logits = quantized(IDS).logits
    model = trained_looking_copilot(quantized)
    out = model(input_ids=IDS)
    torch.testing.assert_close(out.pilot_logits, reference_logits)
    assert not torch.allclose(out.logits, reference_logits)
    cached = model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False)
    assert torch.equal(cached, model.generate(input_ids=IDS, max_new_tokens=5, do_sample=False, use_cache=False))
    # The Copilot's blocks were initialised from the dequantized Pilot layers, not left random.
    block_q = model.base_model.copilot_model["default"].layers[0].attn.q_proj.weight
    original_q = tiny_pilot(hidden_size=QUANTIZABLE_WIDTH).model.layers[0].self_attn.q_proj.weight
    relative_error = (block_q - original_q).norm() / original_q.norm()
    assert relative_error < (0.15 if bits == 4 else 0.02)


def test_qlora_pilot_round_trip(tmp_path):
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    tiny_pilot(hidden_size=QUANTIZABLE_WIDTH).save_pretrained(tmp_path / "pilot")

    def load_quantized():
        return LlamaForCausalLM.from_pretrained(
            tmp_path / "pilot", quantization_config=BitsAndBytesConfig(load_in_4bit=True)
        ).eval()

    qlora = get_peft_model(load_quantized(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in qlora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    model = trained_looking_copilot(qlora)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load_quantized(), tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_an_adapter_saved_before_copilot_loss_existed_loads_as_the_paper_objective(tmp_path):
    """Every Copilot saved before the field existed was trained by regression onto ℓ; it must not be relabelled
    (further training would switch its loss) and keeps its saved fusion."""
    trained_looking_copilot(tiny_pilot(), copilot_loss="rmse").save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    del saved["copilot_loss"]
    config_path.write_text(json.dumps(saved))
    config = PeftModel.from_pretrained(tiny_pilot(), tmp_path).peft_config["default"]
    assert (config.copilot_loss, config.fusion_mode, config.inference_feed) == ("rmse", "prob", "copilot")


def test_a_lora_tuned_pilots_lora_survives_a_copilot_saved_under_another_name(tmp_path):
    """The LoRA layers are recreated under the LoRA adapter's own name, whatever the Copilot's (they were dropped
    silently when both took the Copilot's name)."""
    lora = get_peft_model(tiny_pilot(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    model = get_peft_model(lora, CopilotConfig(), adapter_name="mine").eval()
    ids = torch.randint(3, 97, (2, 6))
    with model.disable_adapter():
        pilot_logits = model(input_ids=ids).logits  # the LoRA-tuned Pilot alone
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path / "mine", adapter_name="mine").eval()
    with loaded.disable_adapter():
        torch.testing.assert_close(loaded(input_ids=ids).logits, pilot_logits)


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_a_16_bit_pilots_copilot_is_saved_in_its_dtype_and_loads_back_into_float32(tmp_path, low_cpu_mem_usage):
    model = trained_looking_copilot(tiny_pilot().to(torch.bfloat16))
    running = {n: p.dtype for n, p in model.named_parameters() if "copilot_" in n}
    assert set(running.values()) == {torch.float32}
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert weights and {w.dtype for w in weights.values()} == {torch.bfloat16}
    loaded = PeftModel.from_pretrained(
        tiny_pilot().to(torch.bfloat16), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage
    ).eval()
    assert {n: p.dtype for n, p in loaded.named_parameters() if "copilot_" in n} == running
    with torch.no_grad():
        for p in model.base_model.copilot_model.parameters():  # the in-memory model, rounded as the file was
            p.copy_(p.to(torch.bfloat16))
        assert torch.equal(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_a_float32_pilots_copilot_is_saved_in_float32(tmp_path):
    trained_looking_copilot(tiny_pilot()).save_pretrained(tmp_path)
    assert {w.dtype for w in load_file(tmp_path / "adapter_model.safetensors").values()} == {torch.float32}
