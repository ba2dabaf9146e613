"""Fixtures for the evaluation tests: the shared LLM-Adapters test sets, and tiny Pilots with a Copilot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from tcopilot_peft import CopilotConfig
from tcopilot_peft.toy import char_tokenizer
from tests.conftest import randomise_copilot, tiny_pilot


SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "llm_adapters"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real LLM-Adapters test sets beside the repository (skipped, with the reason, where they are absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared LLM-Adapters test sets are not at {SHARED_DATA.resolve()}")
    return SHARED_DATA


def read_rows(shared_data: Path, benchmark: str) -> list[dict]:
    return json.loads((shared_data / benchmark / "test.json").read_text(encoding="utf-8"))


def copilot_model(fusion_lambda: float = 1.0, fusion_mode: str = "logit", seed: int = 0):
    """A tiny Llama Pilot with a Copilot whose corrections are large enough to change tokens, and its tokenizer."""
    tokenizer = char_tokenizer()
    pilot = tiny_pilot(vocab_size=len(tokenizer), seed=seed)
    # Benchmark prompts run to several hundred characters; RoPE has no hard limit, but lm-eval reads this field.
    pilot.config.max_position_embeddings = 2048
    model = get_peft_model(pilot, CopilotConfig(fusion_lambda=fusion_lambda, fusion_mode=fusion_mode))
    randomise_copilot(model, seed=seed, scale=1.0)
    return model.eval(), tokenizer


@pytest.fixture
def model_and_tokenizer():
    return copilot_model()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[Path, Path]:
    """`(pilot_dir, adapter_dir)`: a tiny Pilot with its tokenizer, and a Copilot adapter, saved locally."""
    root = tmp_path_factory.mktemp("tiny")
    model, tokenizer = copilot_model()
    pilot_dir, adapter_dir = root / "pilot", root / "adapter"
    model.get_base_model().save_pretrained(pilot_dir)
    tokenizer.save_pretrained(pilot_dir)
    model.save_pretrained(adapter_dir)
    return pilot_dir, adapter_dir


def write_json(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def single_thread():
    """Run these tests' tiny models on one thread. At this size threading buys nothing, and two intra-op threads
    on a loaded 2-core machine (another test process beside this one) were measured to run tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
