"""The Copilot PEFT method: configuration, tuner and network; registered with PEFT on import."""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import PeftType, register_peft_method

from .config import CopilotConfig
from .model import CopilotModel
from .network import CopilotNetwork, CopilotNetworkConfig
from .outputs import CopilotCausalLMOutput


if PeftType.COPILOT not in PEFT_TYPE_TO_CONFIG_MAPPING:
    register_peft_method(name="copilot", config_cls=CopilotConfig, model_cls=CopilotModel, prefix="copilot_")

__all__ = ["CopilotCausalLMOutput", "CopilotConfig", "CopilotModel", "CopilotNetwork", "CopilotNetworkConfig"]
