"""How far the Mistake Log's sparse p̂ moves the Copilot's loss from the dense one, on a trained Copilot and real data.

The log keeps, per target token, the top-k of p̂ and the gold token's log-probability; the fused cross-entropy then
spreads the remaining tail mass evenly (`fusion.fused_cross_entropy`). This script runs a trained Copilot adapter on
training batches of its task and prints, per loss, the dense value, the value rebuilt from the log and their relative
gap, plus the log's bytes per token beside a dense 16-bit ℓ at this and at a 32k vocabulary.

    python benchmarks/log_approximation.py --adapter /tmp/tcopilot-results/base/sort_then_reverse-0/b/copilot
"""

from __future__ import annotations

import argparse

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tcopilot_peft.demo import PILOT_DIR
from tcopilot_peft.demo.tasks import task_splits
from tcopilot_peft.evaluation.diagnostics import completion_batches
from tcopilot_peft.fusion import PilotPrediction, shift_targets
from tcopilot_peft.mistake_log import MistakeLog, dense_error_bytes_per_token


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="a saved Copilot adapter of the bundled Pilot")
    parser.add_argument("--pilot", default=str(PILOT_DIR))
    parser.add_argument("--task", default="sort_then_reverse")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=8)
    args = parser.parse_args()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.pilot), args.adapter).eval()
    tuner = model.base_model
    tokenizer = AutoTokenizer.from_pretrained(args.pilot)
    rows = task_splits(args.task, args.rows, 1, 1, seed=1000)["train"].to_list()
    log = MistakeLog(top_k=args.top_k)
    sums = {kind: [0.0, 0.0] for kind in ("fused_ce", "rmse")}
    count = 0
    for batch, labels in completion_batches(tokenizer, rows, 32):
        count += 1
        out = model(**batch, labels=labels, copilot_teacher_forcing=False)
        targets = shift_targets(labels)
        logged = log.collate(
            log.append(batch["input_ids"], batch["attention_mask"], targets, out.copilot_memory_h, out.pilot_logits)
        )
        for kind, (dense_sum, sparse_sum) in sums.items():
            _, dense = tuner.copilot_teacher_forced(
                out.copilot_memory_x,
                out.copilot_memory_h,
                batch["attention_mask"].bool(),
                targets,
                PilotPrediction.from_logits(out.pilot_logits),
                loss_kind=kind,
            )
            sparse = tuner.copilot_replay(logged, loss_kind=kind)
            sums[kind] = [dense_sum + dense.item(), sparse_sum + sparse.item()]
    for kind, (dense, sparse) in sums.items():
        print(
            f"{kind} (mean over {count} batches): dense {dense / count:.4f}, from the log {sparse / count:.4f}, "
            f"relative gap {abs(sparse - dense) / dense:.2%}"
        )
    vocab = model.get_output_embeddings().weight.shape[0]
    print(
        f"Mistake Log {log.bytes_per_token:.0f} B/token (top-{args.top_k}); a dense 16-bit ℓ: "
        f"{dense_error_bytes_per_token(vocab)} B/token at this vocabulary ({vocab}), "
        f"{dense_error_bytes_per_token(32000)} at 32k ({log.bytes_per_token / dense_error_bytes_per_token(32000):.2%})"
    )


if __name__ == "__main__":
    main()
