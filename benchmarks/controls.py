"""The controls the paper lacks: what the Copilot's extra parameters would buy if spent elsewhere.

* (e) **A parameter-matched larger Pilot**: the pretrained Pilot deepened by as many decoder layers as the Copilot
  has, inserted LLaMA-Pro style (each new layer a copy of the one before it with its output maps zeroed, so the
  deeper model starts as exactly the pretrained Pilot); the new layers train fully, the old ones through the same
  LoRA. Its parameter count is the Pilot's plus about the Copilot's.
* (f) **A logit ensemble with a separately fine-tuned small model of the Copilot's size**: a decoder with the
  Copilot's number of layers, initialised from the same Pilot layers the Copilot copies, fine-tuned fully on the
  same data; at inference log p_P + w · log p_S, with w chosen on validation like λ. For an encoder-decoder Pilot
  the small model is a T5 keeping the same encoder and decoder blocks (`small_seq2seq`, `seq2seq_ensemble_generate`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, LogitsProcessor, LogitsProcessorList


def copilot_layer_indices(num_pilot_layers: int, num_copilot_layers: int) -> list[int]:
    """The Pilot layers a default `CopilotConfig(init="pilot_layers")` copies: evenly spaced, first and last."""
    last = num_pilot_layers - 1
    if num_copilot_layers == 1:
        return [0]
    return [round(i * last / (num_copilot_layers - 1)) for i in range(num_copilot_layers)]


def fine_tuned_small_model(settings, train, output_dir, copilot_layers: int, steps_factor: float = 1.0):
    """(f)'s small model, trained: the Pilot layers a default Copilot of `copilot_layers` blocks copies, fine-tuned
    fully and alone on `train` for `steps_factor` × the Pilot's epochs (as many steps as the Copilot it is compared
    with learns for) at the Copilot's learning rate (cosine, 5 % warm-up), seeded as the joint run is. `settings` is
    the demo pipeline's `DemoSettings`. Returns the model and its tokenizer."""
    from tcopilot_peft.demo.pipeline import plain_sft

    torch.manual_seed(settings.seed)
    num_pilot_layers = AutoModelForCausalLM.from_pretrained(settings.model).config.num_hidden_layers
    small = small_model(settings.model, copilot_layer_indices(num_pilot_layers, copilot_layers))
    small, tokenizer, _ = plain_sft(
        settings,
        train,
        output_dir,
        max_steps=-1,
        model=small,
        num_train_epochs=settings.epochs * steps_factor,
        learning_rate=settings.copilot_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
    )
    return small, tokenizer


def _renumber_layers(model) -> None:
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(model.model.layers)
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [model.config.layer_types[0]] * len(model.model.layers)


def small_model(pilot_dir: str, layer_indices: list[int]):
    """A Pilot-family decoder keeping only `layer_indices` of the pretrained Pilot (with its embeddings and head)."""
    model = AutoModelForCausalLM.from_pretrained(pilot_dir, dtype=torch.float32)
    model.model.layers = nn.ModuleList([model.model.layers[i] for i in layer_indices])
    _renumber_layers(model)
    return model


def expanded_pilot(pilot_dir: str, extra_layers: int) -> tuple[nn.Module, list[int]]:
    """The pretrained Pilot with `extra_layers` identity-initialised decoder layers spread through its depth.

    Returns the model and the indices of the new layers (to be trained fully).
    """
    model = AutoModelForCausalLM.from_pretrained(pilot_dir, dtype=torch.float32)
    layers = list(model.model.layers)
    after = set(copilot_layer_indices(len(layers), extra_layers))
    expanded, new = [], []
    for index, layer in enumerate(layers):
        expanded.append(layer)
        if index in after:
            twin = copy.deepcopy(layer)
            # Zero output maps: the residual stream passes through unchanged, so the model starts as the Pilot.
            nn.init.zeros_(twin.self_attn.o_proj.weight)
            nn.init.zeros_(twin.mlp.down_proj.weight)
            new.append(len(expanded))
            expanded.append(twin)
    model.model.layers = nn.ModuleList(expanded)
    _renumber_layers(model)
    return model, new


class LogitEnsemble(LogitsProcessor):
    """Adds `weight · log p_S` of a second causal LM to the scores `generate()` is about to pick from.

    The second model is run on the whole sequence at each step (no cache: it is small and this is a control, not a
    product path). Left padding is read from `pad_token_id`.
    """

    def __init__(self, model: nn.Module, weight: float, pad_token_id: int):
        self.model = model
        self.weight = weight
        self.pad_token_id = pad_token_id

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = (input_ids != self.pad_token_id).long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        return torch.log_softmax(scores.float(), -1) + self.weight * torch.log_softmax(logits.float(), -1)


@torch.inference_mode()
def ensemble_generate(pilot, small, weight: float, tokenizer, prompts: list[str], max_new_tokens: int, batch_size=64):
    """Greedy completions of the logit ensemble log p_P + weight · log p_S."""
    tokenizer.padding_side = "left"
    processors = LogitsProcessorList([LogitEnsemble(small.eval(), weight, tokenizer.pad_token_id)])
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        out = pilot.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=processors,
        )
        completions += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions


def small_seq2seq(pilot_dir: str, layer_indices: list[int]) -> nn.Module:
    """The pretrained T5 Pilot keeping only `layer_indices` of its encoder and of its decoder blocks."""
    model = AutoModelForSeq2SeqLM.from_pretrained(pilot_dir)
    for stack in (model.encoder, model.decoder):
        stack.block = nn.ModuleList([stack.block[i] for i in layer_indices])
        for index, block in enumerate(stack.block):
            block.layer[0].SelfAttention.layer_idx = index
            if stack.is_decoder:
                block.layer[1].EncDecAttention.layer_idx = index
    model.config.num_layers = model.config.num_decoder_layers = len(layer_indices)
    return model


class Seq2SeqLogitEnsemble(LogitsProcessor):
    """Adds `weight · log p_S` of a second seq2seq model, run on the same decoder prefix with its own encoding of the
    batch's source (no cache: it is small and this is a control)."""

    def __init__(self, model: nn.Module, weight: float, encoder_outputs, attention_mask: torch.Tensor):
        self.model, self.weight = model, weight
        self.encoder_outputs, self.attention_mask = encoder_outputs, attention_mask

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = self.model(
            encoder_outputs=self.encoder_outputs, attention_mask=self.attention_mask, decoder_input_ids=input_ids
        ).logits[:, -1]
        return torch.log_softmax(scores.float(), -1) + self.weight * torch.log_softmax(logits.float(), -1)


@torch.inference_mode()
def seq2seq_ensemble_generate(pilot, small, weight: float, tokenizer, prompts: list[str], budget: int, batch_size=64):
    """Greedy completions of the encoder-decoder logit ensemble log p_P + weight · log p_S."""
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        encoded = small.get_encoder()(**batch)
        processors = LogitsProcessorList([Seq2SeqLogitEnsemble(small, weight, encoded, batch["attention_mask"])])
        out = pilot.generate(
            **batch,
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=processors,
        )
        completions += tokenizer.batch_decode(out, skip_special_tokens=True)
    return completions
