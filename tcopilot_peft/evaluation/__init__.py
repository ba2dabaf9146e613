"""Evaluating a Pilot and its Copilot on the paper's benchmarks.

* `extraction`: answer extraction and scoring per benchmark (the LLM-Adapters rules).
* `benchmarks`: the benchmarks, their sources (local JSON or a datasets name) and row validation.
* `runner`: one resumable pass that scores the Pilot alone and Pilot + Copilot on the same prompts (`tcopilot eval`).
* `recommendation`: the paper's sequential recommendation (Beauty): leave-one-out prompts, constrained ranking and
  Hit@K/NDCG@K (`ranking_metrics`).
* `scoring`: fused scoring of given continuations, shared by `lm_eval` and `explain`.
* `lm_eval`: `CopilotLM`, the lm-evaluation-harness model (`python -m tcopilot_peft.evaluation` runs lm-eval's CLI;
  needs the `eval` extra).
* `explain`: the paper's Figures 3 and 4 for a prompt or a dataset (`tcopilot explain`; drawing needs matplotlib).
* `statistics`: paired gains with a bootstrap interval, McNemar's test, and the one validation choice rule.
* `diagnostics`: teacher-forced measures of a trained Copilot (error-prediction and cross-entropy skill) and of
  its Pilot's calibration.

Every name in `__all__` can be imported from here (`from tcopilot_peft.evaluation import ranking_metrics`). The
submodules load on first use, so importing this package loads none of them (nor lm-eval) until one of its names
is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any


# Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    # benchmarks
    "BENCHMARKS": "benchmarks",
    "BenchmarkSource": "benchmarks",
    "BenchmarkSpec": "benchmarks",
    "DataError": "benchmarks",
    "Example": "benchmarks",
    "LoadedBenchmark": "benchmarks",
    "get_benchmark": "benchmarks",
    "load_benchmark": "benchmarks",
    "resolve_sources": "benchmarks",
    "validate_row": "benchmarks",
    # extraction
    "answers_match": "extraction",
    "extract_answer": "extraction",
    # runner
    "BenchmarkScore": "runner",
    "DecodingSettings": "runner",
    "EvaluationReport": "runner",
    "ResumeError": "runner",
    "evaluate_benchmark": "runner",
    "format_table": "runner",
    "run_evaluation": "runner",
    "score_benchmark": "runner",
    # recommendation
    "ItemTrie": "recommendation",
    "UserSequence": "recommendation",
    "evaluate_recommendation": "recommendation",
    "format_recommendation_table": "recommendation",
    "leave_one_out": "recommendation",
    "load_item_ids": "recommendation",
    "load_user_sequences": "recommendation",
    "rank_items": "recommendation",
    "ranking_metrics": "recommendation",
    # scoring
    "ContinuationLogits": "scoring",
    "continuation_logits": "scoring",
    # lm_eval (the `eval` extra)
    "CopilotLM": "lm_eval",
    # explain
    "Explanation": "explain",
    "RectificationReport": "explain",
    "draw_explanation": "figures",
    "draw_summary": "figures",
    "explain_prompt": "explain",
    "summarise_rectification": "explain",
    # statistics
    "choose_on_validation": "statistics",
    "mcnemar_p_value": "statistics",
    "paired_gain": "statistics",
    # diagnostics
    "copilot_ce_skill": "diagnostics",
    "copilot_rmse_skill": "diagnostics",
    "pilot_calibration": "diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # PEP 562: load the defining submodule on first access, then cache the name here.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
