"""The Copilot beside a Pilot spread over processes: what each of accelerate's distributed modes gets.

* DDP: the Copilot is a replica on every process; `CopilotUpdater` averages its gradients (an explicit all-reduce,
  outside DDP's hooks, because the Copilot trains outside the Pilot's backward).
* FSDP with `fsdp_version=2` (torch's `fully_shard`): the Pilot is sharded and the Copilot stays a replica, trained
  exactly as under DDP. It trains outside the Pilot's forward and backward, where FSDP's all-gather and
  reduce-scatter hooks never run, so it is kept out of FSDP (its `ignored_modules`). The Pilot's embedding and LM
  head, which the Copilot reads as constants, are gathered for its step.
* Refused, with the reason (`check_distributed_mode`): DeepSpeed, FSDP1, and FSDP's `cpu_ram_efficient_loading`.
"""

from __future__ import annotations

import re

from accelerate.utils import DistributedType
from torch import nn


DEEPSPEED_REFUSAL = (
    "Copilot training does not support DeepSpeed: the Copilot trains with its own optimiser outside the DeepSpeed "
    "engine, and under ZeRO-3 the Pilot's embedding and LM head, which the Copilot reads after the backward, are "
    "partitioned. Use DDP, or FSDP with `fsdp_version: 2`."
)
FSDP1_REFUSAL = (
    "Copilot training supports FSDP through torch's fully_shard only: set `fsdp_version: 2` in the accelerate config "
    "(or `fsdp_config={'fsdp_version': 2}`). FSDP1 keeps the Pilot's embedding and LM head whole only inside the "
    "Pilot's forward, and the Copilot's step reads them after the backward."
)
CPU_RAM_EFFICIENT_LOADING_REFUSAL = (
    "Copilot training under FSDP needs `cpu_ram_efficient_loading: false` (`accelerate launch "
    "--fsdp_cpu_ram_efficient_loading false`): with it, only the first process loads the Pilot's weights and the "
    "others receive them as shards, so a Copilot copied from the Pilot's layers would have no weights there; and "
    "accelerate reads `ignored_modules` before moving the model to `meta`, so the Copilot would be sharded instead "
    "of replicated."
)


def check_distributed_mode(state) -> None:
    """Refuse, with the reason, a distributed mode the Copilot cannot train under (`state`: an `AcceleratorState`)."""
    if state.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(DEEPSPEED_REFUSAL)
    if state.distributed_type != DistributedType.FSDP:
        return
    if state.fsdp_plugin.fsdp_version != 2:
        raise ValueError(FSDP1_REFUSAL)
    if state.fsdp_plugin.cpu_ram_efficient_loading:
        raise ValueError(CPU_RAM_EFFICIENT_LOADING_REFUSAL)


def replicate_under_fsdp(plugin, model: nn.Module, networks: list[nn.Module], device) -> None:
    """Keep the Copilot `networks` whole on every process: add them to the FSDP plugin's `ignored_modules` (read when
    the trainer prepares the model) and place them on this process's device (FSDP moves only what it shards)."""
    plugin.ignored_modules = [*_ignored_modules(plugin.ignored_modules, model), *networks]
    for network in networks:
        network.to(device)


def _ignored_modules(ignored, model: nn.Module) -> list[nn.Module]:
    """The user's own `ignored_modules`, which accelerate takes as modules or as a regex on module names."""
    if ignored is None:
        return []
    if isinstance(ignored, str):
        return [module for name, module in model.named_modules() if re.fullmatch(ignored, name)]
    return list(ignored)
