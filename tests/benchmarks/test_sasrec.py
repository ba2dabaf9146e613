"""The SASRec reference's conversion of the benchmark's users into RecBole's atomic files: RecBole must hold out the
same items and train on the same rows as our leave-one-out split, or SASRec would be scored on another task."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tcopilot_peft.evaluation.recommendation import UserSequence, leave_one_out


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sasrec import INTER_HEADER, held_out, inter_rows, write_atomic_files  # noqa: E402


USERS = [
    UserSequence("7", ("1001", "1002", "1013", "2040", "2041")),
    UserSequence("3", ("2041", "1001", "1001", "977")),  # a repeated item, and a user listed after a larger id
]
ITEMS = {"1001", "1002", "1013", "2040", "2041", "977", "5000"}  # 5000: in the mapping, in no sequence


def test_inter_rows_keep_each_users_order_as_time():
    assert inter_rows(USERS) == [
        INTER_HEADER,
        "7\t1001\t0", "7\t1002\t1", "7\t1013\t2", "7\t2040\t3", "7\t2041\t4",
        "3\t2041\t0", "3\t1001\t1", "3\t1001\t2", "3\t977\t3",
    ]  # fmt: skip


def test_held_out_items_are_the_leave_one_out_targets():
    splits = leave_one_out(USERS)
    for split in ("validation", "test"):
        histories, targets = held_out(USERS, split)
        assert targets == [row["completion"] for row in splits[split]]
        assert [" , ".join(h) in row["prompt"] for h, row in zip(histories, splits[split])] == [True, True]
    assert held_out(USERS, "test")[0][1] == ("2041", "1001", "1001")


def test_the_item_file_declares_every_mapped_item(tmp_path):
    write_atomic_files(USERS, ITEMS, tmp_path)
    assert (tmp_path / "beauty" / "beauty.item").read_text().split("\n")[1:-1] == sorted(ITEMS, key=int)
    assert (tmp_path / "beauty" / "beauty.inter").read_text().splitlines() == inter_rows(USERS)


def test_recbole_trains_on_our_training_rows_and_ranks_every_item(tmp_path, monkeypatch):
    pytest.importorskip("recbole", reason="RecBole is an optional benchmark-only dependency")
    from sasrec import NUMPY_ALIASES, rank, recbole_training

    for name, numpy_type in NUMPY_ALIASES.items():  # RecBole sets them on numpy; gone again after this test
        monkeypatch.setattr(np, name, numpy_type, raising=False)

    model, train_data, _ = recbole_training(USERS, ITEMS, tmp_path, max_history=2, seed=0)
    dataset = train_data.dataset
    assert dataset.item_num == len(ITEMS) + 1  # RecBole's padding id, then every mapped item
    users = dataset.id2token(dataset.uid_field, dataset.inter_feat[dataset.uid_field].numpy())
    targets = dataset.id2token(dataset.iid_field, dataset.inter_feat[dataset.iid_field].numpy())
    histories = dataset.inter_feat[dataset.iid_field + "_list"].numpy()
    theirs = sorted(
        (str(u), " , ".join(dataset.id2token(dataset.iid_field, h[h > 0])), str(t))
        for u, h, t in zip(users, histories, targets)
    )
    ours = sorted((r["user"], r["prompt"].split("items ")[1].split(".")[0], r["completion"]) for r in
                  leave_one_out(USERS, max_history=2)["train"])  # fmt: skip
    assert theirs == ours
    ranked = rank(model, dataset, held_out(USERS, "test")[0], k=len(ITEMS), max_history=2)
    assert [sorted(items) for items in ranked] == [sorted(ITEMS)] * 2
