"""`CopilotUpdater`: the Copilot's own optimisation, as the trainer relies on it."""

import copy

import pytest
import torch

from tcopilot_peft.trainer.updater import CopilotUpdater


def make(max_grad_norm=None, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    updater = CopilotUpdater(
        list(model.parameters()),
        learning_rate=0.1,
        weight_decay=0.5,
        scheduler_type="linear",
        warmup_steps=0,
        num_training_steps=4,
        max_grad_norm=max_grad_norm,
    )
    return model, updater


def loss_of(model, x):
    return model(x).square().mean()


def test_accumulated_halves_step_like_the_whole_batch():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    whole, whole_updater = make()
    whole_updater.accumulate(loss_of(whole, x))
    whole_updater.step()
    halves, halves_updater = make()
    for part in x.chunk(2):
        halves_updater.accumulate(loss_of(halves, part), scale=0.5)
    halves_updater.step()
    for a, b in zip(whole.parameters(), halves.parameters()):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in halves.parameters())  # buffers are cleared, nothing left on the weights


def test_weight_decay_spares_norms_and_biases():
    _, updater = make()
    decayed, spared = updater.optimizer.param_groups
    assert decayed["weight_decay"] == 0.5 and all(p.dim() >= 2 for p in decayed["params"])
    assert spared["weight_decay"] == 0.0 and all(p.dim() < 2 for p in spared["params"])


def test_clipping_reports_the_norm_and_bounds_the_update():
    model, updater = make(max_grad_norm=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    updater.accumulate(1e3 * loss_of(model, torch.ones(2, 4)))
    norm = updater.step()
    assert norm is not None and norm > 1e-3
    assert updater.learning_rate == pytest.approx(0.075)  # linear schedule, one of four steps taken
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_state_round_trip_resumes_the_same_trajectory():
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    model, updater = make()
    for _ in range(2):
        updater.accumulate(loss_of(model, x))
        updater.step()
    state = copy.deepcopy(updater.state_dict())  # as saved to disk: the live state keeps changing
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    updater.accumulate(loss_of(model, x))
    updater.step()
    resumed, resumed_updater = make(seed=5)
    resumed.load_state_dict(weights)
    resumed_updater.load_state_dict(state)
    resumed_updater.accumulate(loss_of(resumed, x))
    resumed_updater.step()
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
