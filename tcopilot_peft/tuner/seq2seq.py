"""The fused forward of an encoder-decoder (T5-family) Pilot, in the same three modes as the decoder-only runner
(`causal.py`), over the Pilot's own `Seq2SeqLMOutput`; it reaches the tuner through the same public interface.

The Pilot runs its whole forward (encoder, decoder, LM head, loss) exactly as it would alone (at inference with its
LM head deferred: the head runs after the Copilot, in one pass for the Pilot's logits and the correction where the
Copilot needs no p̂ of this call, as in the decoder-only runner); the Copilot then reads, at decoder position t:

* the memory: the encoder output (the paper's X̃ for an encoder-decoder Pilot) under the encoder's attention mask,
  and the layer-pooled decoder states at positions ≤ t;
* its input: the Pilot's error at position t − 1 (teacher-forced: onehot(y) − p̂; at inference, for the token
  actually generated, or its own previous output), and with a same-position path what the decoder has at t: its
  input token's embedding (the target at t − 1, looked up from the decoder's input ids, as at replay from the logged
  ones) and h_t. The token embeddings travel after the encoder output in the Copilot's `memory_x`
  (`T5CopilotNetwork`), so the trainer and the Mistake Log's replay pass them on unchanged.

Targets are the labels themselves (decoder position t predicts `labels[:, t]`). At inference the decoder's prompt is
its start token (or the `decoder_input_ids` given to `generate`), so every later decoder position is a generated one:
a plain forward on `decoder_input_ids` scores that target exactly as generation would have produced it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from ..fusion import IGNORE_INDEX, PilotPrediction, undefined_predictions
from .cache import CACHE_FIELD, CopilotCacheView
from .layer import LayerPool, generated_positions
from .network import TOKEN_PATHS
from .outputs import CopilotSeq2SeqLMOutput


DECODER_PROMPT_LENGTH = 1  # the decoder start token


class Seq2SeqRunner:
    """Runs an encoder-decoder Pilot with the tuner's active Copilot (see the module docstring)."""

    def __init__(self, tuner) -> None:
        self.tuner = tuner

    @staticmethod
    def targets_of(labels: torch.Tensor) -> torch.Tensor:
        """`targets[:, t]`, the token position t predicts: the label itself (the decoder reads the labels shifted
        right)."""
        return labels

    @staticmethod
    def generation_prompt(args: tuple, kwargs: dict) -> int:
        """Where generated positions start: after the decoder's prompt (its start token, or the `decoder_input_ids`
        given to `generate`)."""
        decoder_prompt = kwargs.get("decoder_input_ids")
        return decoder_prompt.shape[1] if decoder_prompt is not None else DECODER_PROMPT_LENGTH

    def replay_memory(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """X̃ and its key mask for a Mistake Log batch: the encoder's output, recomputed from the logged source ids
        (and, with a token path, the decoder's input embeddings, from the logged decoder ids)."""
        encoder = self.tuner.model.get_encoder()
        memory_x = encoder(input_ids=batch.source_ids, attention_mask=batch.source_mask).last_hidden_state
        return self._with_tokens(memory_x, batch.input_ids), batch.source_mask

    def _with_tokens(self, encoder: torch.Tensor, decoder_ids, decoder_embeds=None, labels=None) -> torch.Tensor:
        """The Copilot's `memory_x`: the encoder output, followed by the decoder's input embeddings when the active
        Copilot has a token path: the given ones, or its ids (built from `labels` as the Pilot builds them when not
        given) looked up in the shared embedding, which T5's decoder reads unscaled."""
        tuner = self.tuner
        if tuner.active_network.same_position not in TOKEN_PATHS:
            return encoder
        if decoder_embeds is None:
            if decoder_ids is None:
                decoder_ids = tuner.model.prepare_decoder_input_ids_from_labels(labels=labels)
            decoder_embeds = tuner.family.module(tuner.model, "embedding")(decoder_ids)
        return torch.cat([encoder, decoder_embeds.detach().to(encoder.dtype)], dim=1)

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
    ) -> CopilotSeq2SeqLMOutput:
        """The Pilot's forward, then the Copilot in the mode `labels` and `teacher_forcing` select. (`logits_to_keep`
        and `components` are the decoder-only runner's: T5 returns the logits of every decoder position.)"""
        tuner = self.tuner
        kwargs.pop("num_items_in_batch", None)  # T5's loss is its own mean over label tokens; it takes no token count
        keep_hidden = kwargs.pop("output_hidden_states", False)
        family = tuner.family
        decoder, layers = family.module(tuner.model, "decoder"), family.module(tuner.model, "layers")
        deferred = _head_deferred(tuner.model, family.paths["head"]) if labels is None else nullcontext()
        with LayerPool(decoder, layers, tuner.active_config.pooled_layers, first_input=True) as pool, deferred:
            pilot_out = tuner.pilot_forward(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                labels=labels,
                output_hidden_states=keep_hidden,
                **kwargs,
            )
        encoder = pilot_out.encoder_last_hidden_state.detach()
        key_valid = (
            attention_mask.bool() if attention_mask is not None else torch.ones(encoder.shape[:2], dtype=torch.bool)
        ).to(encoder.device)
        token_embeds, memory_h = pool.first_input, pool.mean()  # the decoder's input embeddings: its tokens' ŷ·E
        memory_x = self._with_tokens(
            encoder, kwargs.get("decoder_input_ids"), kwargs.get("decoder_inputs_embeds"), labels
        )
        if labels is None:
            fields = self._inference(pilot_out, memory_x, memory_h, key_valid, token_embeds, prompt_length)
        elif teacher_forcing:
            fields = self._teacher_forced(pilot_out, memory_x, memory_h, key_valid, labels)
        else:
            fields = {"pilot_target_logits": pilot_out.logits[labels != IGNORE_INDEX]}
        if labels is not None:
            fields.update(loss=pilot_out.loss, copilot_memory_x=memory_x, copilot_memory_h=memory_h)
        return CopilotSeq2SeqLMOutput(
            **{CACHE_FIELD: pilot_out.get(CACHE_FIELD)},
            decoder_hidden_states=pilot_out.decoder_hidden_states if keep_hidden else None,
            encoder_last_hidden_state=pilot_out.encoder_last_hidden_state,
            encoder_hidden_states=pilot_out.encoder_hidden_states if keep_hidden else None,
            **fields,
        )

    def _teacher_forced(self, pilot_out, memory_x, memory_h, key_valid, labels) -> dict:
        tuner = self.tuner
        tuner.warn_once_pilot_loss()
        logits = pilot_out.logits
        correction, copilot_loss = tuner.copilot_teacher_forced(
            memory_x, memory_h, key_valid, labels, PilotPrediction.from_logits(logits), full_correction=True
        )
        return {
            "logits": tuner.fuse(logits, correction),
            "pilot_logits": logits,
            "pilot_target_logits": logits[labels != IGNORE_INDEX],
            "copilot_logits": correction,
            "copilot_loss": copilot_loss,
        }

    def _inference(self, pilot_out, memory_x, memory_h, key_valid, token_embeds, prompt_length) -> dict:
        """Algorithm 2 over this call's decoder positions, continuing from the cache when there is one. The Pilot's
        forward ran without its LM head (`pilot_out.logits` holds the head's input)."""
        tuner = self.tuner
        config, layer, head = tuner.active_config, tuner.copilot_layer, tuner.family.module(tuner.model, "head")
        cache = pilot_out.get(CACHE_FIELD)
        view = None
        if cache is not None:
            view = CopilotCacheView.attach(
                cache, tuner.family.num_layers(tuner.model), tuner.active_network.cache_slots
            )
        past = view.past if view is not None else 0
        if prompt_length is None:
            prompt_length = tuner.generation_prompt_length or DECODER_PROMPT_LENGTH
        batch, length = memory_h.shape[:2]
        generated = generated_positions(prompt_length, past, batch, length, memory_h.device)
        hidden, feed, top_k = pilot_out.logits, config.inference_feed, config.pilot_error_top_k
        # As in the decoder-only runner: the "pilot_error" feed reads p̂ of this call's positions only when one after
        # the first is generated (scoring a target); otherwise the head runs once, after the Copilot, for both.
        decoding = feed == "pilot_error" and not generated[:, 1:].any()
        logits = undefined = None
        if feed == "pilot_error" and not decoding:
            logits = head(hidden)
            undefined = undefined_predictions(logits)
        u = layer.inference(
            memory_x, memory_h, key_valid, token_embeds, generated, view, feed, logits, undefined, top_k
        )
        if logits is not None:
            correction = layer.head(u)
        else:
            logits, correction, undefined = layer.head_step(head, hidden, u, view, length, top_k, decoding)
        tuner.count_skipped(undefined)
        return {
            "logits": tuner.fuse_where_defined(logits, correction, undefined),
            "pilot_logits": logits,
            "copilot_logits": correction,
        }


@contextmanager
def _head_deferred(pilot: nn.Module, head_path: str) -> Iterator[None]:
    """The Pilot's forward with its LM head replaced by the identity, so its `logits` are the head's input (T5 scales
    the decoder's output before a tied head): the runner applies the head itself, once (`logits_and_correction`)."""
    parent_path, _, name = head_path.rpartition(".")
    parent = pilot.get_submodule(parent_path)
    head = getattr(parent, name)
    setattr(parent, name, nn.Identity())
    try:
        yield
    finally:
        setattr(parent, name, head)
