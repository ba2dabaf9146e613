"""`CopilotTrainerMixin`: the Copilot's side of Algorithm 1 inside a Hugging Face `Trainer`, shared by
`CopilotSFTTrainer` (TRL's `SFTTrainer`, causal-LM Pilots) and `CopilotSeq2SeqTrainer` (`Seq2SeqTrainer`, T5-family
Pilots).

`CopilotSFTConfig.copilot_schedule` says when the Copilot learns: after the Pilot (the default: the Pilot trains for
its steps first, then the Copilot on the finished Pilot, frozen) or jointly (the paper's Algorithm 1, both at every
step); `copilot_steps_factor` says for how many steps, as a multiple of the Pilot's. Each micro-batch:

1. the Pilot's forward (full-vocabulary p̂, layer-pooled hidden states), its cross-entropy and, while the Pilot trains,
   its backward — the Pilot's optimiser steps as in any run of the base trainer;
2. while the Copilot learns, a Mistake Log append of that forward (taken before any Pilot update), or, with
   `copilot_holdout_fraction`, of the Pilot's forward on a batch of withheld data it never trains on;
3. and a Copilot update on rows drawn from the log, by a `CopilotUpdater` (its own AdamW and schedule, outside the
   Pilot's optimiser and DDP's gradient hooks). No gradient of the Copilot's loss reaches the Pilot: its inputs are
   detached and the Pilot's embedding and LM head enter it as constants.

On a frozen Pilot (the Copilot's phase of `"after_pilot"`), steps 1 and 2 stop once the log holds a whole epoch of
the Pilot's rounds (`mistake_log_reuse`): they would only log the same states again.

The mixin wires these into the trainer's hooks (`training_step`, `compute_loss`, `create_optimizer`, `log`; checkpoint
saving and loading come from `CopilotCheckpointMixin`, `checkpoint.py`); a trainer using it calls `_init_copilot()` at
the end of its `__init__`.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections import defaultdict
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from ..fusion import IGNORE_INDEX, PilotPrediction
from ..mistake_log import MistakeLog
from ..tuner import CopilotConfig, CopilotModel
from .arguments import COPILOT_SCHEDULES
from .checkpoint import CopilotCheckpointMixin
from .model_card import COPILOT_TAGS
from .parallel import check_distributed_mode, replicate_under_fsdp
from .updater import CopilotUpdater


class CopilotTrainerMixin(CopilotCheckpointMixin):
    """The Copilot's training inside a `transformers.Trainer` subclass (put it first among the bases)."""

    def _init_copilot(self) -> None:
        """Find the Copilot, set which Pilot weights train, and create the Mistake Log (after `Trainer.__init__`)."""
        check_distributed_mode(self.accelerator.state)
        self.copilot_tuner = _find_copilot_tuner(self.model)
        if self.is_fsdp_enabled:
            networks = list(self.copilot_tuner.copilot_model.values())
            replicate_under_fsdp(self.accelerator.state.fsdp_plugin, self.model, networks, self.args.device)
        self.pilot_training = _set_pilot_trainable(self.copilot_tuner.model, self.args.train_pilot)
        if hasattr(self.copilot_tuner.model, "add_model_tags"):  # PEFT's card update keeps the Pilot's tags
            self.copilot_tuner.model.add_model_tags(list(COPILOT_TAGS))
        if self.args.copilot_loss is not None:
            _override_objective(self.copilot_tuner.active_config, self.args.copilot_loss)
        self.copilot_tuner.active_config.pilot_error_top_k = (  # the adapter reads p̂ outside training as it trains
            0 if self.args.mistake_log_sampling == "current" else self.args.mistake_log_top_k
        )
        self.mistake_log = MistakeLog(
            max_rounds=self.args.mistake_log_max_rounds,
            max_bytes=self.args.mistake_log_max_bytes,
            top_k=self.args.mistake_log_top_k,
            seed=self.args.seed + self.args.process_index,
        )
        self.copilot_holdout = self._withhold_from_pilot(self.args.copilot_holdout_fraction)
        self._holdout_draws = 0
        self.copilot_updater: CopilotUpdater | None = None
        # The Pilot trains in the run's first `pilot_steps` steps; the Copilot learns for `copilot_steps` steps from
        # step `copilot_start` on (`copilot_schedule`). All are set when the run's length is known
        # (`set_initial_training_values`).
        self.pilot_steps: int | None = None
        self.copilot_start = 0
        self.copilot_steps: int | None = None
        self._captured: tuple[dict, Any] | None = None
        # Replaying a frozen Pilot's epoch from the log (`mistake_log_reuse`): set with the run's length
        # (`set_initial_training_values`).
        self._reset_replay(None)
        self._copilot_metrics: dict[str, list[float]] = defaultdict(list)
        # TRL's trainers keep per-mode metrics (`_metrics`) and log them; a plain `Trainer` does not, so they are kept
        # and logged here.
        self._logs_step_metrics = not hasattr(self, "_metrics")
        if self._logs_step_metrics:
            self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ------------------------------------------------------------------ optimisers

    def copilot_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.copilot_tuner.copilot_model[self.copilot_tuner.active_adapter].parameters()]

    def create_optimizer(self, model=None):
        # The Pilot's optimiser must not own the Copilot's weights: hide them while it collects trainable parameters.
        copilot = self.copilot_parameters()
        flags = [p.requires_grad for p in copilot]
        for p in copilot:
            p.requires_grad_(False)
        try:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        finally:
            for p, flag in zip(copilot, flags):
                p.requires_grad_(flag)

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        super().create_optimizer_and_scheduler(num_training_steps)
        self._create_copilot_updater(self.copilot_steps)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # The Pilot's schedule spans the Pilot's own steps; after them (a Copilot phase) its learning rate stays 0.
        created = self.lr_scheduler is None
        pilot_steps = self.pilot_steps or num_training_steps
        scheduler = super().create_scheduler(pilot_steps, optimizer)
        if created and pilot_steps < num_training_steps and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.lr_lambdas = [_zero_from(pilot_steps, factor) for factor in scheduler.lr_lambdas]
        return scheduler

    def set_initial_training_values(self, args, dataloader):
        """The base trainer's run length for the Pilot's steps, extended to the end of the Copilot's phase."""
        epochs, per_epoch, examples, samples, batch, in_epoch, pilot_steps = super().set_initial_training_values(
            args, dataloader
        )
        self.pilot_steps = pilot_steps
        schedule = COPILOT_SCHEDULES[args.copilot_schedule]
        frozen = self.pilot_training == "none"
        # With a frozen Pilot there is nothing to wait for, and the configured steps are the Copilot's.
        factor = args.copilot_steps_factor or (1.0 if frozen else schedule.steps_factor)
        self.copilot_steps = max(1, round(factor * pilot_steps))
        self.copilot_start = 0 if frozen else schedule.start(pilot_steps)
        pilot_phase = 0 if frozen else pilot_steps
        steps = max(pilot_phase, self.copilot_start + self.copilot_steps)
        if epochs != sys.maxsize:  # an iterable dataset's run is bounded by steps alone
            epochs = max(epochs, math.ceil(steps / per_epoch))
        # The log may replace the Pilot where the Copilot learns only from the frozen Pilot.
        reuse = self._may_reuse_log(epochs) and self.copilot_start >= pilot_phase
        self._reset_replay(in_epoch if reuse else None)
        if reuse:  # a whole epoch of rounds must fit between evictions
            self.mistake_log.bound_rounds(max(self.args.mistake_log_max_rounds, in_epoch))
        return epochs, per_epoch, examples, samples * steps // pilot_steps, batch, in_epoch, steps

    def _may_reuse_log(self, epochs: int) -> bool:
        """Whether the Mistake Log can replace a frozen Pilot once it holds an epoch (`mistake_log_reuse`)."""
        return (
            self.args.mistake_log_reuse
            # Not "current", which trains on the round just logged, nor "newest", which would weigh a held epoch's
            # last rounds most for the rest of the run.
            and self.args.mistake_log_sampling == "uniform"
            and self.copilot_holdout is None  # its rows are the withheld set's, drawn outside the epochs
            and epochs != sys.maxsize  # an iterable dataset has no epochs
        )

    def _reset_replay(self, rounds_per_epoch: int | None) -> None:
        """Replay state of a run: the micro-batches of an epoch on this process when the log may replace the Pilot
        (else None), the epoch last seen, and whether the log now replaces the Pilot."""
        self._rounds_per_epoch = rounds_per_epoch
        self._pass_epoch: int | None = None
        self.log_replaces_pilot = False
        self._replayed_pilot_loss = float("nan")

    def _create_copilot_updater(self, num_training_steps: int) -> None:
        self.copilot_updater = CopilotUpdater(
            self.copilot_parameters(),
            learning_rate=self.args.copilot_learning_rate,
            weight_decay=self.args.copilot_weight_decay,
            scheduler_type=self.args.copilot_lr_scheduler_type,
            warmup_steps=self.args.copilot_warmup_steps,
            num_training_steps=num_training_steps,
            max_grad_norm=self.args.copilot_max_grad_norm,
            num_processes=self.accelerator.num_processes,
        )

    # ------------------------------------------------------------------ the step

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = self.model.training
        inputs["use_cache"] = False
        # In training the Copilot runs in `training_step` on Mistake Log rows; in evaluation it runs teacher-forced
        # here, so `eval_copilot_loss` is measured on the evaluation data.
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch, copilot_teacher_forcing=not training)
        loss = outputs.loss
        mode = "train" if training else "eval"
        targets = self.copilot_tuner.targets_of(inputs["labels"])
        valid = targets != IGNORE_INDEX
        with torch.no_grad():
            correct = (outputs.pilot_target_logits.argmax(-1) == targets[valid]).sum()
            count = self.accelerator.gather_for_metrics(valid.sum()).sum()
            accuracy = self.accelerator.gather_for_metrics(correct).sum() / count.clamp_min(1)
        self._metrics[mode]["mean_token_accuracy"].append(accuracy.item())
        if training:
            self._captured = (inputs, outputs)
        elif outputs.copilot_loss is not None:
            self._metrics[mode]["copilot_loss"].append(
                self.accelerator.gather_for_metrics(outputs.copilot_loss).mean().item()
            )
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.copilot_updater is None:
            self._create_copilot_updater(self.copilot_steps)
        step = self.state.global_step
        copilot_learns = self.copilot_start <= step < self.copilot_start + self.copilot_steps
        if self.pilot_training != "none" and step < self.pilot_steps:
            loss = super().training_step(model, inputs, num_items_in_batch)
        elif copilot_learns and self._replays_log():
            self._freeze_pilot(model)  # an encoder-decoder Pilot's encoder runs again at replay
            with _forked_rng():
                self._learn_from_log()
            loss = self._replayed_pilot_loss / self.current_gradient_accumulation_steps
            return torch.tensor(loss, device=self.args.device)
        else:
            loss = self._frozen_pilot_step(model, inputs, num_items_in_batch)
        captured, self._captured = self._captured, None
        if captured is not None and copilot_learns:
            with _forked_rng():
                self._copilot_micro_step(*captured)
        return loss

    def _replays_log(self) -> bool:
        """Whether this frozen-Pilot micro-batch's Copilot step draws from the Mistake Log alone: the log holds a
        whole epoch of the Pilot's rounds. Decided when an epoch begins (or a run resumes), alike on every process
        (under FSDP a skipped Pilot forward would leave the others waiting in its collectives)."""
        if self._rounds_per_epoch is None:
            return False
        epoch = int(self.state.epoch)
        if epoch != self._pass_epoch:
            self._pass_epoch = epoch
            # `state.epoch` is whole only between epochs (mid-epoch it counts the micro-batches done): a pass begins.
            if self.state.epoch == epoch and not self._begin_pass():
                return False
            replaying = self._on_every_process(self.mistake_log.holds_a_pass)
            if replaying and not self.log_replaces_pilot:  # the log no longer changes: its Pilot loss neither
                self._replayed_pilot_loss = self.mistake_log.pilot_loss()
            self.log_replaces_pilot = replaying
        return self.log_replaces_pilot

    def _begin_pass(self) -> bool:
        """Start the log's next pass; False when an epoch proved too large for it on any process: then the run gives
        up replaying, and the log goes back to the configured bounds."""
        too_large = self.mistake_log.begin_pass(self._rounds_per_epoch) == "too_large"
        if self._on_every_process(not too_large):
            return True
        self._reset_replay(None)
        self.mistake_log.bound_rounds(self.args.mistake_log_max_rounds)
        return False

    def _frozen_pilot_step(self, model, inputs, num_items_in_batch) -> torch.Tensor:
        """The Pilot's forward only: it is a fixed teacher of mistakes (a Copilot-only run or phase)."""
        self._freeze_pilot(model)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch).detach()
        # Reported as the base trainer's step reports it: a loss normalised by the whole accumulated batch's token
        # count (`num_items_in_batch`) is already a share of the step's.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or bool(
                self.compute_loss_func
            )
        return loss if scaled else loss / self.current_gradient_accumulation_steps

    def _freeze_pilot(self, model) -> None:
        """Training mode for the trainer (its loss reads it) and the Copilot, evaluation mode for the frozen Pilot: its
        logged states are the ones the Copilot reads at inference (no dropout), the same in every epoch, so a logged
        epoch can stand for the next (`mistake_log_reuse`)."""
        model.train()
        self.copilot_tuner.model.eval()

    def _copilot_micro_step(self, inputs: dict, outputs) -> None:
        """Algorithm 1 lines 9 and 13–19 for one micro-batch: log the Pilot's mistakes, learn from the log."""
        if self.copilot_holdout is not None:
            inputs = self._holdout_batch()
            with torch.no_grad():
                outputs = self.model(**inputs, copilot_teacher_forcing=False)
        # Under FSDP the Copilot's step gathers the Pilot's embedding and LM head, collectives every process must
        # join, so all skip a step or none does.
        if not self._on_every_process(bool(torch.isfinite(outputs.loss.detach()).all())):
            self._copilot_metrics["copilot_skipped_steps"].append(1.0)  # nothing non-finite enters the log
            self._maybe_step_copilot()
            return
        targets = self.copilot_tuner.targets_of(inputs["labels"])
        self._log_mistakes(inputs, targets, outputs)
        if self.args.mistake_log_sampling != "current":
            self._learn_from_log()
            return
        # Decoder-only: the tokens' mask; encoder-decoder: the encoder's, over its input ids.
        attention_mask = inputs.get("attention_mask")
        key_valid = (attention_mask if attention_mask is not None else torch.ones_like(inputs["input_ids"])).bool()
        with torch.enable_grad():
            _, copilot_loss = self.copilot_tuner.copilot_teacher_forced(
                outputs.copilot_memory_x,
                outputs.copilot_memory_h,
                key_valid,
                targets,
                PilotPrediction.from_logits(outputs.pilot_target_logits),
                loss_only=True,
            )
        self._update_copilot(copilot_loss)

    def _learn_from_log(self) -> None:
        """A Copilot micro-step on rows drawn from the Mistake Log."""
        size = self.args.mistake_log_sample_size or self.args.per_device_train_batch_size
        with torch.enable_grad():
            copilot_loss = self.copilot_tuner.copilot_replay(
                self.mistake_log.sample(size, self.args.mistake_log_sampling)
            )
        self._update_copilot(copilot_loss)

    def _update_copilot(self, copilot_loss: torch.Tensor) -> None:
        self.copilot_updater.accumulate(copilot_loss, scale=1.0 / self.current_gradient_accumulation_steps)
        self._copilot_metrics["copilot_loss"].append(copilot_loss.detach().item())
        self._maybe_step_copilot()

    def _on_every_process(self, flag: bool) -> bool:
        """Whether `flag` holds on every process (a collective: every process must call it at the same point)."""
        value = torch.tensor(int(flag), device=self.args.device)
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value)

    def _log_mistakes(self, inputs: dict, targets: torch.Tensor, outputs) -> None:
        """Append this forward to the Mistake Log; an encoder-decoder Pilot's rows also keep the encoder's input."""
        logits, hidden = outputs.pilot_target_logits.detach(), outputs.copilot_memory_h
        if not self.copilot_tuner.encoder_decoder:
            self.mistake_log.append(inputs["input_ids"], inputs.get("attention_mask"), targets, hidden, logits)
            return
        decoder_ids = inputs.get("decoder_input_ids")
        if decoder_ids is None:
            decoder_ids = self.copilot_tuner.model.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])
        # Labels are right-padded with -100: keep the decoder positions up to the last target.
        has_target = targets != IGNORE_INDEX
        keep = has_target.flip(1).cummax(1).values.flip(1)
        source = inputs["input_ids"], inputs.get("attention_mask")
        self.mistake_log.append(
            decoder_ids, keep, targets, hidden, logits, source_ids=source[0], source_mask=source[1]
        )

    def _maybe_step_copilot(self) -> None:
        if self.accelerator.sync_gradients:  # the Pilot's optimiser steps now: so does the Copilot's
            norm = self.copilot_updater.step()
            if norm is not None:
                self._copilot_metrics["copilot_grad_norm"].append(norm)

    # ------------------------------------------------------------------ out-of-sample mistakes

    def _withhold_from_pilot(self, fraction: float) -> Dataset | None:
        """Split a seeded `fraction` of the training set off the Pilot's data; it feeds only the Mistake Log."""
        if not fraction:
            return None
        dataset = self.train_dataset
        if not isinstance(dataset, Dataset):
            raise ValueError(
                "copilot_holdout_fraction needs a map-style `datasets.Dataset` to split, got "
                f"{type(dataset).__name__}."
            )
        count = round(fraction * len(dataset))
        if not 0 < count < len(dataset):
            raise ValueError(
                f"copilot_holdout_fraction={fraction} of {len(dataset)} training rows leaves {count} rows for the "
                "Copilot; it must leave at least one row for each of the Copilot and the Pilot."
            )
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.args.seed)).tolist()
        self.train_dataset = dataset.select(sorted(order[count:]))
        # The Pilot's batches lose the columns its forward does not take when their loader is built; these are
        # collated here directly, so they lose them now.
        return self._remove_unused_columns(dataset.select(sorted(order[:count])), description="Copilot holdout")

    def _holdout_batch(self) -> dict:
        """The next batch of withheld rows: a seeded reshuffle per pass, each process reading its own slice, and a
        draw counter saved with checkpoints so a resumed run reads the same rows."""
        size, rows = self.args.per_device_train_batch_size, len(self.copilot_holdout)
        start = (self._holdout_draws * self.args.world_size + self.args.process_index) * size
        orders: dict[int, list[int]] = {}
        picks = []
        for position in range(start, start + size):
            cycle = position // rows
            if cycle not in orders:
                generator = torch.Generator().manual_seed(self.args.seed + 1 + cycle)
                orders[cycle] = torch.randperm(rows, generator=generator).tolist()
            picks.append(orders[cycle][position % rows])
        self._holdout_draws += 1
        batch = self.data_collator([self.copilot_holdout[i] for i in picks])
        return {**self._prepare_inputs(batch), "use_cache": False}

    # ------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._copilot_metrics:
            for key, values in self._copilot_metrics.items():
                logs[key] = sum(values) / len(values) if key != "copilot_skipped_steps" else sum(values)
            self._copilot_metrics.clear()
            logs["copilot_learning_rate"] = self.copilot_updater.learning_rate if self.copilot_updater else 0.0
            logs["mistake_log_rows"] = len(self.mistake_log)
            logs["mistake_log_bytes"] = self.mistake_log.total_bytes
            logs["mistake_log_bytes_per_token"] = self.mistake_log.bytes_per_token
            logs["mistake_log_replay"] = float(self.log_replaces_pilot)
        if self._logs_step_metrics:
            mode, prefix = ("train", "") if self.model.training else ("eval", "eval_")
            for key, values in self._metrics[mode].items():
                logs[prefix + key] = sum(values) / len(values)
            self._metrics[mode].clear()
        super().log(logs, start_time)


# ---------------------------------------------------------------------- helpers


def _forked_rng():
    """The Copilot's step draws random numbers (dropout in a withheld batch's or a replayed encoder's forward, in the
    Copilot itself); on a forked generator, so the Pilot's own draws, and its training, are exactly those of a run
    without a Copilot."""
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else [])


def _override_objective(config: CopilotConfig, loss: str) -> None:
    """Train with `loss` instead of the adapter's objective, and record it in the adapter (saved adapters say how they
    were trained). Fusion and feed stay as configured, which may not be what `loss` trains for: say so."""
    if loss != config.copilot_loss:
        warnings.warn(
            f"CopilotSFTConfig.copilot_loss={loss!r} overrides the adapter's copilot_loss={config.copilot_loss!r}; "
            f"its fusion_mode={config.fusion_mode!r} and inference_feed={config.inference_feed!r} are kept. For "
            f"{loss!r}'s own, create the adapter with CopilotConfig(copilot_loss={loss!r}) instead.",
            stacklevel=3,
        )
    config.copilot_loss = loss


def _zero_from(step: int, factor):
    """A learning-rate factor that is `factor`'s before `step` and 0 from it on (a closure: not saved with the
    scheduler's state, rebuilt by `create_scheduler` on resume)."""
    return lambda current: factor(current) if current < step else 0.0


def has_copilot(model) -> bool:
    return isinstance(model, PeftModel) and isinstance(model.base_model, CopilotModel)


def _find_copilot_tuner(model) -> CopilotModel:
    for module in model.modules():
        if isinstance(module, CopilotModel):
            return module
    raise ValueError("The trainer's model has no Copilot adapter.")


def _set_pilot_trainable(pilot: torch.nn.Module, mode: str) -> str:
    has_lora = any(isinstance(m, LoraLayer) for m in pilot.modules())
    quantized = bool(
        getattr(pilot, "is_loaded_in_4bit", False)
        or getattr(pilot, "is_loaded_in_8bit", False)
        or getattr(pilot, "hf_quantizer", None) is not None
    )
    if mode == "auto":
        mode = "adapter" if has_lora else "full"
    if mode == "adapter" and not has_lora:
        raise ValueError("train_pilot='adapter' needs a LoRA-tuned Pilot, but the Pilot has no LoRA adapters.")
    if mode == "full" and quantized:
        raise ValueError(
            "A quantized Pilot has no trainable weights of its own: give it LoRA adapters first (QLoRA: "
            "`get_peft_model(pilot, LoraConfig(...))`, then the Copilot), or set train_pilot='none' to train only "
            "the Copilot."
        )
    for name, parameter in pilot.named_parameters():
        if mode == "full":
            parameter.requires_grad_(parameter.is_floating_point())
        elif mode == "adapter":
            parameter.requires_grad_("lora_" in name)
        else:
            parameter.requires_grad_(False)
    return mode
