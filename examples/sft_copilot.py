"""Fine-tune a Pilot with a Transformer Copilot, TRL-style.

    python examples/sft_copilot.py \
        --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name path/to/math_10k.json \
        --use_lora --lora_r 32 --load_in_4bit \
        --output_dir qwen-copilot --num_train_epochs 3 --per_device_train_batch_size 4 \
        --gradient_accumulation_steps 4 --learning_rate 2e-4 --copilot_learning_rate 3e-4 --max_length 256

The dataset is a local JSON/JSONL file or a `datasets` name, in TRL prompt/completion (or conversational) form or in
the LLM-Adapters instruction/input/output form. Every `CopilotConfig` and `CopilotSFTConfig` (and so `SFTConfig`)
option is accepted.
"""

import dataclasses
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from tcopilot_peft import CopilotConfig, CopilotSFTConfig, CopilotSFTTrainer
from tcopilot_peft.commands import GGUF_FILE_HELP, add_copilot, copilot_options, load_pilot, load_tokenizer
from tcopilot_peft.data import load_any_dataset, to_trl_format


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Pilot: local directory or hub id."})
    dataset_name: str = field(metadata={"help": "Local .json/.jsonl file or a datasets name."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a datasets name."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to the model's."})
    use_lora: bool = field(default=False, metadata={"help": "Give the Pilot LoRA (else all its weights train)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit Pilot (QLoRA with --use_lora)."})
    gguf_file: str | None = field(default=None, metadata={"help": GGUF_FILE_HELP})


def main() -> None:
    # The Copilot's options are CopilotConfig's own fields (`--num_layers`/`--copilot_layers`, `--init`,
    # `--fusion_mode`, ...); `--copilot_loss rmse` (the paper's objective) sets the adapter's objective too.
    parser = HfArgumentParser((ScriptArguments, copilot_options(), CopilotSFTConfig))
    script_args, copilot_args, training_args = parser.parse_args_into_dataclasses()
    dataset = to_trl_format(load_any_dataset(script_args.dataset_name, split=script_args.dataset_split))
    tokenizer = load_tokenizer(
        script_args.tokenizer_name_or_path or script_args.model_name_or_path,
        None if script_args.tokenizer_name_or_path else script_args.gguf_file,
    )
    pilot = load_pilot(
        script_args.model_name_or_path,
        gguf_file=script_args.gguf_file,
        load_in_4bit=script_args.load_in_4bit,
        lora_r=script_args.lora_r if script_args.use_lora else 0,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
    )
    copilot_config = CopilotConfig(copilot_loss=training_args.copilot_loss, **dataclasses.asdict(copilot_args))
    model = add_copilot(pilot, copilot_config)
    model.print_trainable_parameters()
    trainer = CopilotSFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    print(f"Saved the Copilot adapter (and the Pilot's LoRA, if any) to {training_args.output_dir}")


if __name__ == "__main__":
    main()
