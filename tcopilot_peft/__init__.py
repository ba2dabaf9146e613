"""Transformer Copilot (Zou et al., NeurIPS 2025) on the Hugging Face stack.

Importing this package registers the `"copilot"` PEFT method, so `get_peft_model(pilot, CopilotConfig())` works.

The package's names load on first use (PEP 562), so `import tcopilot_peft` (and the `tcopilot` command, which imports
it first) costs nothing until a model is touched: `tcopilot --help` does not load torch. The PEFT method registers
itself at once when PEFT is already loaded, otherwise the moment PEFT is imported — every way of using a Copilot
(`get_peft_model`, `PeftModel.from_pretrained`, transformers' `load_adapter`) imports PEFT first.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "CopilotCausalLMOutput": "tuner",
    "CopilotConfig": "tuner",
    "CopilotModel": "tuner",
    "CopilotSFTConfig": "trainer",
    "CopilotSFTTrainer": "trainer",
    "CopilotSeq2SeqConfig": "trainer",
    "CopilotSeq2SeqTrainer": "trainer",
    "MistakeLog": "mistake_log",
    "copilot_loss": "fusion",
    "fuse_logits": "fusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule, as eager imports used to bind
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _RegisterAfterPeft(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first `import peft` it hands back PEFT's own spec, with a loader that registers
    the Copilot method as soon as PEFT has finished loading. It removes itself from `sys.meta_path` on that first
    look-up, so it runs once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """PEFT's loader, followed by importing `tcopilot_peft.tuner` (whose import registers the method)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        importlib.import_module(".tuner", __name__)

    def __getattr__(self, name: str):  # resource readers and the like stay PEFT's loader's
        if name == "loader":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


if "peft" in sys.modules:
    importlib.import_module(".tuner", __name__)
elif not any(isinstance(finder, _RegisterAfterPeft) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterPeft())
