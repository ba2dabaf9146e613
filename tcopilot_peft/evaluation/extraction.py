"""Answer extraction and scoring for the LLM-Adapters benchmarks, as small pure functions.

These follow the rules of LLM-Adapters' `evaluate.py` and `commonsense_evaluate.py`, which the paper's numbers
(and every LoRA-variant paper it is compared with) are computed by:

* arithmetic (GSM8K, SVAMP, MAWPS, AddSub, MultiArith, SingleEq): commas are removed, the *last* match of
  `-?\\d+\\.?\\d*` is the prediction, and it is correct when within 0.001 of the gold number;
* commonsense (BoolQ, PIQA, SIQA, ARC, OBQA, WinoGrande, HellaSwag): the *first* occurrence of one of the benchmark's
  answer labels (`true`/`false`, `solution1`/`solution2`, `answer1`..`answer5`, `option1`/`option2`,
  `ending1`..`ending4`), case-sensitive, is the prediction, and it must equal the gold label;
* AQuA: the option letter. LLM-Adapters takes the first capital A-E anywhere in the text, which also fires on the
  article "A" or a name such as "Bob" (on the test set's own reference outputs it disagrees with their stated
  "The answer is (X)" 34 times in 254). Here the stated answer wins: the last "answer is (X)", else the last "(X)",
  else the first stand-alone letter A-E.

Every function accepts arbitrary text and never raises; "no answer found" is `None`, which is never correct.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal


AnswerFormat = Literal["number", "letter", "label"]
NUMBER_TOLERANCE = 1e-3  # LLM-Adapters' `miss = 0.001`
OPTION_LETTERS = ("A", "B", "C", "D", "E")

# ASCII digits only: `\d` would also match other scripts' digits, which the reference outputs never contain.
_NUMBER = re.compile(r"-?[0-9]+\.?[0-9]*")
# "answer is" in any case, but the letter itself upper-case: "the answer is a car" states no option.
_STATED_OPTION = re.compile(r"(?i:answer is)\s*:?\s*\(?([A-E])\b")
_PARENTHESISED_OPTION = re.compile(r"\(([A-E])\)")
_BARE_OPTION = re.compile(r"\b([A-E])\b")


def extract_last_number(text: str) -> float | None:
    """The last number in `text` (thousands separators removed), or `None` when there is none.

    Args:
        text (`str`): a model's completion.

    Returns:
        `float` or `None`. A number too large for a float becomes `inf` (which matches no gold answer).
    """
    matches = _NUMBER.findall(text.replace(",", ""))
    return float(matches[-1]) if matches else None


def extract_option_letter(text: str) -> str | None:
    """The AQuA option letter a completion states (see the module docstring for the order of rules), or `None`."""
    stated = _STATED_OPTION.findall(text)
    if stated:
        return stated[-1]
    parenthesised = _PARENTHESISED_OPTION.findall(text)
    if parenthesised:
        return parenthesised[-1]
    bare = _BARE_OPTION.search(text)
    return bare.group(1) if bare else None


def extract_first_label(text: str, labels: Sequence[str]) -> str | None:
    """The first of `labels` to occur in `text` (case-sensitive, as in LLM-Adapters), or `None`.

    Longer labels are tried first at each position, so `answer10` would never be read as `answer1`.
    """
    if not labels:
        return None
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    match = re.search(alternatives, text)
    return match.group(0) if match else None


def extract_answer(text: str, answer_format: AnswerFormat, labels: Sequence[str] = ()) -> float | str | None:
    """Dispatch to the extractor of `answer_format` (`"number"`, `"letter"` or `"label"`)."""
    if answer_format == "number":
        return extract_last_number(text)
    if answer_format == "letter":
        return extract_option_letter(text)
    if answer_format == "label":
        return extract_first_label(text, labels)
    raise ValueError(f"unknown answer format {answer_format!r}; expected 'number', 'letter' or 'label'")


def answers_match(prediction: float | str | None, gold: float | str) -> bool:
    """Whether an extracted prediction counts as correct against the gold answer.

    Numbers match within `NUMBER_TOLERANCE` (absolute); labels and letters match exactly; `None` never matches.
    """
    if prediction is None:
        return False
    if isinstance(gold, float):
        return (
            isinstance(prediction, float) and math.isfinite(prediction) and abs(prediction - gold) <= NUMBER_TOLERANCE
        )
    return prediction == gold


def parse_number(value: object) -> float | None:
    """A gold numeric answer (`"576.0"`, `"1,000"`, `12`) as a finite float, or `None` when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        number = float(value.replace(",", "").strip()) if isinstance(value, str) else float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
