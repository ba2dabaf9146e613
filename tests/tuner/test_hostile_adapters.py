"""Adapter folders from anyone: every broken or hostile file is refused with one error that names the problem, and
the Pilot it was being loaded onto is exactly as it was (same modules, same weights)."""

import json
import re
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from tcopilot_peft import CopilotConfig
from tests.conftest import randomise_copilot, tiny_pilot


WEIGHTS, CONFIG, PICKLE = "adapter_model.safetensors", "adapter_config.json", "adapter_model.bin"


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


# Where the cut falls: before the header's length is whole, inside the JSON header, inside the tensors, at the end.
TRUNCATIONS = {"empty": 0, "in the length": 5, "in the header": 40, "in the tensors": -100, "one byte short": -1}


@pytest.mark.parametrize("kind", ["plain", "lora"])
@pytest.mark.parametrize("cut", sorted(TRUNCATIONS))
def test_a_truncated_weights_file_is_refused_by_name_before_the_pilot_is_touched(adapters, tmp_path, kind, cut):
    folder = tmp_path / "adapter"
    shutil.copytree(adapters / kind, folder)
    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[: TRUNCATIONS[cut]])
    pilot = tiny_pilot()
    before = snapshot(pilot)
    message = f"The Copilot adapter file {re.escape(str(folder / WEIGHTS))} is not a whole safetensors file \\(.+\\)"
    with pytest.raises(ValueError, match=message + ": it is truncated or corrupt; nothing was loaded"):
        PeftModel.from_pretrained(pilot, folder)
    assert_untouched(pilot, before)


def test_a_truncated_second_adapter_leaves_the_loaded_one_as_it_was(adapters, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(adapters / "lora", folder)
    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:-1])
    model = PeftModel.from_pretrained(tiny_pilot(), adapters / "lora")
    before = snapshot(model)
    with pytest.raises(ValueError, match="is not a whole safetensors file"):
        model.load_adapter(folder, adapter_name="second")
    assert_untouched(model, before)
    assert list(model.peft_config) == ["default"]


@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_a_pickle_adapter_loads_through_the_weights_only_loader(adapters, tmp_path, kind):
    folder = tmp_path / "adapter"
    shutil.copytree(adapters / kind, folder)
    torch.save(load_file(folder / WEIGHTS), folder / PICKLE)  # what save_pretrained(safe_serialization=False) writes
    (folder / WEIGHTS).unlink()
    loaded = PeftModel.from_pretrained(tiny_pilot(), folder).state_dict()
    original = PeftModel.from_pretrained(tiny_pilot(), adapters / kind).state_dict()
    assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in loaded)


def test_save_pretrained_without_safetensors_writes_a_bin_that_loads(tmp_path):
    model = get_peft_model(tiny_pilot(), CopilotConfig())
    randomise_copilot(model)
    ids = torch.randint(3, 97, (2, 7))
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / PICKLE).is_file() and not (tmp_path / WEIGHTS).exists()
    loaded = PeftModel.from_pretrained(tiny_pilot(), tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


class _RunsCode:
    """A pickle whose loading would call `Path.touch` on `marker` (as a crafted adapter file would run anything)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


@pytest.mark.parametrize("kind", ["plain", "lora"])
def test_a_crafted_pickle_is_refused_by_name_and_never_runs(adapters, tmp_path, kind):
    folder, marker = tmp_path / "adapter", tmp_path / "code-ran"
    shutil.copytree(adapters / kind, folder)
    tensors = load_file(folder / WEIGHTS)
    (folder / WEIGHTS).unlink()
    torch.save({**tensors, "payload": _RunsCode(marker)}, folder / PICKLE)
    pilot = tiny_pilot()
    before = snapshot(pilot)
    with pytest.raises(ValueError) as refused:
        PeftModel.from_pretrained(pilot, folder)
    assert str(refused.value).startswith(
        f"The Copilot adapter file {folder / PICKLE} is refused by the weights-only loader, which never runs code"
    )
    assert not marker.exists()
    assert_untouched(pilot, before)


@pytest.mark.parametrize("kind", ["plain", "lora"])
@settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_weight_files_load_cleanly_or_are_refused_without_touching_the_pilot(adapters, tmp_path, kind, data):
    """A byte-level fuzz of an adapter's safetensors file: truncation or overwritten bytes anywhere."""
    original = (adapters / kind / WEIGHTS).read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        mutated = original[: data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        position = data.draw(st.integers(0, len(original) - 1), label="position")
        chunk = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        mutated = original[:position] + chunk + original[position + len(chunk) :]
    folder = tmp_path / f"fuzz-{abs(hash(mutated))}"
    shutil.copytree(adapters / kind, folder)
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
