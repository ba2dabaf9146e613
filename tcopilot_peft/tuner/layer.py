"""`CopilotLayer`: the Copilot networks (one per adapter name) and what runs the active one on the Pilot's states.

The Copilot reads three things from the Pilot at every position: X̃ (its input embeddings), the layer-pooled hidden
states, and an error signal embedded through the Pilot's input embedding E. Its output u goes through the Pilot's
frozen LM head W to the correction f = W·u. Which error it reads at position t (the paper's shifted ℓ_{<i}):

* teacher-forced (training, `teacher_forced`): ℓ_{t−1} = onehot(y_{t−1}) − p̂_{t−1} where that target exists, else 0;
* at inference (`inference`): 0 on prompt positions (the paper's Copilot only runs over the response), and on
  generated positions either onehot(ŷ_{t−1}) − p̂_{t−1} for the token actually generated (`"pilot_error"`), or its
  own previous output f_{t−1} (Algorithm 2, `"copilot"`).

Outside training p̂ enters as the Mistake Log gives it in training: its top-k (`top_k`, the config's
`pilot_error_top_k`; 0 for the dense p̂), so the Copilot reads what it was trained on.

Embedded errors are computed without building |V|-sized one-hot vectors: onehot(y)·E is a row of E, p̂·E one matmul,
and f·E = u·(Wᵀ E) with the d×d Gram matrix `gram()`.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.distributed.tensor import DTensor

from ..fusion import (
    IGNORE_INDEX,
    PilotPrediction,
    copilot_loss,
    copilot_loss_from_head,
    error_embedding,
    undefined_predictions,
)
from ..fusion.prediction import expected_embedding
from .cache import CopilotCacheView
from .network import CopilotNetwork


# Where the Copilot networks sit in the tuner layer: every Copilot weight's state-dict key holds this prefix, followed
# by the adapter name in the model and without it in a saved adapter file.
COPILOT_WEIGHTS_PREFIX = "copilot_model."


class _PilotReference:
    """The Pilot, held without making it a submodule of the layer: the tuner owns it (and saves it, or not)."""

    def __init__(self, pilot: nn.Module) -> None:
        self.pilot = pilot


class CopilotLayer(nn.Module, BaseTunerLayer):
    """Holds the Copilot networks, one per adapter name, so PEFT's adapter bookkeeping (status, enable/disable,
    `requires_grad` per adapter, state-dict selection) treats the Copilot like any other tuner layer; runs the active
    one against the Pilot's embedding and LM head."""

    adapter_layer_names = (COPILOT_WEIGHTS_PREFIX.rstrip("."),)

    def __init__(self, pilot: nn.Module) -> None:
        super().__init__()
        self.copilot_model = nn.ModuleDict()
        self._pilot = _PilotReference(pilot)
        self._gram_cache: tuple[tuple, torch.Tensor] | None = None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """A no-op: there is no base layer to follow (PEFT's version would recurse looking for one). The tuner, which
        knows the Pilot, places the Copilot instead (`CopilotModel._move_adapter_to_device_of_base_layer`)."""

    @property
    def active_network(self) -> CopilotNetwork:
        return self.copilot_model[self.active_adapters[0]]

    # ------------------------------------------------------------------ the Pilot's ends, as constants

    def embedding_weight(self) -> torch.Tensor:
        return _whole(self._pilot.pilot.get_input_embeddings().weight).detach()

    def head_weight(self) -> torch.Tensor:
        weight = _whole(self._pilot.pilot.get_output_embeddings().weight)
        if not weight.is_floating_point():
            raise ValueError("The Copilot reuses the Pilot's LM head, which must not be quantized.")
        return weight.detach()

    def head(self, u: torch.Tensor) -> torch.Tensor:
        """The correction f = W_head · u through the Pilot's frozen LM head (no gradient reaches the head)."""
        weight = self.head_weight()
        return torch.nn.functional.linear(u.to(weight.dtype), weight).float()

    def logits_and_correction(
        self, pilot_head: nn.Module, hidden: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pilot logits `pilot_head(hidden)` and correction W·u. Without autograd they share one pass over the LM
        head's weight, which at small batch costs about as much as one (decoding reads the |V|×d matrix once, not
        twice)."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in pilot_head.parameters()):
            return pilot_head(hidden), self.head(u)
        both = pilot_head(torch.cat([hidden, u.to(hidden.dtype)], dim=0))
        return both[: hidden.shape[0]], both[hidden.shape[0] :].float()

    def head_step(self, pilot_head: nn.Module, hidden, u, view, length, top_k, decoding: bool):
        """One shared head pass (`logits_and_correction`) and, while decoding, the next position's Pilot error stored
        for the Copilot's feed. Returns the Pilot's logits, the correction and the logits' undefined rows."""
        pilot_logits, correction = self.logits_and_correction(pilot_head, hidden, u)
        undefined = undefined_predictions(pilot_logits)
        if decoding and view is not None:
            last_undefined = undefined[:, -1:] if undefined is not None else None
            self.store_pilot_error(view, pilot_logits[:, -1:], length, last_undefined, top_k)
        return pilot_logits, correction, undefined

    def gram(self) -> torch.Tensor:
        """G = W_headᵀ E (d_P × d_P), so f·E = u·G costs d² instead of |V|·d. Recomputed when either weight changes."""
        head, embedding = self.head_weight(), self.embedding_weight()
        key = (head.data_ptr(), head._version, embedding.data_ptr(), embedding._version, head.device)
        if self._gram_cache is None or self._gram_cache[0] != key:
            # Built outside inference mode so the cached matrix stays usable by later autograd-tracked calls.
            with torch.inference_mode(False), torch.no_grad():
                self._gram_cache = (key, head.float().T @ embedding.float())
        return self._gram_cache[1]

    # ------------------------------------------------------------------ teacher-forced (training, scoring)

    def teacher_forced(
        self,
        memory_x: torch.Tensor,
        memory_h: torch.Tensor,
        key_valid: torch.Tensor,
        targets: torch.Tensor,
        prediction: PilotPrediction,
        loss_kind: str,
        full_correction: bool = False,
        loss_only: bool = False,
        top_k: int = 0,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The Copilot on the true errors: (f, its `loss_kind` loss averaged over target positions).

        `targets[:, t]` is the gold token after position t (-100 where there is none). p̂ is given per position or
        packed at the target positions only (row-major). f is returned at the target positions (`(N, |V|)`), or at
        every position (`(B, T, |V|)`) with `full_correction`, or not at all (`None`) with `loss_only`. With `top_k`,
        a dense p̂ enters the Copilot's input as its top-k (the loss still reads the p̂ given).
        """
        valid = targets != IGNORE_INDEX
        gold = targets[valid]
        prediction = prediction.at(valid)
        fed = prediction.top_k(top_k) if top_k and prediction.is_dense else prediction
        errors = torch.zeros(*targets.shape, memory_x.shape[-1], device=memory_x.device)
        errors[valid] = error_embedding(self.embedding_weight(), gold, fed)
        inputs = torch.cat([torch.zeros_like(errors[:, :1]), errors[:, :-1]], dim=1)
        u = self.active_network(inputs, memory_x, memory_h, key_valid)
        if loss_only:  # training needs only the loss: f = W·u is not built whole where the objective can avoid it
            return None, copilot_loss_from_head(u[valid], self.head_weight(), gold, prediction, kind=loss_kind)
        if full_correction:
            correction = self.head(u)
            at_targets = correction[valid]
        else:
            correction = at_targets = self.head(u[valid])  # the |V|-sized head only where the loss is
        return correction, copilot_loss(at_targets, gold, prediction, kind=loss_kind)

    # ------------------------------------------------------------------ inference (Algorithm 2)

    def inference(
        self,
        memory_x: torch.Tensor,
        memory_h: torch.Tensor,
        key_valid: torch.Tensor,
        token_embeds: torch.Tensor,
        generated: torch.Tensor,
        view: CopilotCacheView | None,
        feed: str,
        pilot_logits: torch.Tensor | None = None,
        undefined: torch.Tensor | None = None,
        top_k: int = 0,
    ) -> torch.Tensor:
        """u at every position of this call. `generated` (`(B, n)`, bool) marks positions whose input is the error
        at the previous, generated, position; the others read 0. With `feed="pilot_error"` the Copilot reads
        onehot(ŷ) − p̂ there (`token_embeds`, the embeddings of this call's input tokens, give onehot(ŷ)·E; p̂ from
        `pilot_logits`, this call's Pilot logits, as its `top_k` or dense with 0), with `"copilot"` its own previous
        output.

        `undefined` (`(B, n)` bool, or None when there is none) marks positions of `pilot_logits` whose prediction
        is undefined (`fusion.undefined_predictions`): with `"pilot_error"`, the position after one reads 0, as a
        prompt position does, so nothing non-finite reaches the Copilot or its cache.

        A decoding step (no position after the first generated) needs no p̂ of this call: `pilot_logits` may then be
        left out, so the Pilot's logits and the correction can share one LM-head pass afterwards; the caller then
        stores the next position's input with `store_pilot_error`.
        """
        if view is not None and view.past:
            previous, readable = view.pending()
        else:
            previous, readable = torch.zeros_like(token_embeds[:, :1]).float(), torch.ones_like(generated[:, :1])
        if feed == "pilot_error":
            # The first position reads the cached pending input; each later one the error at the position before it.
            later = torch.ones_like(generated[:, 1:]) if undefined is None else ~undefined[:, :-1]
            gate = (generated & torch.cat([readable, later], dim=1)).unsqueeze(-1)
            u, pending = self._on_pilot_errors(
                memory_x, memory_h, key_valid, token_embeds, gate, view, pilot_logits, undefined, previous, top_k
            )
        else:
            u, pending = self._on_own_output(memory_x, memory_h, key_valid, generated.unsqueeze(-1), view, previous)
            undefined = None  # its own output is what this feed reads: the Pilot's prediction does not enter
        if view is not None and pending is not None:
            view.store_pending(pending, ~undefined if undefined is not None else torch.ones_like(generated))
        return u

    def _error_pending(self, pilot_logits: torch.Tensor, undefined: torch.Tensor | None, top_k: int) -> torch.Tensor:
        """−p̂·E: the part of onehot(ŷ) − p̂ known before ŷ is chosen, p̂ as its `top_k` (the Mistake Log's form,
        k rows of E) or dense with 0 (a |V|×d product); 0 where the prediction is undefined."""
        # p̂ is detached as in teacher forcing: the Copilot reads the Pilot's errors, it does not train the Pilot.
        if top_k:
            sparse = PilotPrediction.from_logits(pilot_logits).top_k(top_k)
            if undefined is not None:  # what is stored in the cache stays finite
                sparse.topk_probs = sparse.topk_probs.masked_fill(undefined.unsqueeze(-1), 0.0)
            return -expected_embedding(self.embedding_weight().float(), sparse)
        probs = torch.softmax(pilot_logits.detach().float(), dim=-1)
        if undefined is not None:
            probs = probs.masked_fill(undefined.unsqueeze(-1), 0.0)  # what is stored in the cache stays finite
        return -(probs @ self.embedding_weight().float())

    def store_pilot_error(
        self,
        view: CopilotCacheView,
        last_logits: torch.Tensor,
        length: int,
        undefined: torch.Tensor | None,
        top_k: int = 0,
    ) -> None:
        """After a decoding step's LM head: −p̂·E of the call's last position (p̂ as in `inference`), the next
        position's input (the entries of earlier positions in the call are never read, and are stored as zeros).
        `undefined` (`(B, 1)`) marks rows whose last prediction is undefined: their next position reads 0."""
        pending = self._error_pending(last_logits, undefined, top_k)
        readable = torch.ones(pending.shape[0], length, dtype=torch.bool, device=pending.device)
        if undefined is not None:
            readable[:, -1:] = ~undefined
        view.store_pending(torch.cat([torch.zeros_like(pending).expand(-1, length - 1, -1), pending], dim=1), readable)

    def _on_pilot_errors(
        self, memory_x, memory_h, key_valid, token_embeds, generated, view, pilot_logits, undefined, previous, top_k
    ):
        """Every input is known from the Pilot's logits of this call, so the whole call runs as one chunk.

        `pending[:, t]` = −p̂_t·E: at position t + 1, once generated, the embedding of its input token ŷ_t is added.
        Without `pilot_logits` (a decoding step) only the first position can be generated, and it reads `previous`.
        """
        if pilot_logits is None:
            pending, earlier = None, torch.zeros_like(token_embeds[:, :-1]).float()
        else:
            pending = self._error_pending(pilot_logits, undefined, top_k)
            earlier = pending[:, :-1]
        inputs = (torch.cat([previous, earlier], dim=1) + token_embeds.float()) * generated
        cache, offset = (view.cache, view.first_slot) if view is not None else (None, 0)
        return self.active_network(inputs, memory_x, memory_h, key_valid, cache, offset), pending

    def _on_own_output(self, memory_x, memory_h, key_valid, generated, view, previous):
        """Up to the first generated position (exclusive, but at least one position) every input is known and runs
        as one chunk; each later position reads the previous one's output f·E = u·G, so they run one at a time.
        `pending[:, t]` = u_t·G."""
        network, gram = self.active_network, self.gram()
        batch, length, width = memory_h.shape
        past = view.past if view is not None else 0
        any_generated = generated.squeeze(-1).any(0)
        split = max(1, int(any_generated.float().argmax()) if any_generated.any() else length)
        # Without the Pilot's cache, positions after the split still need the earlier ones' keys: a scratch cache.
        cache = view.cache if view is not None else (network.scratch_cache() if split < length else None)
        offset = view.first_slot if view is not None else 0
        outputs = []
        for start, end in [(0, split)] + [(t, t + 1) for t in range(split, length)]:
            inputs = torch.zeros(batch, end - start, width, device=memory_h.device)
            inputs[:, :1] = previous * generated[:, start : start + 1]
            span_x, span_valid = network.memory_span(memory_x, key_valid, start, end, past)
            outputs.append(network(inputs, span_x, memory_h[:, start:end], span_valid, cache, offset))
            previous = outputs[-1][:, -1:].float() @ gram
        u = torch.cat(outputs, dim=1)
        return u, u.float() @ gram


class LayerPool:
    """The mean over the pooled Pilot layers, each RMS-normalised first, summed as the decoder runs (forward hooks,
    removed on leaving the `with` block): memory holds one running sum whatever the Pilot's depth, where keeping every
    layer's states to pool them afterwards held (L + 1)·B·T·d values.

    Layer i's entry is its output (a raw residual stream), except the last layer's, which is the decoder's final,
    normalised output (as transformers' `hidden_states` list them); hence every entry is normalised before averaging.
    With `first_input`, the first layer's input (the decoder's input embeddings) is kept too, as `first_input`.
    """

    def __init__(
        self, decoder: nn.Module, layers: nn.ModuleList, pooled_layers: list[int] | None, first_input: bool = False
    ) -> None:
        count = len(layers)
        self.indices = [i % count for i in pooled_layers] if pooled_layers else list(range(count))
        self.total: torch.Tensor | None = None
        self.first_input: torch.Tensor | None = None
        self._hooks = [(layers[i], i) for i in sorted(set(self.indices)) if i < count - 1]
        self._hooks += [(decoder, count - 1)] if count - 1 in self.indices else []
        self._first = layers[0] if first_input else None
        self._handles: list = []

    def __enter__(self) -> LayerPool:
        for module, index in self._hooks:
            repeats = self.indices.count(index)
            self._handles.append(module.register_forward_hook(lambda m, a, out, k=repeats: self._add(out, k)))
        if self._first is not None:
            self._handles.append(self._first.register_forward_pre_hook(self._keep_first_input, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _add(self, output, repeats: int) -> None:
        states = (output if isinstance(output, torch.Tensor) else output[0]).detach().float()
        normed = states * torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + 1e-6)
        for _ in range(repeats):
            self.total = normed if self.total is None else self.total + normed

    def _keep_first_input(self, module, args, kwargs) -> None:
        self.first_input = args[0] if args else kwargs["hidden_states"]

    def mean(self) -> torch.Tensor:
        """The pooled states `(batch, length, d_P)`, float32, detached."""
        return self.total / len(self.indices)


def generated_positions(prompt_length, past: int, batch: int, length: int, device) -> torch.Tensor:
    """`(batch, length)` bool: which of this call's positions come after the prompt (none when it is unknown)."""
    if prompt_length is None:
        return torch.zeros(batch, length, dtype=torch.bool, device=device)
    positions = past + torch.arange(length, device=device)
    return (positions[None, :] >= torch.as_tensor(prompt_length, device=device).reshape(-1, 1)).expand(batch, length)


def _whole(weight: torch.Tensor) -> torch.Tensor:
    """The whole of a Pilot weight. FSDP2 keeps a weight sharded (a `DTensor`) outside its module's forward, where the
    Copilot's training step reads the embedding and LM head: gather it then (a collective, so every process calls
    this in the same order)."""
    return weight.full_tensor() if isinstance(weight, DTensor) else weight
