"""lm-evaluation-harness integration: a Pilot with its Copilot as an lm-eval model (registered as `"tcopilot"`).

`CopilotLM` is lm-eval's `HFLM` with one change. HFLM scores a continuation with `model(context + continuation)`,
a forward that treats its whole input as prompt; a Copilot, however, reads its own previous corrections on the
tokens a model *generated* (Algorithm 2). `CopilotLM` therefore passes `copilot_prompt_length` (the context's length,
per row), so each continuation token gets exactly the fused log-probability fused `generate()` would give it after
the same prefix. Multiple-choice (log-likelihood) tasks thus read fused forward logits, and generation tasks use
fused `generate()`, which HFLM calls unchanged. An encoder-decoder Pilot (T5, lm-eval's seq2seq backend) is scored
with the context in the encoder and the continuation teacher-forced in the decoder, where every position after the
start token counts as generated (`scoring.seq2seq_continuation_logits`).

For the Pilot alone, evaluate `HFLM(pretrained=peft_model.get_base_model())`: the base model is the Pilot as it is
fine-tuned (a LoRA-tuned Pilot keeps its LoRA layers), so both scores come from the same weights and the same harness.

Python:

```python
import lm_eval
from tcopilot_peft.evaluation.lm_eval import CopilotLM

results = lm_eval.simple_evaluate(model=CopilotLM(pretrained=peft_model, tokenizer=tokenizer), tasks=["piqa"])
```

Command line: `python -m tcopilot_peft.evaluation` is lm-eval's own CLI with this model type registered:

```
python -m tcopilot_peft.evaluation run --model tcopilot \\
    --model_args pretrained=PILOT_DIR,peft=COPILOT_ADAPTER_DIR --tasks piqa,gsm8k --device cpu
```
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from peft import PeftModel
from tqdm.auto import tqdm

from ..tuner import CopilotModel
from .scoring import ContinuationLogits, continuation_logits


def continuation_logprobs(logits: ContinuationLogits) -> tuple[float, bool]:
    """lm-eval's answer for one request: the fused log-likelihood of the continuation, and whether it is greedy."""
    logprobs = F.log_softmax(logits.fused.float(), dim=-1)
    total = logprobs.gather(-1, logits.targets[:, None]).sum()
    return float(total), bool((logprobs.argmax(-1) == logits.targets).all())


@register_model("tcopilot")
class CopilotLM(HFLM):
    """`HFLM` for a Pilot carrying a Transformer Copilot: fused log-likelihoods and fused generation.

    Args:
        pretrained (`PeftModel` or `str`): a Pilot with a Copilot adapter, or a Pilot directory / hub id together
            with `peft=ADAPTER_DIR`.
        **kwargs: as for `HFLM` (`tokenizer`, `batch_size`, `max_length`, `device`, `peft`, ...). `batch_size` must
            be an integer.

    Raises:
        ValueError: the model carries no Copilot adapter, or `batch_size` is `"auto"`.
    """

    def __init__(self, pretrained: PeftModel | str, **kwargs: Any) -> None:
        if str(kwargs.get("batch_size", 1)).startswith("auto"):
            raise ValueError("CopilotLM needs an integer batch_size ('auto' probes with HFLM's own scoring path)")
        super().__init__(pretrained=pretrained, **kwargs)
        if not isinstance(self.model, PeftModel) or not isinstance(self.model.base_model, CopilotModel):
            raise ValueError(
                "CopilotLM evaluates a Pilot with a Copilot adapter: pass a PeftModel made with CopilotConfig, or "
                "pretrained=PILOT together with peft=COPILOT_ADAPTER_DIR"
            )

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Score `(request, context_tokens, continuation_tokens)` triples with fused logits (see the module docs).

        Unlike HFLM this never shares one forward between requests that differ only in where the context ends
        (HFLM's `logits_cache`): with a Copilot the split point changes the scores.
        """
        batch_size = override_bs or int(self.batch_size)
        # Longest first, as in HFLM: similar lengths pad less, and a memory error happens on the first batch.
        ordered = Collator(requests, sort_fn=lambda request: (-len(request[1]) - len(request[2]), tuple(request[1])))
        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Fused loglikelihood")
        for chunk in ordered.get_batched(n=batch_size):
            pairs = [(context, continuation) for _, context, continuation in chunk]
            logits = continuation_logits(self.model, pairs, self.tokenizer.pad_token_id or 0, self.max_length)
            scores = [continuation_logprobs(row) for row in logits]
            for (request, _, _), score in zip(chunk, scores):
                if request is not None:  # rolling-window requests carry no cache key
                    self.cache_hook.add_partial("loglikelihood", request, score)
            results.extend(scores)
            bar.update(len(chunk))
        bar.close()
        return ordered.get_original(results)
