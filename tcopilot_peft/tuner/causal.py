"""The fused forward of a decoder-only Pilot (Llama, Qwen2, Mistral), in the tuner's three modes.

The Pilot's causal-LM forward is decoder → LM head on the kept positions → loss, the same for every supported family;
the runner runs it in those steps so the Copilot can read the decoder's states:

* `labels` and teacher forcing (evaluation, custom loops): the Copilot on the Pilot's true errors, fused logits, the
  Pilot's loss and the Copilot's;
* `labels` without teacher forcing (`CopilotSFTTrainer`'s step): the Pilot's loss and its logits at the target
  positions only, and the Mistake Log's inputs; the Copilot is left to the trainer;
* no labels (inference, Algorithm 2): fused logits at the kept positions.

X̃ is the embedding layer's output, looked up the same way here and when the Mistake Log is replayed
(`replay_memory`).
The runner reaches the tuner only through its public interface: `model` (the Pilot), `family` (where the Pilot's
parts live), `active_config`, `active_network`, `copilot_layer`, `copilot_teacher_forced`, `fuse`, `count_skipped`,
`warn_once_pilot_loss` and `generation_prompt_length`.
"""

from __future__ import annotations

import torch

from ..fusion import IGNORE_INDEX, PilotPrediction, shift_targets, undefined_predictions
from .cache import CACHE_FIELD, CopilotCacheView
from .layer import LayerPool, generated_positions
from .outputs import CopilotCausalLMOutput


class CausalRunner:
    """Runs a decoder-only Pilot with the tuner's active Copilot (see the module docstring)."""

    def __init__(self, tuner) -> None:
        self.tuner = tuner
        self.head = tuner.family.module(tuner.model, "head")

    @staticmethod
    def targets_of(labels: torch.Tensor) -> torch.Tensor:
        """`targets[:, t]`, the token position t predicts: the next label."""
        return shift_targets(labels)

    @staticmethod
    def generation_prompt(args: tuple, kwargs: dict) -> int:
        """Where generated positions start: after the input given to `generate`."""
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            raise ValueError("Copilot generation needs `input_ids` or `inputs_embeds`.")
        return inputs.shape[1]

    def replay_memory(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """X̃ and its key mask for a Mistake Log batch: the logged ids, re-embedded."""
        return self._embed(batch.input_ids), batch.attention_mask

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tuner.family.module(self.tuner.model, "embedding")(input_ids)

    def forward(
        self,
        input_ids,
        attention_mask,
        inputs_embeds,
        labels,
        logits_to_keep,
        prompt_length,
        teacher_forcing,
        components,
        kwargs,
    ) -> CopilotCausalLMOutput:
        """The Pilot's decoder, then the mode `labels` and `teacher_forcing` select (`CopilotModel.forward`)."""
        keep_hidden = kwargs.pop("output_hidden_states", False)
        tuner = self.tuner
        decoder, layers = tuner.family.module(tuner.model, "decoder"), tuner.family.module(tuner.model, "layers")
        with LayerPool(decoder, layers, tuner.active_config.pooled_layers) as pool:
            decoder_out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_hidden_states=keep_hidden,
                **kwargs,
            )
        memory_h = pool.mean()
        # X̃ is what the decoder's first layer read: the embedding of the ids (looked up again here, as at replay, so
        # the decoder is called as the Pilot's own forward calls it), or the embeddings given.
        memory_x = (inputs_embeds if inputs_embeds is not None else self._embed(input_ids)).detach()
        if labels is None:
            output = self._inference(
                decoder_out, memory_x, memory_h, attention_mask, logits_to_keep, prompt_length, components
            )
        elif teacher_forcing:
            output = self._teacher_forced(
                decoder_out, memory_x, memory_h, attention_mask, labels, logits_to_keep, kwargs
            )
        else:
            output = self._training_step(decoder_out, memory_x, memory_h, labels, kwargs)
        output.hidden_states = decoder_out.hidden_states if keep_hidden else None
        output.attentions = decoder_out.get("attentions")
        return output

    def _training_step(self, decoder_out, memory_x, memory_h, labels, kw) -> CopilotCausalLMOutput:
        """`CopilotSFTTrainer`'s step: the LM head only where there is a target, like TRL's own loss; no Copilot."""
        hidden = decoder_out.last_hidden_state
        targets = shift_targets(labels)
        valid = targets != IGNORE_INDEX
        target_logits = self.head(hidden[valid])
        return CopilotCausalLMOutput(
            loss=_cross_entropy(target_logits, targets[valid], kw.get("num_items_in_batch")),
            pilot_target_logits=target_logits,
            copilot_memory_x=memory_x,
            copilot_memory_h=memory_h,
            **{CACHE_FIELD: decoder_out.get(CACHE_FIELD)},
        )

    def _teacher_forced(
        self, decoder_out, memory_x, memory_h, attention_mask, labels, logits_to_keep, kw
    ) -> CopilotCausalLMOutput:
        """The Copilot on the Pilot's true errors: fused logits, the Pilot's loss and the Copilot's."""
        tuner, hidden = self.tuner, decoder_out.last_hidden_state
        cache = decoder_out.get(CACHE_FIELD)
        if cache is not None and cache.get_seq_length() > hidden.shape[1]:
            raise ValueError("The teacher-forced Copilot forward (with labels) cannot continue from a KV cache.")
        tuner.warn_once_pilot_loss()
        key_valid = _key_valid(attention_mask, *hidden.shape[:2], hidden.device)
        pilot_logits = self.head(_keep_positions(hidden, logits_to_keep))
        loss = tuner.model.loss_function(logits=pilot_logits, labels=labels, vocab_size=pilot_logits.shape[-1], **kw)
        targets = shift_targets(labels)
        correction, copilot_loss_value = tuner.copilot_teacher_forced(
            memory_x, memory_h, key_valid, targets, PilotPrediction.from_logits(pilot_logits), full_correction=True
        )
        return CopilotCausalLMOutput(
            loss=loss,
            logits=tuner.fuse(pilot_logits, correction),
            pilot_logits=pilot_logits,
            pilot_target_logits=pilot_logits[targets != IGNORE_INDEX],
            copilot_logits=correction,
            copilot_loss=copilot_loss_value,
            copilot_memory_x=memory_x,
            copilot_memory_h=memory_h,
            **{CACHE_FIELD: cache},
        )

    def _inference(self, decoder_out, memory_x, memory_h, attention_mask, logits_to_keep, prompt_length, components):
        """Algorithm 2 over this call's positions: fused logits at the kept positions, and (unless fused in hidden
        space, `components=False` with logit fusion) the Pilot's logits and the correction."""
        tuner = self.tuner
        config, layer, head = tuner.active_config, tuner.copilot_layer, self.head
        hidden = decoder_out.last_hidden_state
        batch, length = memory_x.shape[:2]
        cache = decoder_out.get(CACHE_FIELD)
        view = None
        if cache is not None:
            pilot_layers = tuner.family.num_layers(tuner.model)
            view = CopilotCacheView.attach(cache, pilot_layers, tuner.active_network.cache_slots)
        past = view.past if view is not None else 0
        key_valid = _key_valid(attention_mask, batch, past + length, hidden.device)
        if prompt_length is None:
            prompt_length = tuner.generation_prompt_length
        generated = generated_positions(prompt_length, past, batch, length, hidden.device)
        feed = config.inference_feed
        # The "pilot_error" feed reads p̂ of this call's positions when one after the first is generated (scoring a
        # continuation): the head then runs first, everywhere. A decoding step reads only the previous step's p̂, so
        # the Pilot's logits and the correction share one head pass after the Copilot.
        decoding = feed == "pilot_error" and isinstance(logits_to_keep, int) and not generated[:, 1:].any()
        pilot_logits = undefined = None
        if feed == "pilot_error" and not decoding:
            pilot_logits = head(hidden)
            undefined = undefined_predictions(pilot_logits)
        top_k = config.pilot_error_top_k
        u = layer.inference(
            memory_x, memory_h, key_valid, memory_x, generated, view, feed, pilot_logits, undefined, top_k
        )
        hidden, u = _keep_positions(hidden, logits_to_keep), _keep_positions(u, logits_to_keep)
        if pilot_logits is not None:
            pilot_logits, correction = _keep_positions(pilot_logits, logits_to_keep), layer.head(u)
            undefined = undefined if undefined is None else _keep_positions(undefined, logits_to_keep)
        elif not decoding and not components and config.fusion_mode == "logit" and config.fusion_lambda != 0:
            return CopilotCausalLMOutput(logits=self._fuse_in_hidden_space(hidden, u), **{CACHE_FIELD: cache})
        else:
            pilot_logits, correction, undefined = layer.head_step(head, hidden, u, view, length, top_k, decoding)
        tuner.count_skipped(undefined)
        return CopilotCausalLMOutput(
            logits=tuner.fuse_where_defined(pilot_logits, correction, undefined),
            pilot_logits=pilot_logits,
            copilot_logits=correction,
            **{CACHE_FIELD: cache},
        )

    def _fuse_in_hidden_space(self, hidden: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Logit fusion as one head pass, W·(h + λ·u); where that prediction is undefined, the Pilot's own W·h
        (recomputed at those positions only: it is never needed otherwise)."""
        head = self.head
        fused = head(hidden + self.tuner.active_config.fusion_lambda * u.to(hidden.dtype))
        undefined = undefined_predictions(fused)
        if undefined is not None:
            fused[undefined] = head(hidden[undefined]).to(fused.dtype)
        self.tuner.count_skipped(undefined)
        return fused


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
