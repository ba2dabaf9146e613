"""Adapter folders from anyone: every broken or hostile file is refused with one error that names the problem, and
the Pilot it was being loaded onto is exactly as it was (same modules, same weights)."""

import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from tcopilot_peft import CopilotConfig
from tests.conftest import randomise_copilot, tiny_pilot


WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A plain Copilot adapter and one saved from a LoRA-tuned Pilot (whose loading recreates LoRA layers)."""
    root = tmp_path_factory.mktemp("adapters")
    plain = get_peft_model(tiny_pilot(), CopilotConfig())
    randomise_copilot(plain)
    plain.save_pretrained(root / "plain")
    lora = get_peft_model(tiny_pilot(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    get_peft_model(lora, CopilotConfig()).save_pretrained(root / "lora")
    return root


def snapshot(pilot):
    return [name for name, _ in pilot.named_modules()], {k: v.clone() for k, v in pilot.state_dict().items()}


def assert_untouched(pilot, before):
    names, tensors = snapshot(pilot)
    assert names == before[0], "the failed load left modules on the Pilot"
    assert tensors.keys() == before[1].keys() and all(torch.equal(tensors[k], before[1][k]) for k in tensors)


def first_copilot_key(tensors, matrix=False):
    return next(k for k in tensors if "copilot_model" in k and (tensors[k].dim() == 2 or not matrix))


def edit_weights(folder, change):
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS)


def edit_config(folder, **fields):
    config = json.loads((folder / CONFIG).read_text())
    for key, value in fields.items():
        config[key] = value(config) if callable(value) else value
    (folder / CONFIG).write_text(json.dumps(config))


CASES = {
    "wrong shape": (
        lambda d: edit_weights(d, lambda t: t.__setitem__(first_copilot_key(t, matrix=True), torch.zeros(3, 3))),
        "the shape \\(3, 3\\), the model's is",
    ),
    "integer weights": (
        lambda d: edit_weights(d, lambda t: t.__setitem__(first_copilot_key(t), t[first_copilot_key(t)].long())),
        "non-float dtype torch.int64",
    ),
    "NaN weights": (
        lambda d: edit_weights(d, lambda t: t[first_copilot_key(t)].fill_(float("nan"))),
        "non-finite values",
    ),
    "an extra key": (
        lambda d: edit_weights(d, lambda t: t.__setitem__("base_model.model.copilot_model.x.weight", torch.ones(2))),
        "holds 1 weights this model does not have",
    ),
    "a missing key": (
        lambda d: edit_weights(d, lambda t: t.pop(first_copilot_key(t))),
        "is missing 1 of",
    ),
    "num_layers against the architecture": (
        lambda d: edit_config(d, num_layers=10**6),
        "num_layers=1000000 disagrees with copilot_architecture",
    ),
    "an architecture too large to build": (
        lambda d: edit_config(d, copilot_architecture=lambda c: {**c["copilot_architecture"], "hidden_size": 10**7}),
        "describes a Copilot of .* parameters beside a Pilot of",
    ),
    "a negative width": (
        lambda d: edit_config(d, copilot_architecture=lambda c: {**c["copilot_architecture"], "hidden_size": -4}),
        "needs positive integers for \\['hidden_size'\\]",
    ),
    "a wrong type": (lambda d: edit_config(d, fusion_lambda="big"), "fusion_lambda must be a finite number"),
    "negative num_layers": (lambda d: edit_config(d, num_layers=-3), "num_layers must be an integer >= 1"),
}


@pytest.mark.parametrize("kind", ["plain", "lora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_broken_adapter_is_refused_by_name_and_the_pilot_is_untouched(adapters, tmp_path, case, kind):
    folder = tmp_path / "adapter"
    shutil.copytree(adapters / kind, folder)
    corrupt, message = CASES[case]
    corrupt(folder)
    pilot = tiny_pilot()
    before = snapshot(pilot)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(pilot, folder)
    assert_untouched(pilot, before)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_weight_files_load_cleanly_or_are_refused_without_touching_the_pilot(adapters, tmp_path, data):
    """A byte-level fuzz of the plain adapter's safetensors file: truncation or overwritten bytes anywhere."""
    original = (adapters / "plain" / WEIGHTS).read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        mutated = original[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        position = data.draw(st.integers(0, len(original) - 1), label="position")
        chunk = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        mutated = original[:position] + chunk + original[position + len(chunk) :]
    folder = tmp_path / f"fuzz-{abs(hash(mutated))}"
    shutil.copytree(adapters / "plain", folder)
    (folder / WEIGHTS).write_bytes(mutated)
    pilot = tiny_pilot()
    before = snapshot(pilot)
    try:
        model = PeftModel.from_pretrained(pilot, folder)
    except Exception as error:  # noqa: BLE001  (which error depends on where the bytes landed; all must be clear)
        assert str(error).strip(), "an error without a message"
        assert_untouched(pilot, before)
        return
    network = model.base_model.active_network
    assert all(torch.isfinite(p).all() for p in network.parameters())  # a load that succeeds holds finite weights
