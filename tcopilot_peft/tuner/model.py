"""`CopilotModel`: the PEFT tuner that wraps a Pilot with a Transformer Copilot and fuses its corrections.

The tuner does not inject layers into the Pilot. It owns the Copilot network (`copilot_model[adapter_name]`) and
overrides `forward` and `generate`: the Pilot runs as usual (with `output_hidden_states=True`), the Copilot reads the
Pilot's embeddings, layer-pooled hidden states and errors, and its correction is fused into the returned logits.
Fusion therefore lives in the forward pass, so every `generate()` strategy and every logits reader (lm-eval's
log-likelihood scoring) sees fused logits.

What the Copilot reads at position t (its input is the Pilot's error at position t − 1, the paper's shifted ℓ_{<i}):

* with `labels` (teacher forcing, training): ℓ_{t−1} = onehot(y_{t−1}) − p̂_{t−1} where that target exists, else 0;
* without labels (inference): 0 on prompt positions (the paper's Copilot only runs over the response), and on
  generated positions either its own previous output f_{t−1} (Algorithm 2, `inference_feed="copilot"`) or
  onehot(ŷ_{t−1}) − p̂_{t−1} for the token actually generated (`inference_feed="pilot_error"`).

Inside `generate()` the prompt is the input given to `generate`. A plain forward without labels treats its whole input
as prompt (so its last position gives exactly what generation uses for the first new token); to score a given
continuation with fused logits, pass `copilot_prompt_length` (an int, or one length per row) and the positions from
there on are treated as generated.

The Copilot's KV cache lives in extra layer slots of the Pilot's own `Cache` (after the Pilot's layers), so
generate's beam reordering, batch expansion and cropping apply to both for free.
"""

from __future__ import annotations

import copy
import functools
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import PeftType
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..fusion import IGNORE_INDEX, PilotPrediction, copilot_loss, error_embedding, fuse_logits, shift_targets
from .config import CopilotConfig
from .network import CopilotNetwork, CopilotNetworkConfig


SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
# The Copilot is a separate network reading the Pilot's states and errors; there is no weight delta to fold in.
_CANNOT_MERGE = "A Copilot cannot be merged into the Pilot's weights; use `unload()` to get the Pilot back."
_PILOT_LOSS_WARNING = (
    "The `loss` of a Copilot model given `labels` is the Pilot's own cross-entropy: no gradient from it reaches the "
    "Copilot, so training on it leaves the Copilot unchanged. Train the Copilot with `CopilotSFTTrainer`, or "
    "backpropagate `outputs.copilot_loss` in a custom loop."
)
# transformers renamed `past_key_values` to `cache` (5.2x); read and write whichever this version uses.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class CopilotCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` whose `logits` are fused, plus what training needs.

    Args:
        loss: the Pilot's own cross-entropy (when `labels` were given); no gradient from it reaches the Copilot.
        logits: fused logits.
        pilot_logits: the Pilot's logits.
        copilot_logits: the Copilot's correction f.
        copilot_loss: the Copilot's training loss, its config's `copilot_loss` (when `labels` were given; no gradient
            reaches the Pilot).
        copilot_memory_x, copilot_memory_h: detached X̃ and layer-pooled Pilot states, the Mistake Log's inputs.
    """

    pilot_logits: torch.Tensor | None = None
    copilot_logits: torch.Tensor | None = None
    copilot_loss: torch.Tensor | None = None
    copilot_memory_x: torch.Tensor | None = None
    copilot_memory_h: torch.Tensor | None = None


class CopilotLayer(nn.Module, BaseTunerLayer):
    """Holds the Copilot networks, one per adapter name, so PEFT's adapter bookkeeping (status, enable/disable,
    `requires_grad` per adapter, state-dict selection) treats the Copilot like any other tuner layer."""

    adapter_layer_names = ("copilot_model",)

    def __init__(self) -> None:
        super().__init__()
        self.copilot_model = nn.ModuleDict()

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """A no-op: there is no base layer to follow (PEFT's version would recurse looking for one). The tuner, which
        knows the Pilot, places the Copilot instead (`CopilotModel._move_adapter_to_device_of_base_layer`)."""


class CopilotModel(BaseTuner):
    """PEFT tuner for Transformer Copilot; created by `get_peft_model(pilot, CopilotConfig(...))`.

    `pilot` may be a transformers causal LM (full precision or bitsandbytes 4/8-bit) or a `PeftModel` carrying LoRA
    adapters (a LoRA-tuned Pilot): its LoRA layers stay in place, keep training, and are saved and loaded with the
    Copilot.
    """

    prefix: str = "copilot_"
    tuner_layer_cls = BaseTunerLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        configs = config if isinstance(config, dict) else {adapter_name: config}
        if isinstance(model, PeftModel):
            model = _unwrap_lora_pilot(model, configs[adapter_name])
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ------------------------------------------------------------------ PEFT tuner interface

    def _pre_injection_hook(self, model: nn.Module, config: CopilotConfig, adapter_name: str) -> None:
        self.copilot_layer = CopilotLayer()
        self._generation_prompt_length: int | None = None
        self._gram_cache: tuple[tuple, torch.Tensor] | None = None
        self._warned_pilot_loss = False

    def _prepare_adapter_config(self, peft_config: CopilotConfig, model_config: dict) -> CopilotConfig:
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str) -> bool:
        return False  # the Copilot is a side network; no Pilot module is replaced

    def _create_and_replace(self, *args, **kwargs) -> None:
        raise RuntimeError("CopilotModel does not replace Pilot modules.")

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict=None,
    ) -> None:
        config: CopilotConfig = self.peft_config[adapter_name]
        _check_pilot(model, config)
        if config.pilot_lora_config and not any(isinstance(m, LoraLayer) for m in model.modules()):
            # A Copilot saved from a LoRA-tuned Pilot carries that Pilot's LoRA weights; recreate layers to hold them.
            lora_fields = {k: v for k, v in config.pilot_lora_config.items() if k in LoraConfig.__dataclass_fields__}
            lora_fields.pop("peft_type", None)
            inject_adapter_in_model(LoraConfig(**lora_fields), model, adapter_name=adapter_name)

        source = _load_init_source(model, config)
        architecture = _resolve_architecture(model, config, source)
        network = CopilotNetwork(architecture)
        if not config.inference_mode:
            # When loading a saved adapter the weights are overwritten right after, so copying is skipped.
            _initialise_from_source(network, model, config, source)
        embedding = model.get_input_embeddings().weight
        # Under PEFT's `low_cpu_mem_usage` the network is built on `meta`: loading then assigns the saved tensors as
        # its weights, and `_move_adapter_to_device_of_base_layer` puts them beside the Pilot.
        if not any(p.is_meta for p in network.parameters()):
            network.to(device=embedding.device)
        if not autocast_adapter_dtype:
            network.to(dtype=embedding.dtype)
        self.copilot_model[adapter_name] = network
        self.copilot_layer.set_adapter(self.active_adapters)

        text_config = model.config.get_text_config()
        config.pilot_model_type = text_config.model_type
        config.pilot_vocab_size = model.get_output_embeddings().weight.shape[0]
        config.pilot_hidden_size = text_config.hidden_size
        config.num_layers = architecture.num_layers
        config.copilot_architecture = architecture.to_dict()
        self._mark_only_adapters_as_trainable(model)
        if config.inference_mode:
            network.requires_grad_(False)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        marker = f"copilot_model.{adapter_name}."
        if marker in key:
            return key.replace(marker, "copilot_model.")
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        expected = [k for k in model.state_dict() if f"copilot_model.{adapter_name}." in k]
        missing = [k for k in expected if k not in remapped]
        if missing:
            raise ValueError(
                f"The Copilot adapter file is missing {len(missing)} of {len(expected)} Copilot weights "
                f"(first: {missing[0]!r}); it is incomplete or was saved from a different Copilot architecture."
            )
        return remapped

    @property
    def copilot_model(self) -> nn.ModuleDict:
        return self.copilot_layer.copilot_model

    def disable_adapter_layers(self) -> None:
        """Turn the Copilot off: outputs are the Pilot's own (a LoRA-tuned Pilot keeps its LoRA)."""
        self.copilot_layer.enable_adapters(False)

    def enable_adapter_layers(self) -> None:
        self.copilot_layer.enable_adapters(True)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        if isinstance(adapter_name, list):
            if len(adapter_name) != 1:
                raise ValueError("Only one Copilot adapter can be active at a time.")
            adapter_name = adapter_name[0]
        if adapter_name not in self.copilot_model:
            raise ValueError(f"Unknown Copilot adapter {adapter_name!r}; known: {list(self.copilot_model)}.")
        self.active_adapter = adapter_name
        self.copilot_layer.set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete a Copilot adapter. If it was active, the first remaining one (by name) becomes active, as in PEFT;
        once the last one is gone no adapter is active (`active_adapters == []`) and the model runs the Pilot alone."""
        if adapter_name not in self.copilot_model:
            raise ValueError(f"Unknown Copilot adapter {adapter_name!r}.")
        del self.peft_config[adapter_name]
        self.copilot_layer.delete_adapter(adapter_name)
        remaining = self.copilot_layer.active_adapters
        self.active_adapter = remaining[0] if remaining else []

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Called by PEFT after a `low_cpu_mem_usage` load assigned the saved tensors (on the loading device) as the
        Copilot's weights: the Copilot must sit beside the Pilot."""
        if adapter_name in self.copilot_model:
            target = device if device is not None else self.model.get_input_embeddings().weight.device
            self.copilot_model[adapter_name].to(device=target)

    def merge_adapter(self, *args, **kwargs) -> None:
        """Refused, like `merge_and_unload`: there is nothing to merge, and doing nothing silently would mislead."""
        raise ValueError(_CANNOT_MERGE)

    def merge_and_unload(self, *args, **kwargs):
        raise ValueError(_CANNOT_MERGE)

    def unload(self) -> nn.Module:
        """The Pilot with no trace of the Copilot (as PEFT's `unload`): the tuner's `peft_config` is taken off it.
        A LoRA-tuned Pilot comes back with its LoRA layers in place."""
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    # ------------------------------------------------------------------ small helpers

    @property
    def active_config(self) -> CopilotConfig:
        return self.peft_config[self.active_adapter]

    @property
    def active_network(self) -> CopilotNetwork:
        return self.copilot_model[self.active_adapter]

    def _copilot_active(self) -> bool:
        return (
            not self.copilot_layer.disable_adapters
            and isinstance(self.active_adapter, str)
            and self.active_adapter in self.copilot_model
        )

    def _embedding_weight(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight.detach()

    def _head_weight(self) -> torch.Tensor:
        weight = self.model.get_output_embeddings().weight
        if not weight.is_floating_point():
            raise ValueError("The Copilot reuses the Pilot's LM head, which must not be quantized.")
        return weight.detach()

    def copilot_head(self, u: torch.Tensor) -> torch.Tensor:
        """The correction f = W_head · u through the Pilot's frozen LM head (no gradient reaches the head)."""
        weight = self._head_weight()
        return torch.nn.functional.linear(u.to(weight.dtype), weight).float()

    def _gram(self) -> torch.Tensor:
        """G = W_headᵀ E (d_P × d_P), so f·E = u·G costs d² instead of |V|·d. Recomputed when either weight changes."""
        head, embedding = self._head_weight(), self._embedding_weight()
        key = (head.data_ptr(), head._version, embedding.data_ptr(), embedding._version, head.device)
        if self._gram_cache is None or self._gram_cache[0] != key:
            # Built outside inference mode so the cached matrix stays usable by later autograd-tracked calls.
            with torch.inference_mode(False), torch.no_grad():
                self._gram_cache = (key, head.float().T @ embedding.float())
        return self._gram_cache[1]

    def _pilot_memory(self, hidden_states: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """X̃ (the embedding output) and the mean over the pooled Pilot layers, each layer RMS-normalised first.

        `hidden_states[0]` is the embedding output; the last entry is post-final-norm while the others are raw
        residual streams, so every layer is normalised before averaging.
        """
        layers = hidden_states[1:]
        chosen = self.active_config.pooled_layers
        stacked = torch.stack([layers[i] for i in chosen] if chosen else list(layers)).float()
        stacked = stacked * torch.rsqrt(stacked.pow(2).mean(-1, keepdim=True) + 1e-6)
        return hidden_states[0].detach(), stacked.mean(0).detach()

    # ------------------------------------------------------------------ the Copilot on logged or fresh errors

    def copilot_teacher_forced(
        self,
        memory_x: torch.Tensor,
        memory_h: torch.Tensor,
        key_valid: torch.Tensor,
        targets: torch.Tensor,
        prediction: PilotPrediction,
        loss_kind: str | None = None,
        full_correction: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the Copilot teacher-forced on the Pilot's errors and return (f, loss).

        This is the Copilot's training computation, shared by the fused forward (fresh errors, dense p̂) and the
        Mistake Log replay (logged errors, top-k p̂). `targets[:, t]` is the gold token after position t (-100 where
        there is none); the Copilot's input at t is the error at t − 1. p̂ is given per position or packed at the
        target positions only (row-major), which is all the loss and the inputs need. `loss_kind` defaults to the
        active adapter's `copilot_loss`.

        Returns:
            f at the target positions (`(N, |V|)`), or at every position (`(B, T, |V|)`) with `full_correction`;
            and the loss averaged over target positions.
        """
        valid = targets != IGNORE_INDEX
        gold = targets[valid]
        prediction = prediction.at(valid)
        errors = torch.zeros(*targets.shape, memory_x.shape[-1], device=memory_x.device)
        errors[valid] = error_embedding(self._embedding_weight(), gold, prediction)
        inputs = torch.cat([torch.zeros_like(errors[:, :1]), errors[:, :-1]], dim=1)
        u = self.active_network(inputs, memory_x, memory_h, key_valid)
        if full_correction:
            correction = self.copilot_head(u)
            at_targets = correction[valid]
        else:
            correction = at_targets = self.copilot_head(u[valid])  # the |V|-sized head only where the loss is
        kind = loss_kind or self.active_config.copilot_loss
        return correction, copilot_loss(at_targets, gold, prediction, kind=kind)

    def copilot_replay(self, batch, loss_kind: str | None = None) -> torch.Tensor:
        """The Copilot's loss on a batch rebuilt from the Mistake Log (`MistakeLogBatch`); X̃ is re-embedded."""
        device = self._embedding_weight().device
        batch = batch.to(device)
        with torch.no_grad():
            memory_x = self.model.get_input_embeddings()(batch.input_ids)
        _, loss = self.copilot_teacher_forced(
            memory_x, batch.hidden, batch.attention_mask, batch.targets, batch.prediction(), loss_kind=loss_kind
        )
        return loss

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        copilot_prompt_length: int | torch.Tensor | None = None,
        copilot_teacher_forcing: bool = True,
        copilot_components: bool = True,
        **kwargs: Any,
    ):
        """Fused forward. Arguments are the Pilot's, plus the ones below.

        With `labels`, `loss` is the Pilot's own cross-entropy (on the Pilot's logits, not the fused ones), so a plain
        training loop on it can train the Pilot but never the Copilot; a warning says so once when this happens in
        training mode. The Copilot trains with `CopilotSFTTrainer` (Mistake Log, own optimiser), or in a custom loop
        on `copilot_loss`, its regression loss against the Pilot's errors.

        Args:
            copilot_prompt_length (`int` or `torch.LongTensor`, *optional*):
                Without labels: positions from this index on (per row, if a tensor) are treated as generated, so the
                Copilot reads its own previous outputs there, exactly as during `generate()`. Use it to score a given
                continuation with fused logits. Unset, the whole input is prompt.
            copilot_teacher_forcing (`bool`, defaults to `True`):
                With labels: run the Copilot teacher-forced on ℓ. `False` returns the Pilot's logits, loss and the
                Mistake Log inputs only (the trainer then runs the Copilot on entries sampled from the log).
            copilot_components (`bool`, defaults to `True`):
                Also return the Pilot's logits and the Copilot's correction separately. `generate()` turns this off:
                logit-space fusion is linear, z + λ·W·u = W·(h + λ·u), so the fused logits then take one LM-head
                pass instead of two.
        """
        for key in ("output_attentions", "output_hidden_states", "return_dict"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        if not self._copilot_active():
            return self._run_pilot(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                labels=labels,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        return self._fused_forward(
            input_ids,
            attention_mask,
            inputs_embeds,
            labels,
            logits_to_keep,
            copilot_prompt_length,
            copilot_teacher_forcing,
            copilot_components,
            **kwargs,
        )

    def _run_pilot(self, **kwargs):
        return self.model(**kwargs)

    def _fused_forward(
        self,
        input_ids,
        attention_mask,
        inputs_embeds,
        labels,
        logits_to_keep,
        prompt_length,
        teacher_forcing,
        components,
        **kw,
    ):
        """The Pilot's decoder, the Copilot on its states, then the LM head for both (`_logits_and_correction`).

        This mirrors the Pilot's own causal-LM forward (decoder → LM head on the kept positions → loss), which is the
        same for every supported family, so the Pilot's logits and loss are exactly its own.
        """
        keep_hidden = kw.pop("output_hidden_states", False)
        decoder_out = self.model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=True,
            **kw,
        )
        memory_x, memory_h = self._pilot_memory(decoder_out.hidden_states)
        batch, length = memory_x.shape[:2]
        cache = decoder_out.get(_CACHE_FIELD)
        slots = self._copilot_slots(cache) if cache is not None else None
        past = cache.layers[slots[1]].get_seq_length() if slots is not None else 0
        key_valid = _key_valid(attention_mask, batch, past + length, memory_x.device)
        hidden = decoder_out.last_hidden_state

        if labels is not None:
            if past:
                raise ValueError("The teacher-forced Copilot forward (with labels) cannot continue from a KV cache.")
            pilot_logits, correction, loss, copilot_loss_value = self._labelled_outputs(
                hidden, memory_x, memory_h, key_valid, labels, logits_to_keep, teacher_forcing, kw
            )
            fused = self._fuse(pilot_logits, correction)
        else:
            loss = copilot_loss_value = None
            fused, pilot_logits, correction = self._inference_outputs(
                hidden, memory_x, memory_h, key_valid, logits_to_keep, prompt_length, cache, slots, past, components
            )
        return CopilotCausalLMOutput(
            loss=loss,
            logits=fused,
            **{_CACHE_FIELD: cache},
            hidden_states=decoder_out.hidden_states if keep_hidden else None,
            attentions=decoder_out.get("attentions"),
            pilot_logits=pilot_logits,
            copilot_logits=correction,
            copilot_loss=copilot_loss_value,
            copilot_memory_x=memory_x if labels is not None else None,
            copilot_memory_h=memory_h if labels is not None else None,
        )

    def _labelled_outputs(self, hidden, memory_x, memory_h, key_valid, labels, logits_to_keep, teacher_forcing, kw):
        """With labels: (Pilot logits, correction, the Pilot's loss, the Copilot's loss).

        Teacher-forced (evaluation, custom loops) the Copilot runs on the true errors. In the trainer's step
        (`teacher_forcing=False`) the LM head runs only where there is a target, like TRL's own loss, and the Copilot
        is left to the trainer (it learns from the Mistake Log); the Pilot's logits are then packed, one row per
        target position, row-major, and there is no correction.
        """
        targets = shift_targets(labels)
        if not teacher_forcing:
            valid = targets != IGNORE_INDEX
            pilot_logits = self.model.lm_head(hidden[valid])
            loss = _cross_entropy(pilot_logits, targets[valid], kw.get("num_items_in_batch"))
            return pilot_logits, None, loss, None
        self._warn_once_pilot_loss()
        pilot_logits = self.model.lm_head(_keep_positions(hidden, logits_to_keep))
        loss = self.model.loss_function(logits=pilot_logits, labels=labels, vocab_size=pilot_logits.shape[-1], **kw)
        correction, copilot_loss_value = self.copilot_teacher_forced(
            memory_x, memory_h, key_valid, targets, PilotPrediction.from_logits(pilot_logits), full_correction=True
        )
        return pilot_logits, correction, loss, copilot_loss_value

    def _inference_outputs(
        self, hidden, memory_x, memory_h, key_valid, logits_to_keep, prompt_length, cache, slots, past, components
    ):
        """Without labels (Algorithm 2): (fused logits, Pilot logits, correction) at the kept positions; the last two
        are None when logit fusion runs in hidden space, W(h + λu), one LM-head pass (`components=False`)."""
        config = self.active_config
        if prompt_length is None:
            prompt_length = self._generation_prompt_length
        feed_pilot_error = config.inference_feed == "pilot_error"
        # The "pilot_error" feed needs p̂ at every position of the call, so the head then runs everywhere.
        pilot_logits = self.model.lm_head(hidden) if feed_pilot_error else None
        u = self._copilot_inference(
            memory_x, memory_h, key_valid, pilot_logits, prompt_length, cache, slots, past, feed_pilot_error
        )
        hidden_kept, u_kept = _keep_positions(hidden, logits_to_keep), _keep_positions(u, logits_to_keep)
        if feed_pilot_error:
            pilot_logits, correction = _keep_positions(pilot_logits, logits_to_keep), self.copilot_head(u_kept)
        elif not components and config.fusion_mode == "logit" and config.fusion_lambda != 0:
            return self.model.lm_head(hidden_kept + config.fusion_lambda * u_kept.to(hidden_kept.dtype)), None, None
        else:
            pilot_logits, correction = self._logits_and_correction(hidden_kept, u_kept)
        return self._fuse(pilot_logits, correction), pilot_logits, correction

    def _fuse(self, pilot_logits: torch.Tensor, correction: torch.Tensor | None) -> torch.Tensor:
        if correction is None:
            return pilot_logits
        config = self.active_config
        return fuse_logits(pilot_logits, correction, config.fusion_lambda, config.fusion_mode, config.prob_floor)

    def _warn_once_pilot_loss(self) -> None:
        # `CopilotSFTTrainer` trains with `copilot_teacher_forcing=False`, so this is a loop of the user's own.
        if self.training and not self._warned_pilot_loss:
            self._warned_pilot_loss = True
            warnings.warn(_PILOT_LOSS_WARNING, stacklevel=2)

    def _logits_and_correction(self, hidden: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pilot logits W·h and correction W·u. Without autograd they share one pass over the LM head's weight,
        which at small batch costs about as much as one (decoding reads the |V|×d matrix once, not twice)."""
        head = self.model.lm_head
        if torch.is_grad_enabled() and any(p.requires_grad for p in head.parameters()):
            return head(hidden), self.copilot_head(u)
        both = head(torch.cat([hidden, u.to(hidden.dtype)], dim=0))
        return both[: hidden.shape[0]], both[hidden.shape[0] :].float()

    def _copilot_slots(self, cache) -> tuple[int, int]:
        """Cache slots of the Copilot's blocks and of its pending input, after the Pilot's own layers."""
        if not isinstance(cache, DynamicCache):
            raise ValueError(
                f"Copilot generation needs a DynamicCache (the default), got {type(cache).__name__}; "
                "do not pass cache_implementation='static' or another cache type."
            )
        first = self.model.config.get_text_config().num_hidden_layers
        pending = first + self.active_network.config.num_layers
        while len(cache.layers) <= pending:
            cache.layers.append(DynamicLayer())
        return first, pending

    def _copilot_inference(
        self, memory_x, memory_h, key_valid, pilot_logits, prompt_length, cache, slots, past, feed_pilot_error
    ) -> torch.Tensor:
        """Algorithm 2 over the positions of this call; returns u at every position.

        `pending[:, t]` is what the Copilot reads at position t + 1 when that position is generated: u_t·G (= f_t·E,
        its own output) or −p̂_t·E (to which E[ŷ_{t+1}] = X̃_{t+1} is added). It is kept in a cache slot between calls.
        """
        network = self.active_network
        batch, length, width = memory_x.shape
        device = memory_x.device
        positions = past + torch.arange(length, device=device)
        if prompt_length is None:
            generated = torch.zeros(batch, length, dtype=torch.bool, device=device)
        else:
            generated = positions[None, :] >= torch.as_tensor(prompt_length, device=device).reshape(-1, 1)
        generated = generated.unsqueeze(-1)
        previous = torch.zeros(batch, 1, width, device=device)
        if past:
            previous = cache.layers[slots[1]].keys[:, 0, -1:, :].float()
        offset = slots[0] if slots is not None else 0

        if feed_pilot_error:
            # p̂ is detached as in teacher forcing: the Copilot reads the Pilot's errors, it does not train the Pilot.
            z = pilot_logits.detach().float()
            # Non-finite logits take no probability mass (as in fusion): one bad entry must not poison every input.
            probs = torch.softmax(z.masked_fill(~torch.isfinite(z), float("-inf")), dim=-1).nan_to_num(0.0)
            pending = -(probs @ self._embedding_weight().float())
            inputs = (torch.cat([previous, pending[:, :-1]], dim=1) + memory_x.float()) * generated
            u = network(inputs, memory_x, memory_h, key_valid, cache, offset)
        else:
            gram = self._gram()
            any_generated = generated.squeeze(-1).any(0)
            first_generated = int(any_generated.float().argmax()) if any_generated.any() else length
            # Up to the first generated position (exclusive, but at least one position) every input is known and
            # runs as one chunk; each later position reads the previous one's output, so they run one at a time.
            split = max(1, first_generated)
            scratch = cache is None and split < length
            run_cache = DynamicCache() if scratch else cache
            outputs = []
            for start, end in [(0, split)] + [(t, t + 1) for t in range(split, length)]:
                inputs = torch.zeros(batch, end - start, width, device=device)
                inputs[:, :1] = previous * generated[:, start : start + 1]
                outputs.append(
                    network(
                        inputs,
                        memory_x[:, start:end],
                        memory_h[:, start:end],
                        key_valid[:, : past + end],
                        run_cache,
                        offset,
                    )
                )
                previous = outputs[-1][:, -1:].float() @ gram
            u = torch.cat(outputs, dim=1)
            pending = u.float() @ gram
        if slots is not None:
            stored = pending.unsqueeze(1)
            cache.update(stored, stored[..., :0], slots[1])
        return u

    # ------------------------------------------------------------------ generation

    def generate(self, *args, **kwargs):
        """The Pilot's `generate()` on fused logits; every decoding strategy works (Copilot off: the Pilot's own)."""
        if not self._copilot_active():
            return self.model.generate(*args, **kwargs)
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            raise ValueError("Copilot generation needs `input_ids` or `inputs_embeds`.")
        with self._route_generation_through_fusion(prompt_length=inputs.shape[1]):
            return self.model.generate(*args, **kwargs)

    @contextmanager
    def _route_generation_through_fusion(self, prompt_length: int):
        pilot = self.model
        had_instance_forward = "forward" in pilot.__dict__
        original = pilot.forward

        @functools.wraps(original)
        def fused(*args, **kwargs):
            return self.forward(*args, copilot_components=False, **kwargs)

        pilot.forward = fused
        self._generation_prompt_length = prompt_length
        try:
            yield
        finally:
            if had_instance_forward:
                pilot.forward = original
            else:
                del pilot.forward
            self._generation_prompt_length = None


# ---------------------------------------------------------------------- module-level helpers


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """The Pilot's token cross-entropy, normalised like transformers' causal-LM loss (by `num_items_in_batch` when
    the trainer counts tokens across gradient-accumulation steps, else by the tokens here)."""
    total = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    if num_items_in_batch is None:
        return total / max(targets.numel(), 1)
    return total / torch.as_tensor(num_items_in_batch, device=total.device)


def _key_valid(attention_mask, batch: int, total: int, device) -> torch.Tensor:
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and attention_mask.shape[1] == total:
        return attention_mask.to(device=device, dtype=torch.bool)
    return torch.ones(batch, total, dtype=torch.bool, device=device)


def _keep_positions(tensor: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    if isinstance(logits_to_keep, int):
        return tensor if logits_to_keep == 0 else tensor[:, -logits_to_keep:]
    return tensor[:, logits_to_keep]


def _unwrap_lora_pilot(model: PeftModel, config: CopilotConfig) -> nn.Module:
    """A LoRA-tuned Pilot: keep its LoRA layers in place and remember its LoRA config for saving."""
    lora = model.peft_config[model.active_adapter]
    if lora.peft_type != PeftType.LORA:
        raise ValueError(
            f"A Pilot that is a PeftModel must carry LoRA adapters; got {lora.peft_type}. Unload it first."
        )
    base = model.get_base_model()
    # LoRA leaves its config dict on the base model; the Copilot tuner keeps its own, so that one must go.
    base.__dict__.pop("peft_config", None)
    lora_dict = lora.to_dict()
    for key, value in list(lora_dict.items()):
        if isinstance(value, set):
            lora_dict[key] = sorted(value)
        elif hasattr(value, "value"):
            lora_dict[key] = value.value
    config.pilot_lora_config = lora_dict
    return base


def _check_pilot(model: nn.Module, config: CopilotConfig) -> None:
    text_config = getattr(model, "config", None)
    text_config = text_config.get_text_config() if text_config is not None else None
    model_type = getattr(text_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Transformer Copilot does not support the Pilot architecture {model_type!r} "
            f"({type(model).__name__}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if config.pilot_vocab_size is not None and config.pilot_vocab_size != vocab_size:
        raise ValueError(
            f"This Copilot was trained for a Pilot with vocabulary size {config.pilot_vocab_size}, but the Pilot it "
            f"is being loaded onto has vocabulary size {vocab_size}."
        )
    if config.pilot_hidden_size is not None and config.pilot_hidden_size != text_config.hidden_size:
        raise ValueError(
            f"This Copilot was trained for a Pilot with hidden size {config.pilot_hidden_size}, but the Pilot it is "
            f"being loaded onto has hidden size {text_config.hidden_size}."
        )


def _load_init_source(model: nn.Module, config: CopilotConfig) -> nn.Module | None:
    """The model whose decoder layers initialise the Copilot (None for random init or when loading weights)."""
    if config.init == "random" or config.copilot_architecture is not None and config.inference_mode:
        return None
    if config.init == "pilot_layers":
        return model
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(config.pretrained_model_name_or_path, dtype=torch.float32)
    pilot_type = model.config.get_text_config().model_type
    if source.config.model_type != pilot_type:
        raise ValueError(
            f"The Copilot's pretrained source {config.pretrained_model_name_or_path!r} is a "
            f"{source.config.model_type!r} model; it must be of the Pilot's family ({pilot_type!r})."
        )
    return source


def _resolve_architecture(model: nn.Module, config: CopilotConfig, source: nn.Module | None) -> CopilotNetworkConfig:
    pilot_config = model.config.get_text_config()
    if config.copilot_architecture is not None:
        architecture = CopilotNetworkConfig(**config.copilot_architecture)
        architecture.dropout = config.dropout
        return architecture
    shape_source = source if config.init == "pretrained" else model
    shape = shape_source.config.get_text_config()
    attention = _decoder_layers(shape_source)[0].self_attn
    num_layers = config.num_layers
    if num_layers is None:
        num_layers = (
            shape.num_hidden_layers if config.init == "pretrained" else max(2, pilot_config.num_hidden_layers // 4)
        )
    return CopilotNetworkConfig(
        memory_size=pilot_config.hidden_size,
        hidden_size=shape.hidden_size,
        num_layers=num_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=getattr(shape, "num_key_value_heads", None) or shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        rms_norm_eps=getattr(shape, "rms_norm_eps", 1e-6),
        attention_bias=_base_linear(attention.q_proj).bias is not None,
        dropout=config.dropout,
    )


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"Cannot find the decoder layers of {type(model).__name__} (expected `model.layers`).")
    return layers


def _base_linear(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _float_weight(module: nn.Module) -> torch.Tensor:
    """A full-precision copy of a (possibly LoRA-wrapped or bitsandbytes-quantized) linear layer's weight."""
    module = _base_linear(module)
    weight = module.weight
    kind = type(weight).__name__
    if kind == "Int8Params":
        # Row-wise absmax int8: W = CB · SCB / 127. (PEFT's dequantize helper clears the layer's cached statistics
        # on some bitsandbytes versions, which breaks the Pilot's next 8-bit matmul.)
        scale = getattr(weight, "SCB", None)
        if scale is None:
            scale = module.state.SCB
        return weight.data.float() * scale.float().unsqueeze(1) / 127.0
    if kind == "Params4bit":
        import bitsandbytes.functional as bnb_functional

        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # On AVX512-BF16 CPUs bitsandbytes repacks a 4-bit weight in place after the first inference forward;
            # its own inverse (what its state-dict saving uses) rebuilds the standard layout, here on a copy so the
            # Pilot's layer keeps its fast format.
            data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data, copy.deepcopy(state))
        return bnb_functional.dequantize_4bit(data, state).detach().float()
    return weight.detach().float()


def _initialise_from_source(network: CopilotNetwork, model: nn.Module, config: CopilotConfig, source) -> None:
    if source is None:
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        for block in network.layers:
            for linear in block.modules():
                if isinstance(linear, nn.Linear):
                    nn.init.normal_(linear.weight, std=std)
                    if linear.bias is not None:
                        nn.init.zeros_(linear.bias)
        return
    source_layers = _decoder_layers(source)
    count = len(network.layers)
    indices = config.init_layers
    if indices is None:
        last = len(source_layers) - 1
        indices = [round(i * last / (count - 1)) for i in range(count)] if count > 1 else [0]
    if len(indices) != count or any(not 0 <= i < len(source_layers) for i in indices):
        raise ValueError(
            f"init_layers must name {count} source layers (one per Copilot layer) in [0, {len(source_layers)}), "
            f"got {indices}."
        )
    with torch.no_grad():
        for block, index in zip(network.layers, indices):
            layer = source_layers[index]
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                target, origin = getattr(block.attn, name), _base_linear(getattr(layer.self_attn, name))
                target.weight.copy_(_float_weight(origin))
                if target.bias is not None and origin.bias is not None:
                    target.bias.copy_(origin.bias.detach().float())
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(block.mlp, name).weight.copy_(_float_weight(getattr(layer.mlp, name)))
            block.input_layernorm.weight.copy_(layer.input_layernorm.weight.detach().float())
            block.post_attention_layernorm.weight.copy_(layer.post_attention_layernorm.weight.detach().float())
