"""The recommendation benchmark's own pieces: its item-level tokenizer must give every item id exactly one token (or
the constrained beams rank something else than items), and its no-training references must rank what they claim."""

from __future__ import annotations

import sys
from pathlib import Path

from tcopilot_peft.evaluation.recommendation import PROMPT, ItemTrie, UserSequence, leave_one_out


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from run_recommendation import item_tokenizer, popularity, transitions  # noqa: E402


ITEMS = ["1001", "1002", "1003", "1004", "1005", "1006"]


def test_item_tokenizer_gives_each_item_id_one_token_and_reads_the_prompt():
    tokenizer = item_tokenizer(ITEMS)
    for item in ITEMS:
        assert len(tokenizer(item, add_special_tokens=False).input_ids) == 1
    prompt = PROMPT.format(dataset="Beauty", user="17", history="1001 , 1004")
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
    assert tokens.count(tokenizer.unk_token) == 1  # only the user's id, which no other prompt shares
    assert tokens[tokens.index("items") + 1 : tokens.index("items") + 4] == ["1001", ",", "1004"]
    assert tokenizer.decode(tokenizer("1003" + tokenizer.eos_token).input_ids, skip_special_tokens=True) == "1003"
    assert ItemTrie(ITEMS, tokenizer).longest == 2  # the id and the end token


def test_references_rank_popular_items_and_the_last_items_successors():
    users = [
        UserSequence("1", ["1001", "1002", "1003", "1004", "1005"]),
        UserSequence("2", ["1006", "1002", "1003", "1001", "1002"]),
        UserSequence("3", ["1004", "1002", "1006", "1003", "1004"]),
    ]
    train = leave_one_out(users)["train"]
    # Training targets: 1002, 1003 (user 1); 1002, 1003 (user 2); 1002, 1006 (user 3).
    assert popularity(train, k=2) == ["1002", "1003"]
    ranked = transitions(users, train, k=3)
    assert ranked(["1006"]) == ["1002", "1003", "1006"]  # 1006 → 1002 once, then the popular ones not yet in
    assert ranked(["1002"]) == ["1003", "1006", "1002"]  # 1002 → 1003 twice, → 1006 once, then 1002 (popular)
    assert ranked(["1005"]) == ["1002", "1003", "1006"]  # never seen before another item: popularity
