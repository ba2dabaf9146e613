"""Run by `accelerate launch --num_processes 2 --cpu` from test_distributed.py: a short joint run on 2 processes."""

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer  # noqa: E402
from tests.conftest import arithmetic_dataset, char_tokenizer, tiny_pilot  # noqa: E402


def main(output_dir: str) -> None:
    tokenizer = char_tokenizer()
    pilot = get_peft_model(tiny_pilot(vocab_size=len(tokenizer)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = CopilotSFTConfig(
        output_dir=output_dir,
        max_steps=3,
        # 8 rows a process, 2 steps an epoch: the Pilot's 3 steps; the Copilot's 6 log the frozen Pilot's epoch 2
        # (steps 4-5) whole, then replay it from the log on both processes (steps 6-8)
        copilot_steps_factor=2.0,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        dataloader_pin_memory=False,
    )
    trainer = CopilotSFTTrainer(
        model=get_peft_model(pilot, CopilotConfig()),
        args=args,
        train_dataset=arithmetic_dataset(16),
        processing_class=tokenizer,
    )
    trainer.train()
    copilot = torch.cat([p.detach().flatten() for p in trainer.copilot_parameters()])
    lora = torch.cat([p.detach().flatten() for n, p in trainer.model.named_parameters() if "lora_" in n])
    report = {
        "rank": trainer.args.process_index,
        "world": trainer.accelerator.num_processes,
        "copilot": copilot[:64].tolist(),
        "copilot_sum": copilot.double().sum().item(),
        "lora_sum": lora.double().sum().item(),
        "log_rows": len(trainer.mistake_log),
        "replaying": trainer.log_replaces_pilot,
        "step": trainer.state.global_step,
        "first_logged_ids": trainer.mistake_log.rounds[0][0].input_ids.tolist(),
    }
    Path(output_dir, f"rank{trainer.args.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
