"""Benchmark names, sources, row validation (index reporting, skip or refuse), and prompts."""

import json

import pytest

from tcopilot_peft.data import alpaca_prompt
from tcopilot_peft.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkSource,
    DataError,
    Example,
    RowProblem,
    get_benchmark,
    load_benchmark,
    resolve_sources,
    validate_row,
)
from tests.evaluation.conftest import write_json


GOOD = {"instruction": "1+1?", "input": "", "output": "the answer is 2", "answer": "2"}


def test_names_aliases_and_unknown_names():
    assert get_benchmark("GSM8K").name == "gsm8k"
    assert get_benchmark("siqa") is get_benchmark("social_i_qa") is get_benchmark("Social-I-QA")
    assert get_benchmark("arc_challenge").name == "ARC-Challenge"
    assert {spec.group for spec in BENCHMARKS} == {"arithmetic", "commonsense"}
    with pytest.raises(DataError, match="unknown benchmark 'mmlu'; known: gsm8k"):
        get_benchmark("mmlu")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (["not", "an", "object"], "expected an object with instruction, answer, got list"),
        ({"input": ""}, "missing fields 'instruction', 'answer'"),
        ({"instruction": "q"}, "missing field 'answer'"),
        ({"instruction": "q", "answer": None}, "missing field 'answer'"),
        ({"instruction": 3, "answer": "2"}, "'instruction' must be a non-empty string, got int"),
        ({"instruction": "  ", "answer": "2"}, "'instruction' must be a non-empty string, got str"),
        ({"instruction": "q", "input": ["x"], "answer": "2"}, "'input' must be a string, got list"),
        ({"instruction": "q", "output": 5, "answer": "2"}, "'output' must be a string, got int"),
        ({"instruction": "q", "answer": "two"}, "'answer' 'two' is not a finite number for gsm8k"),
        ({"instruction": "q", "answer": True}, "'answer' True is not a finite number for gsm8k"),
    ],
)
def test_malformed_rows_are_named(row, reason):
    problem = validate_row(row, 7, get_benchmark("gsm8k"))
    assert problem == RowProblem(7, reason, unusable=problem.unusable)
    assert str(problem) == f"row 7: {reason}"


def test_valid_rows_become_examples():
    example = validate_row(GOOD, 3, get_benchmark("gsm8k"))
    assert example == Example(3, "1+1?", "", 2.0, "the answer is 2")
    assert example.prompt == alpaca_prompt("1+1?")
    with_input = validate_row({"instruction": "q", "input": "ctx", "answer": 4}, 0, get_benchmark("svamp"))
    assert "### Input:\nctx" in with_input.prompt and with_input.gold == 4.0
    # No output: the reference answer (what `explain` traces) falls back to the gold answer.
    assert with_input.reference == "4"
    assert validate_row({"instruction": "q", "answer": "answer9"}, 0, get_benchmark("siqa")).reason.endswith(
        "is not one of answer1/answer2/answer3/answer4/answer5 for social_i_qa"
    )
    assert validate_row({"instruction": "q", "answer": "C"}, 0, get_benchmark("aqua")).gold == "C"


def test_bad_rows_are_refused_or_skipped_with_their_index(tmp_path):
    rows = [GOOD, {"instruction": "q"}, GOOD, {"instruction": "q", "answer": "x"}, GOOD]
    source = BenchmarkSource(get_benchmark("gsm8k"), str(write_json(tmp_path / "rows.json", rows)))
    with pytest.raises(DataError, match=r"2 malformed rows .*row 1: missing field 'answer'; row 3: 'answer' 'x'"):
        load_benchmark(source, on_bad_rows="error")
    loaded = load_benchmark(source, on_bad_rows="skip")
    assert [e.index for e in loaded.examples] == [0, 2, 4]
    assert [p.index for p in loaded.problems] == [1, 3]
    # --limit reads the first rows only: the bad row 3 is then not read at all.
    assert [e.index for e in load_benchmark(source, on_bad_rows="error", limit=1).examples] == [0]
    with pytest.raises(DataError, match="row 1"):
        load_benchmark(source, on_bad_rows="error", limit=2)


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    rows = [{"instruction": "q", "answer": "x"}] * 3
    source = BenchmarkSource(get_benchmark("gsm8k"), str(write_json(tmp_path / "rows.json", rows)))
    with pytest.raises(DataError, match="3 malformed rows .* so no row is left to score"):
        load_benchmark(source, on_bad_rows="skip")


def test_empty_unusable_and_unreadable_sources(tmp_path):
    spec = get_benchmark("gsm8k")
    for name, content in [("empty.json", "[]"), ("blank.json", "  \n"), ("empty.jsonl", "\n\n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match="is empty"):
            load_benchmark(BenchmarkSource(spec, str(tmp_path / name)))
    other_format = write_json(tmp_path / "other.json", [{"question": "q", "label": 1}] * 2)
    with pytest.raises(DataError, match="has no usable fields: no row has both 'instruction' and 'answer'"):
        load_benchmark(BenchmarkSource(spec, str(other_format)), on_bad_rows="skip")
    (tmp_path / "broken.json").write_text('[{"instruction": ')
    with pytest.raises(DataError, match="not valid JSON"):
        load_benchmark(BenchmarkSource(spec, str(tmp_path / "broken.json")))
    write_json(tmp_path / "object.json", {"data": []})
    with pytest.raises(DataError, match="expected a JSON list of rows, got dict"):
        load_benchmark(BenchmarkSource(spec, str(tmp_path / "object.json")))


def test_jsonl_rows_and_a_damaged_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n" + json.dumps(GOOD) + "\n")
    loaded = load_benchmark(BenchmarkSource(get_benchmark("gsm8k"), str(path)), on_bad_rows="skip")
    assert [e.index for e in loaded.examples] == [0, 2]
    assert loaded.problems[0].index == 1 and "not valid JSON" in loaded.problems[0].reason


def test_sources_from_files_folders_and_collections(tmp_path):
    collection = tmp_path / "llm_adapters"
    write_json(collection / "gsm8k" / "test.json", [GOOD])
    write_json(collection / "boolq" / "test.json", [GOOD])
    (collection / "math_data.json").write_text("[]")  # a stray file beside the folders is not a benchmark
    names = [source.spec.name for source in resolve_sources([str(collection)])]
    assert names == ["gsm8k", "boolq"]  # arithmetic first, as in the paper's tables
    assert resolve_sources([str(collection / "gsm8k")])[0].spec.name == "gsm8k"
    assert resolve_sources([str(collection / "gsm8k" / "test.json")])[0].spec.name == "gsm8k"
    named = resolve_sources([f"svamp={collection / 'gsm8k' / 'test.json'}"])[0]
    assert named.spec.name == "SVAMP" and named.location.endswith("test.json")
    write_json(tmp_path / "piqa.jsonl", [GOOD])
    assert resolve_sources([str(tmp_path / "piqa.jsonl")])[0].spec.name == "piqa"
    hub = resolve_sources(["someone/boolq"], split="validation")[0]
    assert (hub.spec.name, hub.location, hub.split, hub.is_local) == ("boolq", "someone/boolq", "validation", False)


def test_source_errors(tmp_path):
    with pytest.raises(DataError, match="data path not found"):
        resolve_sources([str(tmp_path / "missing.json")])
    with pytest.raises(DataError, match="holds no benchmark"):
        resolve_sources([str(tmp_path)])
    write_json(tmp_path / "mystery" / "test.json", [GOOD])
    with pytest.raises(DataError, match="unknown benchmark 'mystery'"):
        resolve_sources([str(tmp_path)])
    assert resolve_sources([f"gsm8k={tmp_path / 'mystery'}"])[0].spec.name == "gsm8k"


def test_the_shared_test_sets_load_cleanly(shared_data):
    sources = resolve_sources([str(shared_data)])
    assert len(sources) == 14  # every folder is a known benchmark (HellaSwag is not shipped)
    for source in sources:
        loaded = load_benchmark(source, on_bad_rows="error", limit=50)
        assert len(loaded.examples) == 50 and not loaded.problems


def test_datasets_names_are_loaded_and_checked(monkeypatch):
    import datasets

    tables = {
        "me/gsm8k": datasets.Dataset.from_list([GOOD, {**GOOD, "answer": "x"}]),
        "me/other": datasets.Dataset.from_list([{"question": "q", "label": 1}]),
    }

    def fake_load_dataset(name, split):
        if name not in tables:
            raise ConnectionError(f"offline: cannot reach {name}\nsecond line")
        return tables[name]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_benchmark(resolve_sources(["me/gsm8k"])[0], on_bad_rows="skip")
    assert [e.index for e in loaded.examples] == [0] and loaded.problems[0].index == 1
    with pytest.raises(DataError, match=r"has no usable fields: missing instruction, answer; found \['label'"):
        load_benchmark(resolve_sources(["gsm8k=me/other"])[0])
    with pytest.raises(DataError, match="loading it as a datasets name .* failed: offline: cannot reach me/svamp$"):
        load_benchmark(resolve_sources(["me/svamp"])[0])
