"""`python -m tcopilot_peft.evaluation ...`: lm-evaluation-harness's command line, with `--model tcopilot` available.

Importing `tcopilot_peft.evaluation.lm_eval` registers the model type (and the Copilot PEFT method, so
`peft=ADAPTER_DIR` loads a Copilot); everything else, arguments included, is lm-eval's own.
"""

from lm_eval.__main__ import cli_evaluate

import tcopilot_peft.evaluation.lm_eval  # noqa: F401  (registers the "tcopilot" lm-eval model)


cli_evaluate()
