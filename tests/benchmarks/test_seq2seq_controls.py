"""The encoder-decoder control (f) of run_seq2seq.py and run_recommendation.py: a small T5 keeping the Pilot's named
blocks, and the logit ensemble that is the Pilot itself at weight 0."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
T5_PILOT = BENCHMARKS / "pilots" / "t5"
sys.path.insert(0, str(BENCHMARKS))
from controls import seq2seq_ensemble_generate, small_seq2seq  # noqa: E402


PROMPTS = ["q sortrev 52814", "q count 7 7 1"]


def test_small_seq2seq_keeps_the_named_blocks_of_both_stacks():
    pilot = AutoModelForSeq2SeqLM.from_pretrained(T5_PILOT)
    small = small_seq2seq(T5_PILOT, [0, 2])
    assert small.config.num_layers == small.config.num_decoder_layers == 2
    assert len(small.encoder.block) == len(small.decoder.block) == 2
    kept, source = small.decoder.block[1].layer[1], pilot.decoder.block[2].layer[1]
    torch.testing.assert_close(kept.EncDecAttention.q.weight, source.EncDecAttention.q.weight)
    assert [b.layer[0].SelfAttention.layer_idx for b in small.decoder.block] == [0, 1]


def test_seq2seq_ensemble_with_weight_zero_is_the_pilot_and_a_weight_changes_it():
    tokenizer = AutoTokenizer.from_pretrained(T5_PILOT)
    pilot = AutoModelForSeq2SeqLM.from_pretrained(T5_PILOT).eval()
    small = small_seq2seq(T5_PILOT, [0]).eval()
    with torch.no_grad():
        batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        out = pilot.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    alone = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert seq2seq_ensemble_generate(pilot, small, 0.0, tokenizer, PROMPTS, 8) == alone
    assert seq2seq_ensemble_generate(pilot, small, 50.0, tokenizer, PROMPTS, 8) != alone


def test_no_benchmark_script_imports_another_script():
    # Shared helpers live in common.py and controls.py (and the SASRec reference's RecBole glue in sasrec.py, a module
    # without an entry point); a script's entry point is never imported.
    shared = {"common", "controls", "sasrec"}
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")}
    for path in BENCHMARKS.glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1] in scripts:
                assert words[1] in shared, f"{path.name} imports the script {words[1]}: {line.strip()}"
        assert "sys.path" not in path.read_text(encoding="utf-8"), f"{path.name} edits sys.path"
