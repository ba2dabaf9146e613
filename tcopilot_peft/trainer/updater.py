"""`CopilotUpdater`: the Copilot's own optimisation, beside the Pilot's.

The Copilot trains on Mistake Log rows with its own AdamW and schedule, outside the Pilot's optimiser and outside
DDP's gradient hooks: gradients come from `torch.autograd.grad` into buffers owned here, accumulate over the
micro-batches of one optimiser step, are averaged across processes explicitly, clipped, and applied. A trainer only
says when (`accumulate` per micro-batch, `step` when the Pilot's optimiser steps) and saves `state_dict()` with its
checkpoints.
"""

from __future__ import annotations

import torch
from transformers import get_scheduler


class CopilotUpdater:
    """Accumulates, averages, clips and applies the Copilot's gradients with its own AdamW and schedule.

    Args:
        parameters (`list[torch.nn.Parameter]`):
            The Copilot's weights (made trainable here).
        learning_rate (`float`):
            Peak learning rate of the Copilot's AdamW.
        weight_decay (`float`):
            AdamW weight decay, applied to matrices only (norms are not decayed).
        scheduler_type (`str`):
            Any `transformers.get_scheduler` name.
        warmup_steps (`int`):
            Linear warm-up steps of the schedule.
        num_training_steps (`int`):
            Optimiser steps of the whole run (the schedule's length).
        max_grad_norm (`float`, *optional*):
            Gradient-norm clip; 0 or None turns it off.
        num_processes (`int`, defaults to 1):
            Processes whose gradients are averaged (an all-reduce of the buffers) before every step. With more than
            one, the weights are first broadcast from the first process, so the replicas start equal.
    """

    def __init__(
        self,
        parameters: list[torch.nn.Parameter],
        learning_rate: float,
        weight_decay: float,
        scheduler_type: str,
        warmup_steps: int,
        num_training_steps: int,
        max_grad_norm: float | None = None,
        num_processes: int = 1,
    ) -> None:
        self.parameters = list(parameters)
        for p in self.parameters:
            p.requires_grad_(True)
        groups = [
            {"params": [p for p in self.parameters if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in self.parameters if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=learning_rate)
        self.scheduler = get_scheduler(
            scheduler_type, self.optimizer, num_warmup_steps=warmup_steps, num_training_steps=num_training_steps
        )
        self.max_grad_norm = max_grad_norm
        self.num_processes = num_processes
        self._buffers = [torch.zeros_like(p) for p in self.parameters]
        if num_processes > 1:
            # DDP broadcasts the weights it wraps, FSDP does not broadcast the modules it ignores: equal replicas are
            # made here, whichever wraps the Pilot.
            with torch.no_grad():
                for p in self.parameters:
                    torch.distributed.broadcast(p, src=0)

    def accumulate(self, loss: torch.Tensor, scale: float = 1.0) -> None:
        """Add the gradient of `scale · loss` to the buffers (only the Copilot's weights are differentiated, so no
        gradient reaches the Pilot whatever the graph holds)."""
        grads = torch.autograd.grad(loss * scale, self.parameters, allow_unused=True)
        for buffer, grad in zip(self._buffers, grads):
            if grad is not None:
                buffer.add_(grad)

    def step(self) -> float | None:
        """Average the accumulated gradients across processes, clip, step the optimiser and the schedule, and clear
        the buffers. Returns the gradient norm before clipping (None when clipping is off)."""
        if self.num_processes > 1:
            for buffer in self._buffers:
                torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
                buffer.div_(self.num_processes)
        for p, buffer in zip(self.parameters, self._buffers):
            p.grad = buffer
        norm = None
        if self.max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        for p, buffer in zip(self.parameters, self._buffers):
            p.grad = None
            buffer.zero_()
        return norm

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
