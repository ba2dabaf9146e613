"""How the tuner's `generate()` reaches the fused forward. (Generation *with and without* the Copilot, for the demo
and benchmarks, is `tcopilot_peft/generation.py`.)

The Pilot's own `generate()` runs, with its `forward` swapped for the tuner's fused one for the duration of the call:
every decoding strategy, cache reordering and stopping criterion then sees fused logits. The fused forward asks for
the Pilot's logits and the correction only when it needs them (`copilot_components=False`), so logit-space fusion
takes one LM-head pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Generating:
    """What the fused forward needs to know while `generate()` runs: where generated positions start, and the Pilot's
    original forward (an encoder-decoder Pilot's whole forward runs inside the fused one and must reach it)."""

    prompt_length: int
    pilot_forward: Callable


def generate(tuner, *args, **kwargs):
    """The Pilot's `generate()` on fused logits (`CopilotModel.generate`)."""
    prompt_length = tuner.runner.generation_prompt(args, kwargs)
    with route_generation_through_fusion(tuner, prompt_length):
        return tuner.model.generate(*args, **kwargs)


@contextmanager
def route_generation_through_fusion(tuner, prompt_length: int):
    """While inside, the Pilot's `forward` is the tuner's fused one and `tuner.generating` is set."""
    pilot = tuner.model
    had_instance_forward = "forward" in pilot.__dict__
    original = pilot.forward

    @functools.wraps(original)
    def fused(*args, **kwargs):
        return tuner.forward(*args, copilot_components=False, **kwargs)

    pilot.forward = fused
    tuner.generating = Generating(prompt_length, original)
    try:
        yield
    finally:
        if had_instance_forward:
            pilot.forward = original
        else:
            del pilot.forward
        tuner.generating = None
