"""Run by test_fsdp.py with 2 CPU processes (gloo), under `accelerate launch --use_fsdp --fsdp_version 2` and, for
comparison, under DDP: a joint run of 4 steps checkpointed at step 2, then a second run resumed from that checkpoint;
each process writes a report."""

import json
import os
import sys
from pathlib import Path

import accelerate.state
import torch
from accelerate.utils import DistributedType
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer  # noqa: E402
from tests.conftest import arithmetic_dataset, char_tokenizer, tiny_pilot  # noqa: E402


def allow_fsdp_on_cpu() -> None:
    """accelerate 1.15 turns FSDP on only for accelerator devices: on a CPU it builds the FSDP plugin and then runs
    DDP (`DistributedType.MULTI_CPU`). torch's `fully_shard` itself runs on CPU over gloo, so the state is switched
    to FSDP once accelerate has built it; everything after (`fsdp2_prepare_model`, FSDP checkpoints) is the real
    code path."""
    build = accelerate.state.AcceleratorState.__init__

    def build_with_fsdp(self, *args, fsdp_plugin=None, **kwargs):
        build(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            # As accelerate does at the end of its own set-up: later `AcceleratorState()` calls copy it from there.
            accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.state.AcceleratorState.__init__ = build_with_fsdp


def make_trainer(output_dir: Path, pilot_training: str) -> CopilotSFTTrainer:
    tokenizer = char_tokenizer()
    pilot = tiny_pilot(vocab_size=len(tokenizer))
    if pilot_training == "adapter":
        pilot = get_peft_model(pilot, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model = get_peft_model(pilot, CopilotConfig())
    if int(os.environ["RANK"]) == 1:  # replicas that start apart must be made equal by the trainer
        with torch.no_grad():
            next(model.base_model.copilot_model["default"].parameters()).add_(1.0)
    args = CopilotSFTConfig(
        output_dir=str(output_dir),
        max_steps=4,
        copilot_steps_factor=1.0,  # a Copilot phase as long as the Pilot's: the test is about sharding
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
        train_pilot=pilot_training,
    )
    return CopilotSFTTrainer(model=model, args=args, train_dataset=arithmetic_dataset(), processing_class=tokenizer)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach()


def report(trainer: CopilotSFTTrainer) -> dict:
    copilot = torch.cat([p.detach().flatten() for p in trainer.copilot_parameters()])
    trained = [p for n, p in trainer.model.named_parameters() if p.requires_grad and "copilot_" not in n]
    pilot = torch.cat([whole(p).flatten() for p in trained])
    embedding = trainer.copilot_tuner.model.get_input_embeddings().weight
    return {
        "rank": trainer.args.process_index,
        "world": trainer.accelerator.num_processes,
        "fsdp": trainer.is_fsdp_enabled,
        "pilot_sharded": isinstance(embedding, DTensor) and embedding.to_local().shape[0] < embedding.shape[0],
        "copilot_replicated": not any(isinstance(p, DTensor) for p in trainer.copilot_parameters()),
        "copilot": copilot[:64].tolist(),
        "copilot_sum": copilot.double().sum().item(),
        "pilot_trained_sum": pilot.double().sum().item(),
        "log_rows": len(trainer.mistake_log),
        "first_logged_ids": trainer.mistake_log.rounds[0][0].input_ids.tolist(),
        "step": trainer.state.global_step,
    }


def main(output_dir: str, pilot_training: str) -> None:
    allow_fsdp_on_cpu()
    root = Path(output_dir)
    full = make_trainer(root / "full", pilot_training)
    full.train()
    resumed = make_trainer(root / "resumed", pilot_training)
    resumed.train(resume_from_checkpoint=str(root / "full" / "checkpoint-2"))
    rank = full.args.process_index
    reports = {"full": report(full), "resumed": report(resumed)}
    reports["checkpoint"] = sorted(os.listdir(root / "full" / "checkpoint-2"))
    saved_pilot = root / "full" / "checkpoint-4" / "pilot" / "model.safetensors"
    if saved_pilot.exists():  # a fully fine-tuned Pilot is saved beside the adapter
        reports["saved_pilot_sum"] = sum(t.double().sum().item() for t in load_file(saved_pilot).values())
    (root / f"rank{rank}.json").write_text(json.dumps(reports))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
