"""Which of accelerate's distributed modes the Copilot trainers accept (2-process runs: test_distributed.py)."""

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType
from torch import nn

from tcopilot_peft.trainer.parallel import check_distributed_mode, replicate_under_fsdp


def state(distributed_type, fsdp_version=2, cpu_ram_efficient_loading=False):
    plugin = SimpleNamespace(fsdp_version=fsdp_version, cpu_ram_efficient_loading=cpu_ram_efficient_loading)
    return SimpleNamespace(distributed_type=distributed_type, fsdp_plugin=plugin)


@pytest.mark.parametrize("distributed_type", [DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.FSDP])
def test_ddp_and_fsdp2_are_accepted(distributed_type):
    check_distributed_mode(state(distributed_type))


@pytest.mark.parametrize(
    ("refused", "message"),
    [
        (
            state(DistributedType.DEEPSPEED),
            "Copilot training does not support DeepSpeed: the Copilot trains with its own optimiser outside the "
            "DeepSpeed engine, and under ZeRO-3 the Pilot's embedding and LM head, which the Copilot reads after the "
            "backward, are partitioned. Use DDP, or FSDP with `fsdp_version: 2`.",
        ),
        (
            state(DistributedType.FSDP, fsdp_version=1),
            "Copilot training supports FSDP through torch's fully_shard only: set `fsdp_version: 2` in the accelerate "
            "config (or `fsdp_config={'fsdp_version': 2}`). FSDP1 keeps the Pilot's embedding and LM head whole only "
            "inside the Pilot's forward, and the Copilot's step reads them after the backward.",
        ),
        (
            state(DistributedType.FSDP, cpu_ram_efficient_loading=True),
            "Copilot training under FSDP needs `cpu_ram_efficient_loading: false` (`accelerate launch "
            "--fsdp_cpu_ram_efficient_loading false`): with it, only the first process loads the Pilot's weights and "
            "the others receive them as shards, so a Copilot copied from the Pilot's layers would have no weights "
            "there; and accelerate reads `ignored_modules` before moving the model to `meta`, so the Copilot would "
            "be sharded instead of replicated.",
        ),
    ],
    ids=["deepspeed", "fsdp1", "cpu_ram_efficient_loading"],
)
def test_modes_the_copilot_cannot_train_under_are_refused_with_the_reason(refused, message):
    with pytest.raises(ValueError) as error:
        check_distributed_mode(refused)
    assert str(error.value) == message


@pytest.mark.parametrize("users", [None, "head", ["head"]])
def test_the_copilot_joins_the_users_own_ignored_modules(users):
    model = nn.ModuleDict({"head": nn.Linear(2, 2), "body": nn.Linear(2, 2)})
    copilot = nn.Linear(2, 2)
    plugin = SimpleNamespace(ignored_modules=[model["head"]] if users == ["head"] else users)
    replicate_under_fsdp(plugin, model, [copilot], "cpu")
    expected = [copilot] if users is None else [model["head"], copilot]
    assert plugin.ignored_modules == expected
