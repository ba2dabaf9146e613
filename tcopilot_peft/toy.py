"""Small offline building blocks for examples, demos and tests: a character tokenizer and arithmetic tasks.

Nothing here downloads anything; the tokenizer is built in memory with `tokenizers`.
"""

from __future__ import annotations

import random

from datasets import Dataset
from transformers import PreTrainedTokenizerFast


CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz +-*=?.:,()\n"
SPECIAL_TOKENS = ("<pad>", "</s>", "<s>", "<unk>")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: the special tokens (ids 0-3), then digits, letters and a few symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for character in CHARACTERS:
        vocab[character] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # characters join back without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def addition_dataset(n: int = 64, seed: int = 0, low: int = 0, high: int = 99) -> Dataset:
    """Prompt/completion rows `"a+b=" -> "a+b"` in TRL's prompt-completion form."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        rows.append({"prompt": f"{a}+{b}=", "completion": f"{a + b}"})
    return Dataset.from_list(rows)
