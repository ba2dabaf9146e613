"""Answer extraction on real rows of the shared LLM-Adapters test sets, and on arbitrary text (hypothesis)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcopilot_peft.evaluation.benchmarks import BENCHMARKS, get_benchmark
from tcopilot_peft.evaluation.extraction import (
    answers_match,
    extract_answer,
    extract_first_label,
    extract_last_number,
    extract_option_letter,
    parse_number,
)
from tests.evaluation.conftest import read_rows


def is_correct(benchmark: str, completion: str, answer) -> bool:
    spec = get_benchmark(benchmark)
    return answers_match(extract_answer(completion, spec.answer_format, spec.labels), spec.parse_gold(answer))


# The test sets' `output` fields are a model's chain-of-thought answers, some right and some wrong. Indices checked by
# hand against each row's `answer`; the totals are what LLM-Adapters' own `extract_answer_number` gives on the file.
NUMERIC_ROWS = {
    # benchmark: (rows whose output is right, rows whose output is wrong, right outputs in the whole file)
    "gsm8k": ((0, 2, 3), (1, 4), 771),
    "SVAMP": ((1, 2), (0, 8), 803),
    "AddSub": ((0, 1), (7, 14), 370),
    "MultiArith": ((0, 2), (1, 50), 560),
    "SingleEq": ((0, 1), (72, 84), 484),
}


@pytest.mark.parametrize("benchmark", sorted(NUMERIC_ROWS))
def test_last_number_on_real_outputs(shared_data, benchmark):
    right, wrong, total = NUMERIC_ROWS[benchmark]
    rows = read_rows(shared_data, benchmark)
    for index in right:
        assert is_correct(benchmark, rows[index]["output"], rows[index]["answer"]), (benchmark, index)
    for index in wrong:
        assert not is_correct(benchmark, rows[index]["output"], rows[index]["answer"]), (benchmark, index)
    assert sum(is_correct(benchmark, row["output"], row["answer"]) for row in rows) == total


def test_gsm8k_row_details(shared_data):
    row = read_rows(shared_data, "gsm8k")[0]
    assert row["answer"] == "576.0" and row["output"].endswith("The answer is 576.")
    assert extract_last_number(row["output"]) == 576.0
    # Within the 0.001 tolerance, but not beyond it; thousands separators are ignored.
    assert is_correct("gsm8k", "so 576.0004 tiles", row["answer"])
    assert not is_correct("gsm8k", "so 576.01 tiles", row["answer"])
    assert extract_last_number("It costs $1,234.5 in total") == 1234.5
    # A number too long for a float is infinite, and matches nothing.
    assert extract_last_number("9" * 400) == math.inf and not is_correct("gsm8k", "9" * 400, "1")


def test_mawps_real_rows_with_constructed_completions(shared_data):
    # MAWPS rows carry no output; the gold answers are long floats such as 1.8333333333333335.
    for row in read_rows(shared_data, "mawps")[:20]:
        gold = float(row["answer"])
        assert not is_correct("mawps", row["output"], row["answer"])  # empty output: no number, never correct
        assert is_correct("mawps", f"The difference is {gold:.6f} inches.", row["answer"])
        assert not is_correct("mawps", f"The difference is {gold + 1:.6f} inches.", row["answer"])


def test_aqua_letters_on_real_outputs(shared_data):
    rows = read_rows(shared_data, "AQuA")
    # Row 0 states (D) for gold A, row 2 (C) for gold D: wrong. Rows 1, 3, 4 state their gold letter.
    assert [is_correct("AQuA", rows[i]["output"], rows[i]["answer"]) for i in range(5)] == [
        False,
        True,
        False,
        True,
        True,
    ]
    assert extract_option_letter(rows[0]["output"]) == "D"
    assert sum(is_correct("AQuA", row["output"], row["answer"]) for row in rows) == 123


def test_aqua_stated_answer_beats_stray_capitals():
    # LLM-Adapters' first-capital rule would read "A" (the article) or "B" (Bob) here.
    assert extract_option_letter("A train leaves. Bob waits. The answer is (C).") == "C"
    assert extract_option_letter("Answer Choices: (A) 1 (B) 2 (C) 3. The answer is E") == "E"
    assert extract_option_letter("I pick (B), not (A)... final: (D)") == "D"
    assert extract_option_letter("the answer is a car") is None
    assert extract_option_letter("D") == "D"
    assert extract_option_letter("no letter here") is None


COMMONSENSE = ["boolq", "piqa", "social_i_qa", "ARC-Challenge", "ARC-Easy", "openbookqa", "winogrande"]


@pytest.mark.parametrize("benchmark", COMMONSENSE)
def test_labels_on_real_rows(shared_data, benchmark):
    spec = get_benchmark(benchmark)
    rows = read_rows(shared_data, benchmark)
    # Every reference output ("the correct answer is answer3") states its gold label.
    assert all(is_correct(benchmark, row["output"], row["answer"]) for row in rows)
    for row in rows[:25]:
        other = next(label for label in spec.labels if label != row["answer"])
        assert not is_correct(benchmark, row["output"].replace(row["answer"], other), row["answer"])
        # The first label stated counts, as in LLM-Adapters.
        assert is_correct(benchmark, f"{row['answer']}, or maybe {other}", row["answer"])
        assert not is_correct(benchmark, f"{other}, or maybe {row['answer']}", row["answer"])
        assert not is_correct(benchmark, row["output"].upper(), row["answer"])  # case-sensitive


def test_label_details():
    assert extract_first_label("the correct answer is answer3", ("answer1", "answer2", "answer3")) == "answer3"
    assert extract_first_label("answer12", ("answer1", "answer12")) == "answer12"  # longest label wins
    assert extract_first_label("no label", ("true", "false")) is None
    assert extract_first_label("true", ()) is None


def test_gold_answers_are_parsed_per_format():
    assert parse_number("1,000") == 1000.0 and parse_number(7) == 7.0
    for bad in ("", "abc", "nan", "inf", True, None, [1], {"a": 1}):
        assert parse_number(bad) is None
    assert get_benchmark("boolq").parse_gold(" true ") == "true"
    assert get_benchmark("boolq").parse_gold("yes") is None
    assert get_benchmark("aqua").parse_gold("F") is None
    assert get_benchmark("aqua").parse_gold(1) is None


# ---------------------------------------------------------------------- arbitrary text


@given(st.text())
def test_extraction_never_crashes(text):
    for spec in BENCHMARKS:
        prediction = extract_answer(text, spec.answer_format, spec.labels)
        if spec.answer_format == "number":
            assert prediction is None or isinstance(prediction, float)
        elif spec.answer_format == "letter":
            assert prediction in (None, "A", "B", "C", "D", "E")
        else:
            assert prediction is None or prediction in spec.labels
        for gold in (1.0, "A", spec.labels[0] if spec.labels else "x"):
            assert isinstance(answers_match(prediction, gold), bool)


@given(st.text(alphabet=st.characters(blacklist_categories=("Nd",))), st.integers(-(10**12), 10**12))
def test_the_last_number_is_found_after_any_digit_free_text(prefix, number):
    assert extract_last_number(f"{prefix} The answer is {number}.") == float(number)


@given(st.text(), st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))
def test_a_stated_gold_number_is_always_correct_when_last(prefix, gold):
    assert answers_match(extract_last_number(f"{prefix}\nThe answer is {gold:.4f}"), float(f"{gold:.4f}"))


@given(st.text(alphabet=st.sampled_from("0123456789.,- e+")))
def test_number_soup_never_crashes(text):
    result = extract_last_number(text)
    assert result is None or isinstance(result, float)


@given(st.text(alphabet=st.characters(blacklist_characters="ABCDE")), st.sampled_from("ABCDE"))
def test_a_stated_option_is_found_after_any_text(prefix, letter):
    assert extract_option_letter(f"{prefix} The answer is ({letter}).") == letter
