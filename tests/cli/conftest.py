"""Shared pieces of the command-line tests: a tiny Pilot saved locally, and training rows."""

import json

import pytest

from tests.conftest import char_tokenizer, tiny_pilot


def save_pilot(directory, build):
    """`build(vocab_size=...)` saved with the character tokenizer in `directory`."""
    tokenizer = char_tokenizer()
    build(vocab_size=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def local_pilot(tmp_path_factory):
    return save_pilot(tmp_path_factory.mktemp("pilot"), tiny_pilot)


def write_rows(path, rows, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return path


def instruction_rows(n=24):
    return [{"instruction": f"{a}+{a}", "input": "", "output": f"{2 * a}", "answer": f"{2 * a}"} for a in range(n)]
