"""`CopilotTrainingArguments`: the Copilot's optimiser, loss and Mistake Log settings, shared by the trainers'
configurations (`CopilotSFTConfig` in `sft_config.py`, `CopilotSeq2SeqConfig` in `seq2seq_config.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..fusion import OBJECTIVES
from ..mistake_log import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROUNDS, DEFAULT_SAMPLING, DEFAULT_TOP_K, SAMPLING_POLICIES
from ..tuner.config import OBJECTIVE_HELP


PILOT_TRAINING_MODES = ("auto", "full", "adapter", "none")


@dataclass(frozen=True)
class CopilotSchedule:
    """When the Copilot learns within a run of `pilot_steps` Pilot steps (`CopilotTrainingArguments.copilot_schedule`):
    from step `start(pilot_steps)`, for `steps_factor × pilot_steps` steps unless `copilot_steps_factor` is set."""

    start: Callable[[int], int]
    steps_factor: float


COPILOT_SCHEDULES = {
    # On the finished Pilot, frozen, for four times the Pilot's steps: of 1, 2 and 4, the length with the best
    # validation cross-entropy skill (benchmarks/RESULTS_DIAGNOSIS.md, `count_then_max`, 3 seeds).
    "after_pilot": CopilotSchedule(start=lambda pilot_steps: pilot_steps, steps_factor=4.0),
    # The paper's Algorithm 1: both at every step, for the Pilot's steps.
    "joint": CopilotSchedule(start=lambda pilot_steps: 0, steps_factor=1.0),
}


@dataclass
class CopilotTrainingArguments:
    r"""
    The Copilot's own training settings, shared by [`CopilotSFTConfig`] and [`CopilotSeq2SeqConfig`].

    Args:
        copilot_learning_rate (`float`, defaults to 1e-3):
            Peak learning rate of the Copilot's own AdamW: what benchmarks/RESULTS.md measured (the paper uses 3e-4 to
            5e-4 on 7B-8B Pilots).
        copilot_warmup_steps (`int`, defaults to 0):
            Linear warm-up steps of the Copilot's schedule.
        copilot_lr_scheduler_type (`str`, defaults to `"cosine"`):
            The Copilot's schedule (any `transformers.get_scheduler` name).
        copilot_weight_decay (`float`, defaults to 0.0):
            The Copilot's AdamW weight decay.
        copilot_max_grad_norm (`float`, defaults to 1.0):
            Gradient-norm clip of the Copilot's update (0 disables it).
        copilot_loss (`str`, *optional*):
            Overrides the adapter's `CopilotConfig.copilot_loss` for this run (and is recorded in it when the adapter
            is saved): `"fused_ce"` the cross-entropy of the logit-fused prediction; `"rmse"` the paper's per-token
            L2 norm ||f − ℓ|| (Eq. 7); `"mse"` its square. Unset, the adapter's objective is used. Fusion and feed
            stay as the adapter's config has them.
        copilot_schedule (`str`, defaults to `"after_pilot"`):
            When the Copilot learns. `"after_pilot"`: the Pilot trains for the configured epochs or steps first, then
            the Copilot trains (for four times as many steps, `copilot_steps_factor`) on the finished Pilot, frozen,
            so its Mistake Log holds only the errors the finished Pilot makes (each step of that phase costs a Pilot
            forward and a Copilot step). `"joint"`: the paper's Algorithm 1, both at every step, the Copilot learning
            from a Pilot that is still changing. On the same steps, the Copilot trained after the Pilot reaches 1.7×
            to 2.3× the held-out cross-entropy skill of the joint one (benchmarks/RESULTS_DIAGNOSIS.md). With
            `train_pilot="none"` the two are the same: the Copilot learns from the first step.
        copilot_steps_factor (`float`, *optional*):
            How long the Copilot learns, as a multiple of the Pilot's steps (the configured epochs or `max_steps`),
            rounded, at least one step; the Copilot's learning-rate schedule spans exactly these steps. The run takes
            `max(Pilot's steps, start + Copilot's steps)` steps, the data loader cycling through further epochs when
            the Copilot needs them. Unset: the schedule's own (`COPILOT_SCHEDULES`: `"after_pilot"` 4, `"joint"` 1,
            the paper's), and 1 with `train_pilot="none"`, whose configured steps are the Copilot's.
        train_pilot (`str`, defaults to `"auto"`):
            Which Pilot weights train: `"full"` all of them, `"adapter"` only its LoRA, `"none"` none (a Copilot-only
            phase on a fixed Pilot); `"auto"` is `"adapter"` for a LoRA Pilot and `"full"` otherwise.
        mistake_log_max_rounds (`int`, defaults to 128):
            The Mistake Log keeps the most recent this many rounds (micro-batches), as in the paper.
        mistake_log_max_bytes (`int`, defaults to 512 MiB):
            Byte budget of the Mistake Log (per process); the oldest rounds are dropped first.
        mistake_log_top_k (`int`, defaults to 8):
            How many of the Pilot's most probable tokens are kept per target position to rebuild ℓ.
        mistake_log_sampling (`str`, defaults to `"uniform"`):
            What the Copilot trains on each step: `"current"` the round just logged (exact p̂), `"uniform"` rows drawn
            uniformly from the log, `"newest"` rows drawn with weight growing with recency.
        mistake_log_sample_size (`int`, *optional*):
            Rows per Copilot step when sampling from the log; defaults to `per_device_train_batch_size`.
        mistake_log_reuse (`bool`, defaults to `True`):
            In a Copilot phase on a frozen Pilot (`"after_pilot"`'s, or any with `train_pilot="none"`) the Pilot's
            states of a training row no longer change: once the Mistake Log holds a whole epoch of them, the Copilot
            trains from the log alone and the Pilot stops running (its reported `loss` is then the frozen Pilot's
            mean over the log). For this the log keeps at least an epoch of rounds (`mistake_log_max_rounds` is
            raised to it); once an epoch proves larger than `mistake_log_max_bytes`, the configured bound returns
            and the Pilot runs every step as before. Only with `mistake_log_sampling="uniform"`, without
            `copilot_holdout_fraction`, on a dataset with a length.
        copilot_holdout_fraction (`float`, defaults to 0.0):
            Out-of-sample mistakes: this fraction of the training set is withheld from the Pilot (a seeded split),
            and the Mistake Log records the Pilot's forward on batches of it instead of on the Pilot's own batches,
            so the Copilot learns errors on data the Pilot has never fitted (as stacking learns on out-of-fold
            predictions). Costs one extra forward pass of the Pilot per micro-batch; 0 turns it off.
    """

    copilot_learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the Copilot."})
    copilot_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps of the Copilot's schedule."})
    copilot_lr_scheduler_type: str = field(default="cosine", metadata={"help": "The Copilot's LR schedule."})
    copilot_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the Copilot's AdamW."})
    copilot_max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clip of the Copilot (0: off)."})
    copilot_loss: Literal[tuple(OBJECTIVES)] | None = field(
        default=None, metadata={"help": "Override the adapter's objective for this run. " + OBJECTIVE_HELP}
    )
    copilot_schedule: str = field(
        default="after_pilot",
        metadata={
            "help": "When the Copilot learns: after_pilot (on the finished Pilot, frozen, for 4x its steps) or joint "
            "(the paper's Algorithm 1).",
            "choices": tuple(COPILOT_SCHEDULES),
        },
    )
    copilot_steps_factor: float | None = field(
        default=None,
        metadata={"help": "How long the Copilot learns, as a multiple of the Pilot's steps (unset: the schedule's)."},
    )
    train_pilot: str = field(
        default="auto",
        metadata={"help": "Which Pilot weights train: auto, full, adapter or none.", "choices": PILOT_TRAINING_MODES},
    )
    mistake_log_max_rounds: int = field(
        default=DEFAULT_MAX_ROUNDS, metadata={"help": "Rounds kept in the Mistake Log."}
    )
    mistake_log_max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata={"help": "Byte budget of the Mistake Log."})
    mistake_log_top_k: int = field(default=DEFAULT_TOP_K, metadata={"help": "Top-k of p̂ kept per target token."})
    mistake_log_sampling: str = field(
        default=DEFAULT_SAMPLING,
        metadata={"help": "Copilot training rows: current, uniform or newest.", "choices": SAMPLING_POLICIES},
    )
    mistake_log_sample_size: int | None = field(
        default=None, metadata={"help": "Rows per Copilot step; defaults to per_device_train_batch_size."}
    )
    mistake_log_reuse: bool = field(
        default=True,
        metadata={"help": "Once the log holds an epoch of a frozen Pilot's states, train the Copilot from it alone."},
    )
    copilot_holdout_fraction: float = field(
        default=0.0,
        metadata={"help": "Fraction of the training set withheld from the Pilot, on which its mistakes are logged."},
    )

    def check_copilot_arguments(self) -> None:
        """Refuse, by name, a Copilot setting out of range (called by each config's `__post_init__`)."""
        if self.copilot_loss is not None and self.copilot_loss not in OBJECTIVES:
            raise ValueError(f"copilot_loss must be one of {tuple(OBJECTIVES)}, got {self.copilot_loss!r}.")
        if self.copilot_schedule not in COPILOT_SCHEDULES:
            raise ValueError(
                f"copilot_schedule must be one of {tuple(COPILOT_SCHEDULES)}, got {self.copilot_schedule!r}."
            )
        if self.train_pilot not in PILOT_TRAINING_MODES:
            raise ValueError(f"train_pilot must be one of {PILOT_TRAINING_MODES}, got {self.train_pilot!r}.")
        if self.mistake_log_sampling not in SAMPLING_POLICIES:
            raise ValueError(
                f"mistake_log_sampling must be one of {SAMPLING_POLICIES}, got {self.mistake_log_sampling!r}."
            )
        if not 0.0 <= self.copilot_holdout_fraction < 1.0:
            raise ValueError(f"copilot_holdout_fraction must be in [0, 1), got {self.copilot_holdout_fraction!r}.")
        if self.copilot_steps_factor is not None and not self.copilot_steps_factor > 0:
            raise ValueError(f"copilot_steps_factor must be > 0, got {self.copilot_steps_factor!r}.")
        if self.copilot_learning_rate <= 0:
            raise ValueError(f"copilot_learning_rate must be > 0, got {self.copilot_learning_rate}.")
