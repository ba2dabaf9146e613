"""`CopilotCheckpointMixin`: what a Copilot trainer's checkpoint holds beyond the base trainer's, and how a resumed
run reads it back.

Beside the trainer's own files, a checkpoint holds the Copilot's optimiser, schedule and withheld-data position
(`copilot_trainer_state.pt`), each process's Mistake Log (`mistake_log_rank{i}.safetensors` + `.json`) and, when the
whole Pilot trains, the Pilot's weights (`pilot/`: a PEFT adapter holds only the Copilot). Every adapter folder the
trainer writes, and its output folder, carries the Copilot's model card (`model_card.py`).
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from safetensors.torch import load_file, save_file

from ..mistake_log import MistakeLog
from .model_card import copilot_model_card


COPILOT_STATE_NAME = "copilot_trainer_state.pt"
MISTAKE_LOG_NAME = "mistake_log"
PILOT_WEIGHTS_DIR = "pilot"


class CopilotCheckpointMixin:
    """The checkpoint hooks of `CopilotTrainerMixin` (saving and resuming the Copilot's side of the run)."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        rank = self.args.process_index
        if self.copilot_updater is not None and self.args.should_save:
            state = {
                **self.copilot_updater.state_dict(),
                "holdout_draws": self._holdout_draws,
                "holdout_rows": len(self.copilot_holdout) if self.copilot_holdout is not None else 0,
            }
            torch.save(state, os.path.join(output_dir, COPILOT_STATE_NAME))
        # Every process keeps its own log (it logs its own micro-batches), so every process saves it.
        tensors, meta = self.mistake_log.state_dict()
        save_file(tensors, os.path.join(output_dir, f"{MISTAKE_LOG_NAME}_rank{rank}.safetensors"))
        with open(os.path.join(output_dir, f"{MISTAKE_LOG_NAME}_rank{rank}.json"), "w") as handle:
            json.dump(meta, handle)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        if self.copilot_updater is None:
            self._create_copilot_updater(self.copilot_steps)
        state_path = os.path.join(checkpoint, COPILOT_STATE_NAME)
        if os.path.exists(state_path):
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            self.copilot_updater.load_state_dict(state)
            rows = len(self.copilot_holdout) if self.copilot_holdout is not None else 0
            if state.get("holdout_rows", 0) != rows:
                raise ValueError(
                    f"{state_path} was written with {state.get('holdout_rows', 0)} withheld rows, this run withholds "
                    f"{rows}: resume with the same training set, seed and copilot_holdout_fraction."
                )
            self._holdout_draws = state.get("holdout_draws", 0)
        log_path = os.path.join(checkpoint, f"{MISTAKE_LOG_NAME}_rank{self.args.process_index}")
        if os.path.exists(log_path + ".safetensors"):
            self._resume_mistake_log(log_path)

    def _resume_mistake_log(self, log_path: str) -> None:
        """Reload the log saved with a checkpoint. One that cannot be read, was written by an older version or does
        not fit this Copilot (another run's) is dropped with a warning saying why: the log is a cache of recent
        rounds and refills within a few steps, so a resume never fails on it."""
        try:
            with open(log_path + ".json") as handle:
                meta = json.load(handle)
            log = MistakeLog(seed=self.args.seed + self.args.process_index)
            log.load_state_dict(load_file(log_path + ".safetensors"), meta)
            # A log saved before it could hold an epoch for replay (`mistake_log_reuse`) keeps this run's bound.
            log.max_rounds = max(log.max_rounds, self.mistake_log.max_rounds)
            width = self.copilot_tuner.active_network.config.memory_size
            if log.rounds and log.rounds[0][0].hidden.shape[-1] != width:
                raise ValueError(f"its rows hold states of width {log.rounds[0][0].hidden.shape[-1]}, not {width}.")
        except Exception as error:  # noqa: BLE001  (safetensors, JSON and format errors alike)
            warnings.warn(
                f"{log_path}.safetensors: cannot be resumed ({error}). The Copilot resumes with an empty Mistake Log.",
                stacklevel=2,
            )
            return
        self.mistake_log = log

    def create_model_card(self, model_name: str | None = None, *args, **kwargs) -> None:
        """The Copilot's card in the output folder, instead of the base trainer's draft (which names the Pilot only
        when it is a Hub id, and says nothing of the Copilot or of how to load it)."""
        if self.is_world_process_zero():
            self._write_model_card(self.args.output_dir, model_name)

    def _write_model_card(self, output_dir: str, model_name: str | None = None) -> None:
        card = copilot_model_card(self.model, self.state.log_history, model_name)
        card.save(os.path.join(output_dir, "README.md"))

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # replaces the blank card PEFT's `save_pretrained` has just written
            self._write_model_card(output_dir or self.args.output_dir)
        # Under FSDP every process comes here (to join the gathering of `state_dict`); one writes.
        if self.pilot_training == "full" and self.args.should_save:
            # A PEFT adapter holds only the Copilot; a fully fine-tuned Pilot is saved beside it.
            output_dir = output_dir or self.args.output_dir
            pilot = self.copilot_tuner.model
            pilot.save_pretrained(os.path.join(output_dir, PILOT_WEIGHTS_DIR), state_dict=self._pilot_part(state_dict))

    def _pilot_part(self, state_dict: dict | None) -> dict | None:
        """The Pilot's own entries of a state dict of the whole model, under the Pilot's names. Under FSDP the
        trainer gathers that state dict (the Pilot's weights are sharded); otherwise there is none and the Pilot's
        `save_pretrained` reads its weights itself."""
        if state_dict is None:
            return None
        prefix = next(name for name, module in self.model.named_modules() if module is self.copilot_tuner.model) + "."
        return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        pilot_dir = os.path.join(resume_from_checkpoint, PILOT_WEIGHTS_DIR)
        # Under FSDP the base trainer has restored the whole model, the Pilot included, from FSDP's own checkpoint.
        if self.pilot_training == "full" and not self.is_fsdp_enabled and os.path.isdir(pilot_dir):
            weights = {}
            for name in sorted(os.listdir(pilot_dir)):
                if name.endswith(".safetensors"):
                    weights.update(load_file(os.path.join(pilot_dir, name)))
            self.copilot_tuner.model.load_state_dict(weights, strict=False)
