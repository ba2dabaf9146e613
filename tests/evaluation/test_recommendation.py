"""Sequential recommendation: Hit@K / NDCG@K on hand-computed cases, OpenP5's leave-one-out split, clear errors on bad
data folders, and ranking by beam search that only ever returns real, distinct item ids."""

import json
import math
from pathlib import Path

import pytest
from peft import get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.evaluation.benchmarks import DataError
from tcopilot_peft.evaluation.recommendation import (
    ItemTrie,
    leave_one_out,
    load_user_sequences,
    rank_items,
    ranking_metrics,
)
from tests.conftest import char_tokenizer, randomise_copilot, tiny_pilot, tiny_t5


SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "openp5_beauty"
ITEMS = ["1001", "1002", "1013", "2040", "2041", "977"]


def write_folder(folder: Path, lines: list[str], items=ITEMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item_random_indexing.txt").write_text("".join(f"B{i:05d} {item}\n" for i, item in enumerate(items)))
    (folder / "user_sequence_random_indexing.txt").write_text("".join(line + "\n" for line in lines))
    return folder


def test_ranking_metrics_match_hand_computed_values():
    ranked = [["a", "b", "c"], ["x", "y"], ["q"], []]
    metrics = ranking_metrics(ranked, ["b", "z", "q", "a"], ks=(1, 2))
    assert metrics["hit@1"] == pytest.approx(1 / 4) and metrics["ndcg@1"] == pytest.approx(1 / 4)
    assert metrics["hit@2"] == pytest.approx(2 / 4)
    assert metrics["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 4)
    with pytest.raises(ValueError, match="one ranking per target"):
        ranking_metrics([["a"]], ["a", "b"])


def test_leave_one_out_follows_openp5(tmp_path):
    users, _ = load_user_sequences(str(write_folder(tmp_path, ["7 1001 1002 1013 2040 2041"])))
    splits = leave_one_out(users, max_history=2)
    assert [row["completion"] for row in splits["train"]] == ["1002", "1013"]
    assert splits["validation"][0]["completion"] == "2040" and splits["test"][0]["completion"] == "2041"
    assert splits["test"][0]["prompt"] == (
        "Considering Beauty, user_7 has interacted with Beauty items 1013 , 2040. "
        "What is the next recommendation for the user?"
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["1 1001 1002"], "line 1: a user needs at least 3 items"),
        (["1 1001 1002 1013", "2 1001 9999 1002"], "line 2: item id '9999' is not in item_random_indexing.txt"),
        (["1 1001 1002 1013", "", "3 1001 1002 1013"], "line 2: an empty line"),
        (["1 1001 1002 1013", "2 1001 1o02 1013"], "line 2: item id '1o02' is not an integer"),
        (["1 1001 1002 1013", "2"], "line 2: a user needs at least 3 items"),
        (["u1 1001 1002 1013", "2 1001 1002 1013"], "line 1: user id 'u1' is not an integer"),
        (["1 1001 1002 1013", "1 2040 2041 977"], "line 2: user 1 already has a sequence on line 1"),
    ],
)
def test_bad_lines_name_the_file_and_line_or_are_counted_and_skipped(tmp_path, lines, message):
    folder = str(write_folder(tmp_path, lines))
    with pytest.raises(DataError, match=message):
        load_user_sequences(folder)
    users, skipped = load_user_sequences(folder, on_bad_rows="skip")
    assert len(skipped) == 1 and message in skipped[0] and "user_sequence_random_indexing.txt" in skipped[0]
    assert len(users) == len(lines) - 1


def test_a_sequence_file_cut_mid_line_is_refused(tmp_path):
    folder = write_folder(tmp_path, ["1 1001 1002 1013", "2 1001 1002 2041"])
    sequences = folder / "user_sequence_random_indexing.txt"
    sequences.write_text(sequences.read_text()[:-3])  # "2 1001 1002 20": a fragment that happens to be no id
    with pytest.raises(DataError, match=r"user_sequence_random_indexing.txt, line 2: no line end after .*cut short"):
        load_user_sequences(str(folder))
    assert len(load_user_sequences(str(folder), on_bad_rows="skip")[0]) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("B1 1001\nB2 1002\nB3 10", "line 3: no line end after 'B3 10': the file looks cut short"),
        ("B1 1001\n\nB3 1013\n", "line 2: expected 'original_id numeric_id', got ''"),
        ("B1 1001\nB2 one\n", "line 2: expected 'original_id numeric_id', got 'B2 one'"),
        ("B1 1001\nB2 1001\n", "line 2: numeric id 1001 was already given on line 1"),
        ("B1 1001\nB1 1002\n", "line 2: item 'B1' was already given an id on line 1"),
        ("", "item_random_indexing.txt holds no item ids"),
    ],
)
def test_a_bad_item_mapping_names_the_file_and_line(tmp_path, text, message):
    folder = write_folder(tmp_path, ["1 1001 1002 1013"])
    (folder / "item_random_indexing.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        load_user_sequences(str(folder), on_bad_rows="skip")  # the mapping is never skipped past


def test_an_empty_sequence_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="user_sequence_random_indexing.txt is empty"):
        load_user_sequences(str(write_folder(tmp_path, [])))


def test_a_folder_without_the_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="has no item_random_indexing.txt"):
        load_user_sequences(str(tmp_path))


def test_the_trie_allows_only_continuations_of_real_ids():
    tokenizer = char_tokenizer()
    trie = ItemTrie(ITEMS, tokenizer)
    ids = {text: tokenizer(text, add_special_tokens=False).input_ids for text in ("0", "1", "10", "977", "2")}
    assert sorted(trie.allowed([])) == sorted({ids["1"][0], ids["2"][0], ids["977"][0]})
    assert sorted(trie.allowed(ids["10"])) == sorted({ids["0"][0], ids["1"][0]})  # 1001/1002, or 1013
    assert trie.allowed(ids["977"]) == [tokenizer.eos_token_id]


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_ranking_returns_only_distinct_real_items(family):
    tokenizer = char_tokenizer()
    pilot = tiny_t5(vocab_size=len(tokenizer)) if family == "t5" else tiny_pilot(vocab_size=len(tokenizer))
    model = get_peft_model(pilot, CopilotConfig())
    randomise_copilot(model)
    trie = ItemTrie(ITEMS, tokenizer)
    prompts = ["Considering Beauty, user_1 has interacted with Beauty items 1001. What is next?", "user_2 items 977"]
    for arm in ("pilot", "fused"):
        ranked = rank_items(model.eval(), tokenizer, prompts, trie, k=4, arm=arm)
        assert len(ranked) == 2
        for items in ranked:
            assert items and len(items) == len(set(items)) <= 4 and set(items) <= set(ITEMS)


def test_the_shared_beauty_data_loads_with_the_papers_counts():
    if not SHARED.is_dir():
        pytest.skip(f"the shared OpenP5 Beauty data is not at {SHARED.resolve()}")
    users, skipped = load_user_sequences(str(SHARED))
    assert len(users) == 22363 and not skipped
    assert len({item for user in users for item in user.items}) == 12101


def beauty_args(saved_model, data, output, *extra):
    pilot_dir, adapter_dir = saved_model
    return [
        "eval", "--model", str(pilot_dir), "--adapter", str(adapter_dir), "--benchmarks", "beauty",
        "--data", str(data), "--output", str(output), "--num-beams", "4", "--batch-size", "4", *extra,
    ]  # fmt: skip


def test_tcopilot_eval_ranks_beauty_users_and_resumes(tmp_path, saved_model, capsys):
    from tcopilot_peft.cli import main
    from tcopilot_peft.evaluation.recommendation import PREDICTIONS_FILE, RESULTS_FILE

    lines = [f"{user} {' '.join(ITEMS[(user + i) % len(ITEMS)] for i in range(4))}" for user in range(30)]
    data = write_folder(tmp_path / "beauty", lines)
    output = tmp_path / "out"
    assert main(beauty_args(saved_model, data, output, "--limit", "6")) == 0
    printed = capsys.readouterr().out
    assert "| hit@4 |" in printed and "| hit@5 |" not in printed  # 4 beams: only K ≤ 4 is reported
    result = json.loads((output / RESULTS_FILE).read_text())
    assert result["users"] == 6 and set(result["pilot"]) == {"hit@4", "ndcg@4"}
    assert len((output / PREDICTIONS_FILE).read_text().splitlines()) == 6
    assert main(beauty_args(saved_model, data, output, "--limit", "8")) == 0  # resumes: two more users only
    assert len((output / PREDICTIONS_FILE).read_text().splitlines()) == 8
    assert main(beauty_args(saved_model, tmp_path / "nowhere", output)) == 2
    assert "has no item_random_indexing.txt" in capsys.readouterr().err
