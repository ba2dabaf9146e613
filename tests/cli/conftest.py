"""Shared pieces of the command-line tests: a tiny Pilot saved locally, and training rows."""

import json

import pytest

from tests.conftest import char_tokenizer, tiny_pilot


@pytest.fixture(scope="session")
def local_pilot(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pilot")
    tokenizer = char_tokenizer()
    tiny_pilot(vocab_size=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_rows(path, rows, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows))
    return path


def instruction_rows(n=24):
    return [{"instruction": f"{a}+{a}", "input": "", "output": f"{2 * a}", "answer": f"{2 * a}"} for a in range(n)]
