"""Synthetic text tasks for the offline demo: a broad pre-training mixture, and a finite reasoning-style task.

Everything is generated from a seed; nothing is downloaded. All text uses the characters of
`tcopilot_peft.toy.char_tokenizer`.

* The **pre-training mixture** teaches single skills: addition, subtraction, single-digit multiplication, digit
  sorting, reversal, copying, counting and maximum.
* The **fine-tuning tasks** compose them with a short worked solution written in the skills' own formats, e.g.
  `sortrev 52814` → `sort 52814:12458. rev 12458:85421. answer 85421`. A Pilot pre-trained on the single skills gets
  them partly right and makes systematic mistakes on the way (the regime where the paper's Copilot is meant to
  help). Two harder arithmetic compositions are kept for Pilots that learned arithmetic.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from datasets import Dataset


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return f"add {a}+{b}=", f"{a + b}"


def _subtraction(rng: random.Random) -> tuple[str, str]:
    a, b = sorted((rng.randint(0, 999), rng.randint(0, 999)), reverse=True)
    return f"sub {a}-{b}=", f"{a - b}"


def _multiplication(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 9)
    return f"mul {a}*{b}=", f"{a * b}"


def _sort_digits(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 8)))
    return f"sort {digits}:", "".join(sorted(digits))


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
    return f"rev {word}:", word[::-1]


def _copy(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(3, 10)))
    return f"copy {word}:", word


def _count(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice("abc") for _ in range(rng.randint(3, 12)))
    return f"count a {word}:", str(word.count("a"))


def _maximum(rng: random.Random) -> tuple[str, str]:
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(2, 5))]
    return f"max {','.join(map(str, numbers))}:", str(max(numbers))


PRETRAINING_SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "sort": _sort_digits,
    "reverse": _reverse,
    "copy": _copy,
    "count": _count,
    "maximum": _maximum,
}


def pretraining_text(rng: random.Random) -> str:
    """One pre-training line: a random skill's prompt and answer."""
    prompt, answer = rng.choice(list(PRETRAINING_SKILLS.values()))(rng)
    return f"{prompt}{answer}"


def sum_then_product(rng: random.Random) -> dict[str, str]:
    """`(a+b)*c` with a worked solution, the demo's fine-tuning task."""
    a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
    total = a + b
    return {
        "prompt": f"q ({a}+{b})*{c}\n",
        "completion": f"{a}+{b}={total}. {total}*{c}={total * c}. answer {total * c}",
        "answer": str(total * c),
    }


def difference_then_product(rng: random.Random) -> dict[str, str]:
    """`(a-b)*c` with a worked solution, a second task family for the benchmarks."""
    a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
    c = rng.randint(2, 9)
    difference = a - b
    return {
        "prompt": f"q ({a}-{b})*{c}\n",
        "completion": f"{a}-{b}={difference}. {difference}*{c}={difference * c}. answer {difference * c}",
        "answer": str(difference * c),
    }


def sort_then_reverse(rng: random.Random) -> dict[str, str]:
    """Sort the digits, then reverse them (descending order), with the two steps written out."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 8)))
    ascending = "".join(sorted(digits))
    return {
        "prompt": f"q sortrev {digits}\n",
        "completion": f"sort {digits}:{ascending}. rev {ascending}:{ascending[::-1]}. answer {ascending[::-1]}",
        "answer": ascending[::-1],
    }


def count_then_max(rng: random.Random) -> dict[str, str]:
    """Count the a's in each of three words, then take the largest count."""
    words = ["".join(rng.choice("abc") for _ in range(rng.randint(3, 9))) for _ in range(3)]
    counts = [w.count("a") for w in words]
    steps = " ".join(f"count a {w}:{c}." for w, c in zip(words, counts))
    listed = ",".join(map(str, counts))
    return {
        "prompt": f"q maxcount {' '.join(words)}\n",
        "completion": f"{steps} max {listed}:{max(counts)}. answer {max(counts)}",
        "answer": str(max(counts)),
    }


FINE_TUNING_TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "sort_then_reverse": sort_then_reverse,
    "count_then_max": count_then_max,
    "sum_then_product": sum_then_product,
    "difference_then_product": difference_then_product,
}


def task_splits(task: str, train: int, validation: int, test: int, seed: int = 0) -> dict[str, Dataset]:
    """Disjoint train / validation / test splits of a fine-tuning task (no prompt appears in two splits)."""
    if task not in FINE_TUNING_TASKS:
        raise ValueError(f"unknown demo task {task!r}; known: {', '.join(FINE_TUNING_TASKS)}")
    make = FINE_TUNING_TASKS[task]
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for name, size in (("test", test), ("validation", validation), ("train", train)):
        attempts = 0
        while len(splits[name]) < size:
            row = make(rng)
            attempts += 1
            if row["prompt"] in seen:
                if attempts > 50 * (train + validation + test):
                    raise ValueError(f"task {task!r} has too few distinct prompts for the requested splits")
                continue
            seen.add(row["prompt"])
            splits[name].append(row)
    return {name: Dataset.from_list(rows) for name, rows in splits.items()}


def extract_answer(completion: str) -> str | None:
    """The number after the last `answer` in a completion (None when there is none)."""
    _, found, rest = completion.rpartition("answer ")
    if not found:
        return None
    digits = ""
    for character in rest.strip():
        if character.isdigit() or (character == "-" and not digits):
            digits += character
        else:
            break
    return digits or None


def answer_of(row: dict) -> str:
    """The gold answer of a row: its "answer" field, else the one its completion states."""
    return row.get("answer") or extract_answer(row["completion"]) or row["completion"].strip()


def correct(completions: list[str], rows: list[dict]) -> list[bool]:
    """Per row: does the completion's stated answer equal the row's gold answer."""
    return [extract_answer(c) == answer_of(r) for c, r in zip(completions, rows)]
