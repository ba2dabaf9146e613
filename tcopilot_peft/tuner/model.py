"""`CopilotModel`: the PEFT tuner that wraps a Pilot with a Transformer Copilot and fuses its corrections.

The tuner does not inject layers into the Pilot. It owns the Copilot networks (in a `CopilotLayer`) and overrides
`forward` and `generate`: the Pilot's decoder runs as usual (with `output_hidden_states=True`), the Copilot reads the
Pilot's embeddings, layer-pooled hidden states and errors (`layer.py`), and its correction is fused into the returned
logits. Fusion therefore lives in the forward pass, so every `generate()` strategy and every logits reader (lm-eval's
log-likelihood scoring) sees fused logits.

`forward` has three modes, run by the Pilot family's runner (`causal.py` for decoder-only Pilots, `seq2seq.py` for
encoder-decoder ones), which reaches the tuner through a small public interface (`fuse`, `count_skipped`,
`warn_once_pilot_loss`, `copilot_teacher_forced`, `pilot_forward`, `generation_prompt_length`):

* `labels` given, `copilot_teacher_forcing=True` (evaluation, custom loops): the Copilot runs teacher-forced on the
  Pilot's true errors; the output has fused logits and the Copilot's loss;
* `labels` given, `copilot_teacher_forcing=False` (`CopilotSFTTrainer`'s step): the Pilot's loss and, packed at the
  target positions, its logits (`pilot_target_logits`); the Copilot is left to the trainer;
* no labels (inference, Algorithm 2): the Copilot reads 0 on prompt positions and the error of the token actually
  generated (or its own previous output) on generated ones. Inside `generate()` (`generation.py`) the prompt is the
  input given to `generate`. A plain forward treats its whole input as prompt (its last position gives exactly what
  generation uses for the first new token); to score a given continuation with fused logits, pass
  `copilot_prompt_length` (an int, or one length per row) and the positions from there on are treated as generated.

The Copilot's KV cache lives in extra layer slots of the Pilot's own `Cache` (`cache.py`), so generate's beam
reordering, batch expansion and cropping apply to both for free.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft import LoraConfig, PeftModel, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from ..fusion import PilotPrediction, fuse_logits, fuse_logits_where_defined
from .causal import CausalRunner
from .checkpoint import weights_problem
from .config import CopilotConfig
from .families import PilotFamily, family_of, fill_family_defaults
from .generation import Generating, generate
from .layer import COPILOT_WEIGHTS_PREFIX, CopilotLayer
from .network import CopilotNetwork
from .pilot import build_copilot, check_pilot, is_encoder_decoder, pilot_signature, unwrap_lora_pilot
from .seq2seq import Seq2SeqRunner


# The Copilot is a separate network reading the Pilot's states and errors; there is no weight delta to fold in.
_CANNOT_MERGE = "A Copilot cannot be merged into the Pilot's weights; use `unload()` to get the Pilot back."
_PILOT_LOSS_WARNING = (
    "The `loss` of a Copilot model given `labels` is the Pilot's own cross-entropy: no gradient from it reaches the "
    "Copilot, so training on it leaves the Copilot unchanged. Train the Copilot with `CopilotSFTTrainer`, or "
    "backpropagate `outputs.copilot_loss` in a custom loop."
)
_SKIPPED_WARNING = (
    "The Pilot's logits held NaN or +inf at some position: there the returned logits are the Pilot's own (no "
    "fusion) and the Copilot reads no error from them. `model.copilot_skipped_positions` counts such positions."
)


class CopilotModel(BaseTuner):
    """PEFT tuner for Transformer Copilot; created by `get_peft_model(pilot, CopilotConfig(...))`.

    `pilot` may be a transformers causal LM (full precision or bitsandbytes 4/8-bit) or a `PeftModel` carrying LoRA
    adapters (a LoRA-tuned Pilot): its LoRA layers stay in place, keep training, and are saved and loaded with the
    Copilot.

    Attributes:
        copilot_skipped_positions (`int`): how many positions (row × position, among the logits returned by a
            forward without labels, as inside `generate`) had Pilot logits holding a NaN or `+inf`, or no finite
            value. There the returned logits are the Pilot's own, unfused, and the Copilot reads 0 instead of that
            position's error, so its cache stays finite and the row's later positions are fused as usual. A
            `PeftModel` reads it through (`model.copilot_skipped_positions`); reset it on the tuner
            (`model.base_model.copilot_skipped_positions = 0`). The first such position also warns, once.
    """

    prefix: str = "copilot_"
    tuner_layer_cls = BaseTunerLayer
    # The Copilot is a network held by the tuner, beside the Pilot, and its forward is the tuner's: a bare Pilot
    # returned by `peft.inject_adapter_in_model` would carry none of it. PEFT refuses injection for such tuners, naming
    # the reason and pointing to `get_peft_model`.
    uses_shared_state: bool = True
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        configs = config if isinstance(config, dict) else {adapter_name: config}
        if isinstance(model, PeftModel):
            model = unwrap_lora_pilot(model, configs[adapter_name])
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ------------------------------------------------------------------ PEFT tuner interface

    def _pre_injection_hook(self, model: nn.Module, config: CopilotConfig, adapter_name: str) -> None:
        self.copilot_layer = CopilotLayer(model)
        self._copilot_dtypes: dict[str, torch.dtype] = {}  # per adapter, the dtype its Copilot runs in
        self.generating: Generating | None = None  # set while `generate()` runs (`generation.py`)
        self._warned_pilot_loss = False
        # Generated or scored positions whose Pilot logits held a NaN or +inf (or nothing finite): returned unfused,
        # and the Copilot read no error from them. Users read (and may reset) it; see `count_skipped`.
        self.copilot_skipped_positions = 0
        self._warned_skipped = False

    def _prepare_adapter_config(self, peft_config: CopilotConfig, model_config: dict) -> CopilotConfig:
        """Where PEFT completes a config from the model: refuse a Pilot this Copilot cannot serve, fill in the
        family's defaults, then record the Pilot's family, vocabulary and width (a saved adapter is checked against
        them when loaded)."""
        check_pilot(self.model, peft_config)
        fill_family_defaults(self.model, peft_config)
        for field, value in pilot_signature(self.model).items():
            setattr(peft_config, field, value)
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
        """Build the Copilot network beside the Pilot (PEFT's other methods replace Pilot modules here)."""
        config: CopilotConfig = self._prepare_adapter_config(self.peft_config[adapter_name], model.config.to_dict())
        network = build_copilot(model, config)  # first: a config that cannot be built leaves the Pilot untouched
        self._injected_lora = False
        if config.pilot_lora_config and not any(isinstance(m, LoraLayer) for m in model.modules()):
            # A Copilot saved from a LoRA-tuned Pilot carries that Pilot's LoRA weights; recreate layers to hold them.
            lora_fields = {k: v for k, v in config.pilot_lora_config.items() if k in LoraConfig.__dataclass_fields__}
            lora_fields.pop("peft_type", None)
            # Under the LoRA adapter's own name (its weights are saved under it), whatever the Copilot's is.
            lora_name = config.pilot_lora_config.get("adapter_name", "default")
            inject_adapter_in_model(LoraConfig(**lora_fields), model, adapter_name=lora_name)
            self._injected_lora = True
        embedding = model.get_input_embeddings().weight
        # Under PEFT's `low_cpu_mem_usage` the network is built on `meta`: loading then assigns the saved tensors as
        # its weights, and `_move_adapter_to_device_of_base_layer` puts them beside the Pilot.
        if not any(p.is_meta for p in network.parameters()):
            network.to(device=embedding.device)
        if not autocast_adapter_dtype:
            network.to(dtype=embedding.dtype)
        # The dtype it runs in: a saved 16-bit adapter loaded by assignment (`low_cpu_mem_usage`) is cast back to it.
        self._copilot_dtypes[adapter_name] = next(network.parameters()).dtype
        self.copilot_model[adapter_name] = network
        self.copilot_layer.set_adapter(self.active_adapters)
        config.num_layers = network.config.num_layers
        config.copilot_architecture = network.config.to_dict()
        self._mark_only_adapters_as_trainable(model)
        if config.inference_mode:
            network.requires_grad_(False)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        marker = f"{COPILOT_WEIGHTS_PREFIX}{adapter_name}."
        if marker in key:
            return key.replace(marker, COPILOT_WEIGHTS_PREFIX)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT's selection of the adapter's weights to save, with the Copilot's in the Pilot's dtype when that is
        16-bit: beside a bf16/fp16 Pilot the float32 Copilot would make the adapter twice the size. Loading casts them
        back to the dtype the Copilot runs in."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        dtype = model.get_input_embeddings().weight.dtype
        if dtype not in (torch.bfloat16, torch.float16):
            return selected
        marker = f"{COPILOT_WEIGHTS_PREFIX}{adapter_name}."
        return {k: v.to(dtype) if marker in k and v.is_floating_point() else v for k, v in selected.items()}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Check every loaded tensor before any is assigned; on a problem, undo what building the adapter did to the
        Pilot (recreated LoRA layers) and refuse, so a failed load leaves the Pilot as it was."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        problem = weights_problem(model.state_dict(), remapped, f"{COPILOT_WEIGHTS_PREFIX}{adapter_name}.")
        if problem is not None:
            next(m for m in model.modules() if isinstance(m, CopilotModel)).undo_injection()
            raise ValueError(f"The Copilot adapter file (adapter_model.safetensors) {problem}; nothing was loaded.")
        return remapped

    def undo_injection(self) -> None:
        """Take the LoRA layers this adapter recreated off the Pilot, and PEFT's config attribute."""
        if self._injected_lora:
            for name, module in list(self.model.named_modules()):
                if isinstance(module, LoraLayer):
                    parent_name, _, child = name.rpartition(".")
                    setattr(self.model.get_submodule(parent_name), child, module.get_base_layer())
            self._injected_lora = False
        self.model.__dict__.pop("peft_config", None)

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
        """Called by PEFT after a `low_cpu_mem_usage` load assigned the saved tensors (on the loading device, in the
        file's dtype) as the Copilot's weights: the Copilot must sit beside the Pilot, in the dtype it runs in."""
        if adapter_name in self.copilot_model:
            target = device if device is not None else self.model.get_input_embeddings().weight.device
            self.copilot_model[adapter_name].to(device=target, dtype=self._copilot_dtypes.get(adapter_name))

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

    # ------------------------------------------------------------------ the active Copilot

    @property
    def active_config(self) -> CopilotConfig:
        return self.peft_config[self.active_adapter]

    @property
    def active_network(self) -> CopilotNetwork:
        return self.copilot_model[self.active_adapter]

    @property
    def encoder_decoder(self) -> bool:
        """Whether the Pilot is an encoder-decoder (T5-family) model."""
        return is_encoder_decoder(self.model)

    @property
    def family(self) -> PilotFamily:
        """The Pilot's entry in the family table (`families.py`)."""
        return family_of(self.model)

    @property
    def runner(self) -> CausalRunner | Seq2SeqRunner:
        """What runs the Pilot with the active Copilot: its family's runner (decoder-only or encoder-decoder)."""
        return self.family.runner(self)

    @property
    def pilot_forward(self):
        """The Pilot's own forward (while `generate()` runs, its `forward` attribute is the fused one)."""
        return self.generating.pilot_forward if self.generating is not None else self.model

    @property
    def generation_prompt_length(self) -> int | None:
        """Inside `generate()`: where generated positions start; None outside."""
        return self.generating.prompt_length if self.generating is not None else None

    def targets_of(self, labels: torch.Tensor) -> torch.Tensor:
        """`targets[:, t]`, the token position t predicts: the next label for a causal LM, the label itself for an
        encoder-decoder Pilot (its decoder reads the labels shifted right)."""
        return self.runner.targets_of(labels)

    def _copilot_active(self) -> bool:
        return (
            not self.copilot_layer.disable_adapters
            and isinstance(self.active_adapter, str)
            and self.active_adapter in self.copilot_model
        )

    def copilot_teacher_forced(
        self,
        memory_x: torch.Tensor,
        memory_h: torch.Tensor,
        key_valid: torch.Tensor,
        targets: torch.Tensor,
        prediction: PilotPrediction,
        loss_kind: str | None = None,
        full_correction: bool = False,
        loss_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Run the active Copilot teacher-forced on the Pilot's errors and return (f, loss).

        This is the Copilot's training computation, shared by the fused forward (fresh errors, dense p̂) and the
        Mistake Log replay (logged errors, top-k p̂); see `CopilotLayer.teacher_forced`. `loss_kind` defaults to the
        active adapter's `copilot_loss`. With `loss_only`, f is not built (it is returned as `None`). A dense p̂ enters
        the Copilot's input as the top-k its config names (`pilot_error_top_k`), the form it trained on.
        """
        config = self.active_config
        return self.copilot_layer.teacher_forced(
            memory_x,
            memory_h,
            key_valid,
            targets,
            prediction,
            loss_kind or config.copilot_loss,
            full_correction,
            loss_only,
            config.pilot_error_top_k,
        )

    def copilot_replay(self, batch, loss_kind: str | None = None) -> torch.Tensor:
        """The Copilot's loss on a batch rebuilt from the Mistake Log (`MistakeLogBatch`). X̃ is rebuilt: re-embedded
        from the logged ids, or for an encoder-decoder Pilot recomputed by its encoder from the logged source ids."""
        # The Copilot's device (beside the Pilot's): reading the embedding's would gather it under FSDP.
        batch = batch.to(next(self.active_network.parameters()).device)
        with torch.no_grad():
            memory_x, key_valid = self.runner.replay_memory(batch)
        _, loss = self.copilot_teacher_forced(
            memory_x, batch.hidden, key_valid, batch.targets, batch.prediction(), loss_kind=loss_kind, loss_only=True
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
        on `copilot_loss`.

        Args:
            copilot_prompt_length (`int` or `torch.LongTensor`, *optional*):
                Without labels: positions from this index on (per row, if a tensor) are treated as generated, so the
                Copilot reads there what it reads during `generate()`. Use it to score a given continuation with
                fused logits. Unset, the whole input is prompt.
            copilot_teacher_forcing (`bool`, defaults to `True`):
                With labels: run the Copilot teacher-forced on ℓ. `False` returns the Pilot's loss, its logits at the
                target positions and the Mistake Log inputs only (the trainer then runs the Copilot on the log).
            copilot_components (`bool`, defaults to `True`):
                Also return the Pilot's logits and the Copilot's correction separately. `generate()` turns this off:
                logit-space fusion is linear, z + λ·W·u = W·(h + λ·u), so the fused logits then take one LM-head
                pass instead of two.
        """
        for key in ("output_attentions", "output_hidden_states", "return_dict"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        if not self._copilot_active():
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                labels=labels,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        return self.runner.forward(
            input_ids,
            attention_mask,
            inputs_embeds,
            labels,
            logits_to_keep,
            copilot_prompt_length,
            copilot_teacher_forcing,
            copilot_components,
            kwargs,
        )

    def count_skipped(self, undefined: torch.Tensor | None) -> None:
        """Count the positions returned unfused because the Pilot's prediction there was undefined; warn once."""
        if undefined is None:
            return
        skipped = int(undefined.sum())
        self.copilot_skipped_positions += skipped
        if skipped and not self._warned_skipped:
            self._warned_skipped = True
            warnings.warn(_SKIPPED_WARNING, stacklevel=2)

    def warn_once_pilot_loss(self) -> None:
        if self.training and not self._warned_pilot_loss:
            # `CopilotSFTTrainer` trains with `copilot_teacher_forcing=False`, so this is a loop of the user's own.
            self._warned_pilot_loss = True
            warnings.warn(_PILOT_LOSS_WARNING, stacklevel=5)

    def fuse(self, pilot_logits: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
        """`fuse_logits` with the active config."""
        config = self.active_config
        return fuse_logits(pilot_logits, correction, config.fusion_lambda, config.fusion_mode, config.prob_floor)

    def fuse_where_defined(self, pilot_logits: torch.Tensor, correction: torch.Tensor, undefined) -> torch.Tensor:
        """`fuse_logits_where_defined` with the active config: the caller checked the Pilot's logits already."""
        config = self.active_config
        return fuse_logits_where_defined(
            pilot_logits, correction, config.fusion_lambda, config.fusion_mode, undefined, config.prob_floor
        )

    # ------------------------------------------------------------------ generation

    def generate(self, *args, **kwargs):
        """The Pilot's `generate()` on fused logits; every decoding strategy works (Copilot off: the Pilot's own)."""
        if not self._copilot_active():
            return self.model.generate(*args, **kwargs)
        return generate(self, *args, **kwargs)
