"""The Mistake Log (the paper's §2.2, App. A.3): a bounded, compact ring buffer of what the Pilot got wrong.

Each training round appends, per sequence, what the Copilot needs to learn from that round's Pilot forward (taken
before the Pilot's update):

* the input ids, from which X̃ = E[x] is rebuilt (exact for a frozen embedding: LoRA or quantized Pilots); for an
  encoder-decoder Pilot, the decoder's input ids and the encoder's (`source_ids`), from which X̃, the encoder
  output, is recomputed by the Pilot's current encoder when the row is replayed (storing it would cost
  source length × width per row);
* the layer-pooled Pilot hidden states, in 16-bit;
* the next-token targets, and at target positions only the top-k of p̂ (16-bit probabilities, int32 ids) and the
  gold token's log-probability (float32), from which ℓ = onehot(y) − p̂ is rebuilt (the mass outside the top-k is
  dropped) and the fused cross-entropy is evaluated (the tail outside the top-k and the gold token spread evenly; see
  `fusion.fused_cross_entropy`).

A dense |V|-sized ℓ is never stored. The buffer is bounded by rounds (default 128, as in the paper) and by bytes;
the oldest rounds go first. Everything lives on the CPU, detached.

Passes: the trainer marks where each pass over the training data (an epoch) begins (`begin_pass`). Once the log
holds every round of one whole pass of a Pilot that no longer changes (`holds_a_pass`; then nothing else: older
rounds are dropped, so no row is there twice), it is the Copilot's whole training set, and the trainer stops running
the Pilot (`CopilotSFTConfig.mistake_log_reuse`).

API: `append(...)`, `sample(batch_size, policy)`, `begin_pass(rounds)`, `holds_a_pass`, `bound_rounds(n)`,
`pilot_loss()`, `bytes_per_token`, `total_bytes`, `state_dict()` / `load_state_dict()` (safetensors-compatible
tensors plus JSON-able metadata, for checkpoints).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from .fusion import IGNORE_INDEX, PilotPrediction


def _uniform_weights(rounds) -> torch.Tensor:
    return torch.ones(sum(len(rows) for rows in rounds))


def _newest_weights(rounds) -> torch.Tensor:
    """Each row weighs its round's recency rank: the newest round weighs most."""
    return torch.cat([torch.full((len(rows),), float(rank + 1)) for rank, rows in enumerate(rounds)])


# The sampling policies that draw rows from the whole log, each as the per-row weights of `torch.multinomial` (a new
# policy is one entry here).
ROW_WEIGHTS = {"uniform": _uniform_weights, "newest": _newest_weights}
# What the Copilot trains on each step: "current" the round just logged (the trainer then uses its exact p̂), or rows
# drawn from the log by one of `ROW_WEIGHTS`.
SAMPLING_POLICIES = ("current", *ROW_WEIGHTS)
DEFAULT_SAMPLING = "uniform"
# The log's bounds and top-k, shared by `MistakeLog` and the trainers' `mistake_log_*` arguments.
DEFAULT_MAX_ROUNDS = 128  # as in the paper
DEFAULT_MAX_BYTES = 512 * 2**20
DEFAULT_TOP_K = 8
ROW_FIELDS = ("input_ids", "targets", "hidden", "topk_probs", "topk_ids", "gold_log_probs", "source_ids")


@dataclass
class MistakeLogRow:
    """One logged sequence (unpadded)."""

    input_ids: torch.Tensor  # (T,) int32
    targets: torch.Tensor  # (T,) int32, -100 where there is no target
    hidden: torch.Tensor  # (T, d) 16-bit, the layer-pooled Pilot states
    topk_probs: torch.Tensor  # (n_valid, k) float16, at target positions only
    topk_ids: torch.Tensor  # (n_valid, k) int32
    gold_log_probs: torch.Tensor  # (n_valid,) float32, log p̂ of the gold token
    source_ids: torch.Tensor  # (S,) int32, the encoder's input ids (empty for a decoder-only Pilot)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in ROW_FIELDS)


@dataclass
class MistakeLogBatch:
    """A padded batch rebuilt from logged rows, ready for `CopilotModel.copilot_teacher_forced`."""

    input_ids: torch.Tensor  # (B, T) long, padded with 0
    attention_mask: torch.Tensor  # (B, T) bool
    targets: torch.Tensor  # (B, T) long, -100 on padding and where there is no target
    hidden: torch.Tensor  # (B, T, d)
    topk_probs: torch.Tensor  # (B, T, k) float32, zero where there is no target
    topk_ids: torch.Tensor  # (B, T, k) long
    gold_log_probs: torch.Tensor  # (B, T) float32, zero where there is no target
    source_ids: torch.Tensor  # (B, S) long, padded with 0 (S = 0 for a decoder-only Pilot)
    source_mask: torch.Tensor  # (B, S) bool

    def to(self, device: torch.device | str) -> MistakeLogBatch:
        return MistakeLogBatch(*(t.to(device) for t in self.__dict__.values()))

    def prediction(self) -> PilotPrediction:
        """The logged p̂, per position, in its sparse form."""
        return PilotPrediction(topk_probs=self.topk_probs, topk_ids=self.topk_ids, gold_log_probs=self.gold_log_probs)


class MistakeLog:
    """Bounded ring buffer of Pilot mistakes.

    Args:
        max_rounds (`int`, defaults to 128): keep at most this many most recent training rounds.
        max_bytes (`int`, defaults to 512 MiB): keep at most this many bytes; a single round larger than this is an
            error that says how much it needs.
        top_k (`int`, defaults to 8): how many of the Pilot's most probable tokens are kept per target position.
        hidden_dtype (`torch.dtype`, defaults to `torch.bfloat16`): storage dtype of the pooled hidden states.
        seed (`int`, defaults to 0): seed of the sampling generator (saved with the log, so a resumed run samples the
            same rows).
    """

    def __init__(
        self,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        top_k: int = DEFAULT_TOP_K,
        hidden_dtype: torch.dtype = torch.bfloat16,
        seed: int = 0,
    ) -> None:
        if max_rounds < 1:
            raise ValueError(f"MistakeLog max_rounds must be >= 1, got {max_rounds}.")
        if max_bytes < 1:
            raise ValueError(f"MistakeLog max_bytes must be >= 1, got {max_bytes}.")
        if top_k < 1:
            raise ValueError(f"MistakeLog top_k must be >= 1, got {top_k}.")
        self.max_rounds = max_rounds
        self.max_bytes = max_bytes
        self.top_k = top_k
        self.hidden_dtype = hidden_dtype
        self.generator = torch.Generator().manual_seed(seed)
        self.rounds: deque[list[MistakeLogRow]] = deque()
        self.total_bytes = 0
        self.total_tokens = 0
        self.appended_rounds = 0
        self.pass_start: int | None = None  # `appended_rounds` when the pass being logged began
        self.holds_a_pass = False

    # ------------------------------------------------------------------ writing

    def begin_pass(self, rounds_per_pass: int) -> str:
        """Mark the start of a pass over the training data, ending the one before it.

        Args:
            rounds_per_pass (`int`): the rounds a whole pass appends (micro-batches per epoch, on this process).

        Returns:
            `str`, what became of the pass that ends here: `"held"` (all its rounds were appended and are all in the
            log, which now keeps only them: `holds_a_pass`), `"too_large"` (all were appended, but the log's bounds
            evicted some: a pass does not fit), or `"partial"` (none was begun, or it lacks rounds: it began
            mid-epoch, or rounds with non-finite values were refused).
        """
        ended, self.pass_start = self.pass_start, self.appended_rounds
        if ended is None or self.appended_rounds - ended != rounds_per_pass:
            return "partial"
        if self.appended_rounds - len(self.rounds) > ended:  # rounds leave oldest first
            return "too_large"
        while len(self.rounds) > rounds_per_pass:  # the tail of an earlier epoch: its rows are in the pass again
            self._drop_oldest()
        self.holds_a_pass = True
        return "held"

    @torch.no_grad()
    def append(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        targets: torch.Tensor,
        hidden: torch.Tensor,
        target_logits: torch.Tensor,
        source_ids: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
    ) -> list[MistakeLogRow]:
        """Log one training round (a micro-batch). Padding is dropped; rows with non-finite values are refused.

        Args:
            input_ids, attention_mask, targets: `(B, T)`; `targets[:, t]` is the token after position t or -100.
            hidden: `(B, T, d)` layer-pooled Pilot states.
            target_logits: the Pilot's logits at the target positions (`targets != -100`), packed row-major as
                `(N, V)` (`CopilotCausalLMOutput.pilot_target_logits`). Only their top-k probabilities are kept.
            source_ids, source_mask: `(B, S)`, an encoder-decoder Pilot's encoder input (padding dropped).

        Returns:
            The rows that were logged (possibly fewer than B).
        """
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if source_ids is None:
            source_ids = input_ids[:, :0]
        source_keep = torch.ones_like(source_ids, dtype=torch.bool) if source_mask is None else source_mask.bool()
        has_target = targets != IGNORE_INDEX
        per_row = target_logits.split(has_target.sum(1).tolist())
        rows = []
        for b in range(input_ids.shape[0]):
            keep = mask[b]
            row_targets = torch.where(has_target[b], targets[b], IGNORE_INDEX)[keep]
            logits = per_row[b][keep[has_target[b]]]  # target positions that are not padding
            row_hidden = hidden[b][keep]
            if not (torch.isfinite(row_hidden).all() and torch.isfinite(logits).all()):
                continue  # nothing non-finite enters the buffer
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            top_log_probs, top_ids = log_probs.topk(min(self.top_k, log_probs.shape[-1]), dim=-1)
            gold = row_targets[row_targets != IGNORE_INDEX].long()
            rows.append(
                MistakeLogRow(
                    input_ids=input_ids[b][keep].to("cpu", torch.int32),
                    targets=row_targets.to("cpu", torch.int32),
                    hidden=row_hidden.to("cpu", self.hidden_dtype),
                    topk_probs=top_log_probs.exp().to("cpu", torch.float16),
                    topk_ids=top_ids.to("cpu", torch.int32),
                    gold_log_probs=log_probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1).to("cpu"),
                    source_ids=source_ids[b][source_keep[b]].to("cpu", torch.int32),
                )
            )
        round_bytes = sum(row.nbytes for row in rows)
        if round_bytes > self.max_bytes:
            raise ValueError(
                f"The Mistake Log's byte budget ({self.max_bytes} bytes) is smaller than one micro-batch, which needs "
                f"{round_bytes} bytes; raise mistake_log_max_bytes to at least {round_bytes}."
            )
        if rows:
            self.rounds.append(rows)
            self.total_bytes += round_bytes
            self.total_tokens += sum(len(row.input_ids) for row in rows)
            self.appended_rounds += 1
            self._evict()
        return rows

    def bound_rounds(self, max_rounds: int) -> None:
        """Keep at most `max_rounds` rounds from now on; the oldest beyond them go now."""
        self.max_rounds = max_rounds
        self._evict()

    def _evict(self) -> None:
        while len(self.rounds) > self.max_rounds or self.total_bytes > self.max_bytes:
            self._drop_oldest()
            self.holds_a_pass = False  # the dropped round may have belonged to the held pass

    def _drop_oldest(self) -> None:
        dropped = self.rounds.popleft()
        self.total_bytes -= sum(row.nbytes for row in dropped)
        self.total_tokens -= sum(len(row.input_ids) for row in dropped)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.rounds)

    @property
    def bytes_per_token(self) -> float:
        return self.total_bytes / max(self.total_tokens, 1)

    def pilot_loss(self) -> float:
        """The logged Pilot's cross-entropy, averaged over every target token the log holds."""
        gold = [row.gold_log_probs for rows in self.rounds for row in rows]
        return -torch.cat(gold).mean().item() if gold else float("nan")

    def sample(self, batch_size: int, policy: str = DEFAULT_SAMPLING) -> MistakeLogBatch:
        """Draw rows: `"current"` the newest round as is, `"uniform"` uniformly over all logged rows, `"newest"` with
        probability proportional to the round's recency rank (the newest round weighs most)."""
        if not self.rounds:
            raise ValueError("The Mistake Log is empty; append a round before sampling.")
        if policy not in SAMPLING_POLICIES:
            raise ValueError(f"Mistake Log sampling policy must be one of {SAMPLING_POLICIES}, got {policy!r}.")
        if policy == "current":
            return self.collate(self.rounds[-1])
        rows = [row for rows in self.rounds for row in rows]
        weights = ROW_WEIGHTS[policy](self.rounds)
        picks = torch.multinomial(weights, batch_size, replacement=len(rows) < batch_size, generator=self.generator)
        return self.collate([rows[i] for i in picks.tolist()])

    def collate(self, rows: list[MistakeLogRow]) -> MistakeLogBatch:
        """Pad rows into a batch and scatter each row's top-k back onto its target positions."""
        length = max(len(row.input_ids) for row in rows)
        source_length = max(len(row.source_ids) for row in rows)
        batch, width, k = len(rows), rows[0].hidden.shape[-1], rows[0].topk_probs.shape[-1]
        out = MistakeLogBatch(
            input_ids=torch.zeros(batch, length, dtype=torch.long),
            attention_mask=torch.zeros(batch, length, dtype=torch.bool),
            targets=torch.full((batch, length), IGNORE_INDEX, dtype=torch.long),
            hidden=torch.zeros(batch, length, width, dtype=torch.float32),
            topk_probs=torch.zeros(batch, length, k, dtype=torch.float32),
            topk_ids=torch.zeros(batch, length, k, dtype=torch.long),
            gold_log_probs=torch.zeros(batch, length, dtype=torch.float32),
            source_ids=torch.zeros(batch, source_length, dtype=torch.long),
            source_mask=torch.zeros(batch, source_length, dtype=torch.bool),
        )
        for b, row in enumerate(rows):
            n = len(row.input_ids)
            out.input_ids[b, :n] = row.input_ids
            out.attention_mask[b, :n] = True
            out.targets[b, :n] = row.targets
            out.hidden[b, :n] = row.hidden.float()
            valid = torch.nonzero(row.targets != IGNORE_INDEX).squeeze(-1)
            out.topk_probs[b, valid] = row.topk_probs.float()
            out.topk_ids[b, valid] = row.topk_ids.long()
            out.gold_log_probs[b, valid] = row.gold_log_probs.float()
            out.source_ids[b, : len(row.source_ids)] = row.source_ids
            out.source_mask[b, : len(row.source_ids)] = True
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Flat tensors (safetensors-compatible) and JSON-able metadata that rebuild the log exactly."""
        tensors: dict[str, torch.Tensor] = {}
        round_sizes = []
        for r, rows in enumerate(self.rounds):
            round_sizes.append(len(rows))
            for i, row in enumerate(rows):
                for name, tensor in zip(ROW_FIELDS, row.tensors()):
                    tensors[f"round{r}.row{i}.{name}"] = tensor.contiguous()
        tensors["generator_state"] = self.generator.get_state()
        meta = {
            "max_rounds": self.max_rounds,
            "max_bytes": self.max_bytes,
            "top_k": self.top_k,
            "hidden_dtype": str(self.hidden_dtype).removeprefix("torch."),
            "round_sizes": round_sizes,
            "appended_rounds": self.appended_rounds,
            "pass_start": self.pass_start,
            "holds_a_pass": self.holds_a_pass,
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.max_rounds, self.max_bytes, self.top_k = meta["max_rounds"], meta["max_bytes"], meta["top_k"]
        self.hidden_dtype = getattr(torch, meta["hidden_dtype"])
        self.generator.set_state(tensors["generator_state"])
        self.rounds = deque()
        for r, size in enumerate(meta["round_sizes"]):
            for i in range(size):  # logs written before encoder-decoder Pilots were supported have no source ids
                tensors.setdefault(f"round{r}.row{i}.source_ids", torch.zeros(0, dtype=torch.int32))
            missing = [name for name in ROW_FIELDS if size and f"round{r}.row0.{name}" not in tensors]
            if missing:
                raise ValueError(
                    f"The saved Mistake Log lacks {missing} (it was written by an older version or is truncated)."
                )
            self.rounds.append(
                [MistakeLogRow(*(tensors[f"round{r}.row{i}.{name}"] for name in ROW_FIELDS)) for i in range(size)]
            )
        self.total_bytes = sum(row.nbytes for rows in self.rounds for row in rows)
        self.total_tokens = sum(len(row.input_ids) for rows in self.rounds for row in rows)
        self.appended_rounds = meta["appended_rounds"]
        # Logs saved before passes were marked hold none.
        self.pass_start, self.holds_a_pass = meta.get("pass_start"), meta.get("holds_a_pass", False)


def dense_error_bytes_per_token(vocab_size: int, bytes_per_value: int = 2) -> int:
    """What storing a dense ℓ would cost per token (16-bit by default), for comparison with `bytes_per_token`."""
    return vocab_size * bytes_per_value
