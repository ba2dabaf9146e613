"""SASRec (Kang & McAuley, 2018) through RecBole: the sequential recommender a user would pick instead, as a reference
for the recommendation benchmark (`run_recommendation.py --sasrec`), on the benchmark's own users and split.

RecBole is an optional, benchmark-only dependency (the package and the tests never need it):

    pip install --no-deps recbole==1.2.1 && pip install colorlog texttable tensorboard thop

(`--no-deps`: RecBole 1.2.1 pins `ray`, `plotly` and old `colorama` for features this reference does not use, and
would otherwise pull them in.) RecBole gives the data pipeline and the model; the loop below trains it and ranks with
our own code, because RecBole 1.2.1's evaluator calls `np.float`, which numpy 2 removed, and its trainer writes
TensorBoard logs into the working directory.

The split is ours: RecBole reads the users' whole sequences from an atomic `.inter` file whose timestamp is each
item's position, so its time ordering (`order: TO`) is the sequence order and its leave-one-out
(`split: {LS: valid_and_test}`) holds out the same last item for test and second-to-last for validation; its training
rows are every earlier prefix with its next item, histories cut to the same `max_history` most recent items. Every
item id of the mapping is declared in an `.item` file, so SASRec ranks the same 12,101 items as the Pilots.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch

from tcopilot_peft.evaluation.recommendation import ranking_metrics


DATASET = "beauty"
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token"
# RecBole's default batch (2048) gives 9 updates an epoch on the benchmark's ~17k training rows; 256 gave a higher
# validation NDCG after 5 epochs (1.39 vs 0.85 points NDCG@20, seed 0, 3000 users) for the same time.
BATCH_SIZE = 256
MAX_EPOCHS, PATIENCE = 200, 10
# The numpy aliases RecBole 1.2.1's own code still uses (`np.float`, `np.long`, ...), by their numpy 2 names.
NUMPY_ALIASES = {"bool": np.bool_, "int": np.int_, "float": np.float64, "complex": np.complex128}
NUMPY_ALIASES |= {"object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.str_}


def inter_rows(users) -> list[str]:
    """RecBole's `.inter` lines (header first) for `users`' whole sequences: time = the item's position."""
    rows = [INTER_HEADER]
    for sequence in users:
        rows += [f"{sequence.user}\t{item}\t{position}" for position, item in enumerate(sequence.items)]
    return rows


def held_out(users, split: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """Per user, the history before and the item of `split` ("validation": second-to-last, "test": the last)."""
    end = {"validation": -2, "test": -1}[split]
    return [u.items[:end] for u in users], [u.items[end] for u in users]


def write_atomic_files(users, item_ids, folder: Path) -> Path:
    """`folder/beauty/beauty.{inter,item}`; returns `folder` (RecBole's `data_path`)."""
    (folder / DATASET).mkdir(parents=True, exist_ok=True)
    (folder / DATASET / f"{DATASET}.inter").write_text("\n".join(inter_rows(users)) + "\n")
    (folder / DATASET / f"{DATASET}.item").write_text("\n".join([ITEM_HEADER, *sorted(item_ids, key=int)]) + "\n")
    return folder


def recbole_training(users, item_ids, folder: Path, max_history: int, seed: int, **settings):
    """RecBole's SASRec model and its training data loader for `users`, seeded; `settings` override RecBole's."""
    anomaly_detection = torch.is_anomaly_enabled()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import init_seed

    # Importing RecBole's sequential models turns autograd's anomaly detection on for the whole process (its SINE
    # module calls `set_detect_anomaly(True)` at import): slower, and it makes any later NaN gradient an exception.
    torch.autograd.set_detect_anomaly(anomaly_detection)

    options = {
        "data_path": str(write_atomic_files(users, item_ids, folder)),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": max_history,
        "train_neg_sample_args": None,  # SASRec's cross-entropy over every item needs no negative samples
        "seed": seed,
        "show_progress": False,
        "use_gpu": torch.cuda.is_available(),
        **settings,
    }
    # RecBole's Config also reads `--key=value` options from sys.argv; the benchmark's own options are not for it.
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        config = _numpy_two(Config)(model="SASRec", dataset=DATASET, config_dict=options)
    init_seed(seed, reproducibility=True)
    with warnings.catch_warnings():
        # pandas 3 warns that RecBole's in-place `fillna` of missing values does nothing; the files written above
        # have none to fill.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", pd.errors.ChainedAssignmentError)
        dataset = create_dataset(config)
        train_data, _, _ = data_preparation(config, dataset)
    init_seed(seed, reproducibility=True)
    return SASRec(config, train_data.dataset).to(config["device"]), train_data, config


def _numpy_two(config_class):
    """Compatibility shim for numpy 2: RecBole 1.2.1's `Config.compatibility_settings` restores the numpy aliases its
    own code still uses from names numpy 2 removed as well (`np.float_`, `np.unicode_`, ...), and fails; this subclass
    sets the same aliases (`NUMPY_ALIASES`) from their numpy 2 names."""

    class Numpy2Config(config_class):
        def compatibility_settings(self):
            for name, numpy_type in NUMPY_ALIASES.items():
                setattr(np, name, numpy_type)

    return Numpy2Config


@torch.no_grad()
def rank(model, dataset, histories, k: int, max_history: int, batch_size: int = 512) -> list[list[str]]:
    """Per history, the `k` best of every item by SASRec's score (RecBole's padding id excluded), best first."""
    from recbole.data.interaction import Interaction

    model.eval()
    field = dataset.iid_field
    ranked = []
    for start in range(0, len(histories), batch_size):
        rows = [dataset.token2id(field, list(h[-max_history:])) for h in histories[start : start + batch_size]]
        sequences = torch.zeros(len(rows), max_history, dtype=torch.long)
        for i, row in enumerate(rows):
            sequences[i, : len(row)] = torch.as_tensor(row)  # RecBole's layout: oldest first, padding after
        lengths = torch.tensor([len(row) for row in rows])
        batch = Interaction({model.ITEM_SEQ: sequences, model.ITEM_SEQ_LEN: lengths}).to(model.device)
        scores = model.full_sort_predict(batch)
        scores[:, 0] = -torch.inf
        top = scores.topk(k).indices.cpu().tolist()
        ranked += [[str(item) for item in dataset.id2token(field, row)] for row in top]
    return ranked


def train_sasrec(
    users, item_ids, test_users, folder: Path, seed: int, k: int, max_history: int, batch_size: int = BATCH_SIZE,
    max_epochs: int = MAX_EPOCHS, patience: int = PATIENCE,
) -> dict:  # fmt: skip
    """SASRec trained on `users`' training rows, kept at the epoch of best mean validation NDCG@`k` (our metric code;
    training stops `patience` epochs after it, or at `max_epochs`); then `test_users`' test rankings.

    Returns `{"ranked", "epoch", "validation_ndcg" (per epoch), "train_seconds", "batch_size", "patience"}`."""
    model, train_data, config = recbole_training(
        users, item_ids, folder, max_history, seed, train_batch_size=batch_size
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    histories, targets = held_out(users, "validation")
    curve, best_epoch, best_state, began = [], 0, None, time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        model.train()
        for batch in train_data:
            optimizer.zero_grad()
            model.calculate_loss(batch.to(model.device)).backward()
            optimizer.step()
        ranked = rank(model, train_data.dataset, histories, k, max_history)
        curve.append(ranking_metrics(ranked, targets, (k,))[f"ndcg@{k}"])
        if curve[-1] > max(curve[:-1], default=-1.0):
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    seconds = time.perf_counter() - began
    model.load_state_dict(best_state)
    test_histories, _ = held_out(test_users, "test")
    return {
        "ranked": rank(model, train_data.dataset, test_histories, k, max_history),
        "epoch": best_epoch,
        "validation_ndcg": curve,
        "train_seconds": seconds,
        "batch_size": batch_size,
        "patience": patience,
    }
