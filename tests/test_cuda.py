"""The fused model on a CUDA device (skipped without one): cached == uncached generation, fused logits as on the CPU,
and a CopilotSFTTrainer step. Run with `pytest -m cuda` on a machine with a GPU."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import get_peft_model

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tests.conftest import VOCAB, arithmetic_dataset, char_tokenizer, randomise_copilot, tiny_pilot


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

IDS = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


def fused_model(**config):
    """A tiny Pilot with a Copilot whose corrections are large enough to change the generated tokens."""
    model = get_peft_model(tiny_pilot(), CopilotConfig(**config))
    randomise_copilot(model)
    return model.eval()


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("mode", ["logit", "prob"])
def test_cached_and_uncached_generation_agree_on_cuda(mode, num_beams):
    model = fused_model(fusion_mode=mode).to("cuda")
    ids = IDS.to("cuda")
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, num_beams=num_beams)
    cached = model.generate(input_ids=ids, **kwargs)
    assert torch.equal(cached, model.generate(input_ids=ids, use_cache=False, **kwargs))
    with model.disable_adapter():
        assert not torch.equal(cached, model.generate(input_ids=ids, **kwargs))  # the Copilot was in play


def test_fused_logits_on_cuda_match_the_cpu():
    model = fused_model()
    with torch.no_grad():
        reference = model(input_ids=IDS, copilot_prompt_length=3).logits
    for dtype, tolerance in ((torch.float32, 1e-3), (torch.bfloat16, 5e-2)):
        on_cuda = copy.deepcopy(model).to("cuda", dtype=dtype)
        with torch.no_grad():
            logits = on_cuda(input_ids=IDS.to("cuda"), copilot_prompt_length=3).logits.float().cpu()
        error = ((logits - reference).abs().max() / reference.abs().max()).item()
        assert error <= tolerance, (dtype, error)


def test_one_copilot_sft_step_on_cuda(tmp_path):
    tokenizer = char_tokenizer()
    model = get_peft_model(tiny_pilot(vocab_size=len(tokenizer)).to("cuda"), CopilotConfig())
    copilot = model.base_model.copilot_model["default"]
    before = {name: p.detach().clone() for name, p in copilot.named_parameters()}
    args = CopilotSFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        bf16=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
    )
    trainer = CopilotSFTTrainer(model=model, args=args, train_dataset=arithmetic_dataset(), processing_class=tokenizer)
    trainer.train()
    assert all(p.device.type == "cuda" for p in copilot.parameters())
    assert trainer.mistake_log.total_bytes > 0
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    assert any(not torch.equal(p.detach(), before[name]) for name, p in copilot.named_parameters())
