"""Sequential recommendation, the paper's third task family (SPEC §6, App. F.2): the Amazon Beauty data as OpenP5
processes it, next-item prompts, ranking by beam search constrained to real item ids, and Hit@K / NDCG@K.

Data (`load_user_sequences`): `user_sequence_random_indexing.txt`, one user per line, `user_id item item ...` in
interaction order with OpenP5's random numeric item ids; every id must be one of `item_random_indexing.txt`'s.

Splits (`leave_one_out`), as OpenP5's `generate_dataset*.py` build them: per user the last item is the test target,
the second-to-last the validation target, and every earlier item (from the second on) a training target; the history
before a target is truncated to its `max_history` most recent items (OpenP5's `max_his`, default 10), joined by
" , ". The prompt is the paper's: "Considering {dataset}, user_{id} has interacted with {dataset} items {history}.
What is the next recommendation for the user?"; the completion is the target's numeric id.

Ranking (`rank_items`): beam search with K beams (K = the largest cutoff), every beam constrained by a prefix trie of
the tokenised item ids (`ItemTrie`, through `prefix_allowed_tokens_fn`), so each returned sequence is a real item;
duplicates are removed keeping the best-ranked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .benchmarks import BadRowPolicy, DataError


SEQUENCES_FILE = "user_sequence_random_indexing.txt"
ITEMS_FILE = "item_random_indexing.txt"
PROMPT = (
    "Considering {dataset}, user_{user} has interacted with {dataset} items {history}. "
    "What is the next recommendation for the user?"
)
HISTORY_SEPARATOR = " , "
KS = (5, 10, 20)


def ranking_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int] = KS) -> dict:
    """Hit@K and NDCG@K averaged over users, one relevant item each (leave-one-out).

    NDCG@K = 1 / log2(rank + 1) with the target at `rank` (from 1) within the top K, else 0; the ideal DCG is 1.

    Args:
        ranked: per user, item ids best first (only the first K count for cutoff K).
        targets: per user, the held-out item id.
        ks: the cutoffs.
    """
    if len(ranked) != len(targets) or not targets:
        raise ValueError(f"ranking_metrics needs one ranking per target; got {len(ranked)} and {len(targets)}.")
    metrics = {}
    for k in ks:
        ranks = [
            list(items[:k]).index(target) + 1 if target in items[:k] else None
            for items, target in zip(ranked, targets)
        ]
        metrics[f"hit@{k}"] = sum(rank is not None for rank in ranks) / len(targets)
        metrics[f"ndcg@{k}"] = sum(1 / math.log2(rank + 1) for rank in ranks if rank is not None) / len(targets)
    return metrics


@dataclass(frozen=True)
class UserSequence:
    user: str
    items: tuple[str, ...]


def load_item_ids(folder: str) -> set[str]:
    """The numeric item ids of `item_random_indexing.txt` (`original_id numeric_id` per line, each id once).

    Raises:
        DataError: a missing or empty file, or its first bad line (named with its number): not two fields, a
            non-integer id, an id given twice, or a last line without its line end (a file cut short).
    """
    path = os.path.join(folder, ITEMS_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{folder} has no {ITEMS_FILE} (an OpenP5 data folder holds it beside {SEQUENCES_FILE})")
    numeric_lines: dict[str, int] = {}
    original_lines: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            problem = _item_problem(line, numeric_lines, original_lines)
            if problem is not None:
                raise DataError(f"{path}, line {number}: {problem}")
            original, numeric = line.split()
            original_lines[original] = numeric_lines[numeric] = number
    if not numeric_lines:
        raise DataError(f"{path} holds no item ids")
    return set(numeric_lines)


def load_user_sequences(folder: str, on_bad_rows: BadRowPolicy = "error") -> tuple[list[UserSequence], list[str]]:
    """Every user's interaction sequence; returns the sequences and, under `on_bad_rows="skip"`, what was skipped.

    Raises:
        DataError: a missing or empty file, or (under `"error"`) its first bad line, named with
            its number: an empty line, a non-integer user or item id, a user given twice, fewer than 3 items (the
            leave-one-out split needs a training, a validation and a test item), an item id that
            `item_random_indexing.txt` does not map, or a last line without its line end (a file cut short).
    """
    known = load_item_ids(folder)
    path = os.path.join(folder, SEQUENCES_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{folder} has no {SEQUENCES_FILE} (OpenP5's randomly indexed user sequences)")
    users, skipped = [], []
    user_lines: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            problem = _sequence_problem(line, known, user_lines)
            if problem is None:
                user, *items = line.split()
                users.append(UserSequence(user, tuple(items)))
                user_lines[user] = number
            elif on_bad_rows == "skip":
                skipped.append(f"{path}, line {number}: {problem}")
            else:
                raise DataError(
                    f"{path}, line {number}: {problem} (pass --bad-rows skip to count and skip such lines)"
                )
    if not users and not skipped:
        raise DataError(f"{path} is empty")
    return users, skipped


def _item_problem(line: str, numeric_lines: dict[str, int], original_lines: dict[str, int]) -> str | None:
    fields = line.split()
    if len(fields) != 2 or not _is_integer(fields[1]):
        return _cut_short(line) or f"expected 'original_id numeric_id', got {line.strip()!r}"
    original, numeric = fields
    if numeric in numeric_lines:
        return f"numeric id {numeric} was already given on line {numeric_lines[numeric]}"
    if original in original_lines:
        return f"item {original!r} was already given an id on line {original_lines[original]}"
    return _cut_short(line)


def _sequence_problem(line: str, known: set[str], user_lines: dict[str, int]) -> str | None:
    if not line.strip():
        return "an empty line"
    if not line.endswith("\n"):
        return _cut_short(line)
    user, *items = line.split()
    if not _is_integer(user):
        return f"user id {user!r} is not an integer"
    if user in user_lines:
        return f"user {user} already has a sequence on line {user_lines[user]}"
    malformed = [item for item in items if not _is_integer(item)]
    if malformed:
        return f"item id {malformed[0]!r} is not an integer"
    if len(items) < 3:
        return f"a user needs at least 3 items (train, validation, test), got {len(items)}"
    unknown = [item for item in items if item not in known]
    return f"item id {unknown[0]!r} is not in {ITEMS_FILE}" if unknown else None


def _is_integer(token: str) -> bool:
    return token.isascii() and token.isdigit()


def _cut_short(line: str) -> str | None:
    """OpenP5 ends every line with a line end, so a last line without one is a file cut mid-write or mid-copy: its last
    id may be a fragment of a real one, and reading it as given would silently change that user's targets."""
    return None if line.endswith("\n") else f"no line end after {line.strip()[-20:]!r}: the file looks cut short"


def leave_one_out(users: Sequence[UserSequence], dataset: str = "Beauty", max_history: int = 10) -> dict[str, list]:
    """Prompt/completion rows: `train` (every earlier item of every user), `validation` and `test` (one per user)."""
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    for sequence in users:
        items = sequence.items
        for position in range(1, len(items) - 2):
            splits["train"].append(_row(dataset, sequence.user, items[:position], items[position], max_history))
        splits["validation"].append(_row(dataset, sequence.user, items[:-2], items[-2], max_history))
        splits["test"].append(_row(dataset, sequence.user, items[:-1], items[-1], max_history))
    return splits


def _row(dataset: str, user: str, history: Sequence[str], target: str, max_history: int) -> dict[str, str]:
    recent = HISTORY_SEPARATOR.join(history[-max_history:] if max_history > 0 else history)
    return {"prompt": PROMPT.format(dataset=dataset, user=user, history=recent), "completion": target, "user": user}


class ItemTrie:
    """A prefix trie of the tokenised item ids (each followed by the end-of-sequence token): the tokens that may come
    next after a partial id, for `generate(prefix_allowed_tokens_fn=...)`."""

    def __init__(self, item_ids: Sequence[str], tokenizer):
        self.root: dict[int, dict] = {}
        self.eos = tokenizer.eos_token_id
        self.items = frozenset(item_ids)
        self.longest = 0  # tokens of the longest id, its end token included
        for item in self.items:
            tokens = tokenizer(item, add_special_tokens=False).input_ids + [self.eos]
            self.longest = max(self.longest, len(tokens))
            node = self.root
            for token in tokens:
                node = node.setdefault(token, {})

    def allowed(self, generated: Sequence[int]) -> list[int]:
        node = self.root
        for token in generated:
            if token not in node:
                return [self.eos]  # a finished id: only padding-like end tokens follow
            node = node[token]
        return list(node) or [self.eos]


@torch.inference_mode()
def rank_items(
    model, tokenizer, prompts: Sequence[str], trie: ItemTrie, k: int = max(KS), arm: str = "fused", **generate_kwargs
) -> list:
    """Per prompt, up to `k` distinct item ids ranked by beam search with `k` beams constrained to `trie`; `arm`
    `"pilot"` runs with the Copilot off; `generate_kwargs` (a `logits_processor`, ...) go to `generate`."""
    encoder_decoder = model.config.is_encoder_decoder
    encoded = _encode_prompts(model, tokenizer, prompts, trie.longest)
    start = 1 if encoder_decoder else encoded["input_ids"].shape[1]  # generated tokens begin after this column
    settings = dict(
        num_beams=k,
        num_return_sequences=k,
        do_sample=False,
        max_new_tokens=trie.longest,
        pad_token_id=tokenizer.pad_token_id,
        prefix_allowed_tokens_fn=lambda _, ids: trie.allowed(ids[start:].tolist()),
        **generate_kwargs,
    )
    inputs = {name: encoded[name] for name in ("input_ids", "attention_mask")}
    if arm == "pilot":
        with model.disable_adapter():
            out = model.generate(**inputs, **settings)
    else:
        out = model.generate(**inputs, **settings)
    texts = [text.strip() for text in tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)]
    # When fewer than k ids share the first tokens, beam search also returns beams it could not extend: drop them.
    return [
        [item for item in dict.fromkeys(texts[i * k : (i + 1) * k]) if item in trie.items] for i in range(len(prompts))
    ]


def _encode_prompts(model, tokenizer, prompts: Sequence[str], new_tokens: int):
    """Left-padded prompts on the model's device. A decoder-only Pilot's prompt is cut from the left (the oldest items
    go first) so that it and `new_tokens` fit the Pilot's positions; generation past them would be unreliable."""
    ids = tokenizer(list(prompts))["input_ids"]
    positions = getattr(model.config, "max_position_embeddings", None)
    if not model.config.is_encoder_decoder and positions is not None:
        keep = max(positions - new_tokens, 1)
        ids = [row[-keep:] for row in ids]
    encoded = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True, padding_side="left")
    return encoded.to(model.device)


PREDICTIONS_FILE = "recommendations.jsonl"
RESULTS_FILE = "recommendation_results.json"


def evaluate_recommendation(
    model,
    tokenizer,
    rows: Sequence[dict],
    item_ids: Sequence[str],
    output_dir: str,
    num_beams: int = max(KS),
    batch_size: int = 8,
    restart: bool = False,
    progress: bool = True,
) -> dict:
    """Rank items for every row with the Copilot off and on (same prompts and beams) and score both; per-user rankings
    are appended to `output_dir/recommendations.jsonl` batch by batch, and a rerun resumes from them. `progress`
    shows a bar of users done on stderr.

    Returns `{"pilot": metrics, "fused": metrics, "relative": (fused − pilot) / pilot per metric, "users": n}`.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, PREDICTIONS_FILE)
    done = {} if restart else _finished(path, rows)
    trie = ItemTrie(item_ids, tokenizer)
    pending = [row for row in rows if row["user"] not in done]
    bar = tqdm(total=len(rows), initial=len(rows) - len(pending), desc="beauty", unit="user", disable=not progress)
    with bar, open(path, "w" if restart else "a", encoding="utf-8") as handle:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            prompts = [row["prompt"] for row in batch]
            pilot = rank_items(model, tokenizer, prompts, trie, k=num_beams, arm="pilot")
            fused = rank_items(model, tokenizer, prompts, trie, k=num_beams, arm="fused")
            for row, alone, corrected in zip(batch, pilot, fused):
                record = {"user": row["user"], "target": row["completion"], "pilot": alone, "fused": corrected}
                done[row["user"]] = record
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            bar.update(len(batch))
    records = [done[row["user"]] for row in rows]
    ks = [k for k in KS if k <= num_beams] or [num_beams]
    targets = [record["target"] for record in records]
    result = {arm: ranking_metrics([r[arm] for r in records], targets, ks) for arm in ("pilot", "fused")}
    result["relative"] = {
        name: (result["fused"][name] - value) / value if value else None for name, value in result["pilot"].items()
    }
    result["users"] = len(records)
    with open(os.path.join(output_dir, RESULTS_FILE), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    return result


def _finished(path: str, rows: Sequence[dict]) -> dict[str, dict]:
    """Rankings already written for these rows; a file from other data is refused rather than mixed in."""
    if not os.path.exists(path):
        return {}
    targets = {row["user"]: row["completion"] for row in rows}
    done = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}, line {number}: not JSON; rerun with --restart to discard it") from None
            if targets.get(record.get("user")) != record.get("target"):
                raise DataError(
                    f"{path}, line {number}: user {record.get('user')!r} with target {record.get('target')!r} is not "
                    "in this evaluation's data; use another --output, or --restart to discard it"
                )
            done[record["user"]] = record
    return done


def format_recommendation_table(result: dict) -> str:
    lines = ["| metric | Pilot | Pilot + Copilot | relative change |", "|---|---|---|---|"]
    for name, pilot in result["pilot"].items():
        relative = result["relative"][name]
        change = f"{100 * relative:+.1f}%" if relative is not None else "–"
        lines.append(f"| {name} | {100 * pilot:.2f} | {100 * result['fused'][name]:.2f} | {change} |")
    return "\n".join(lines)
