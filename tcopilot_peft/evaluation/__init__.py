"""Evaluating a Pilot and its Copilot on the paper's benchmarks.

* `extraction`: answer extraction and scoring per benchmark (the LLM-Adapters rules).
* `benchmarks`: the benchmarks, their sources (local JSON or a datasets name) and row validation.
* `runner`: one resumable pass that scores the Pilot alone and Pilot + Copilot on the same prompts (`tcopilot eval`).
* `scoring`: fused scoring of given continuations, shared by `lm_eval` and `explain`.
* `lm_eval`: `CopilotLM`, the lm-evaluation-harness model (`python -m tcopilot_peft.evaluation` runs lm-eval's CLI).
* `explain`: the paper's Figures 3 and 4 for a prompt or a dataset (`tcopilot explain`).
* `statistics`: paired gains with a bootstrap interval, McNemar's test, and the one validation choice rule.
* `diagnostics`: teacher-forced measures of a trained Copilot (error-prediction and cross-entropy skill) and of
  its Pilot's calibration.
"""
