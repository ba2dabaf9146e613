import math

import pytest
import torch

from tcopilot_peft.fusion import copilot_loss, error_distance, error_embedding, fuse_logits, shift_targets


def dense_error(probs, targets):
    return torch.nn.functional.one_hot(targets.clamp_min(0), probs.shape[-1]).float() - probs


def test_logit_fusion_adds_scaled_correction():
    z, f = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    torch.testing.assert_close(fuse_logits(z, f, 0.5, "logit"), z + 0.5 * f)


def test_prob_fusion_is_log_of_renormalised_clamped_sum():
    z, f = torch.randn(4, 11), 0.1 * torch.randn(4, 11)
    expected = (z.softmax(-1) + 2.0 * f).clamp_min(1e-10)
    expected = (expected / expected.sum(-1, keepdim=True)).log()
    fused = fuse_logits(z, f, 2.0, "prob")
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(fused.exp().sum(-1), torch.ones(4))


@pytest.mark.parametrize("mode", ["logit", "prob"])
def test_lambda_zero_returns_pilot_logits_unchanged(mode):
    z = torch.randn(2, 5, 7, dtype=torch.bfloat16)
    assert fuse_logits(z, torch.randn(2, 5, 7), 0.0, mode) is z


@pytest.mark.parametrize("mode", ["logit", "prob"])
def test_non_finite_pilot_logits_pass_through(mode):
    z = torch.randn(2, 7)
    z[0, 3] = float("-inf")
    z[1, 0] = float("nan")
    fused = fuse_logits(z, torch.randn(2, 7) * 0.1, 1.0, mode)
    assert fused[0, 3] == float("-inf") and math.isnan(fused[1, 0])
    finite = torch.isfinite(z)
    assert torch.isfinite(fused[finite]).all()


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="fusion_mode"):
        fuse_logits(torch.randn(3), torch.randn(3), 1.0, "sum")


def test_error_embedding_matches_dense_error_times_embedding():
    embedding = torch.randn(13, 5)
    probs = torch.randn(2, 4, 13).softmax(-1)
    targets = torch.tensor([[1, 2, -100, 4], [5, -100, 7, 12]])
    expected = dense_error(probs, targets) @ embedding * (targets != -100).unsqueeze(-1)
    torch.testing.assert_close(error_embedding(embedding, targets, probs=probs), expected)
    top_probs, top_ids = probs.topk(13, dim=-1)  # k = |V| makes the sparse form exact
    torch.testing.assert_close(error_embedding(embedding, targets, topk_probs=top_probs, topk_ids=top_ids), expected)


def test_error_distance_dense_and_sparse_match_the_definition():
    probs = torch.randn(3, 6, 17).softmax(-1)
    targets = torch.randint(0, 17, (3, 6))
    correction = torch.randn(3, 6, 17)
    expected = (correction - dense_error(probs, targets)).norm(dim=-1)
    torch.testing.assert_close(error_distance(correction, targets, probs=probs), expected, atol=1e-4, rtol=1e-4)
    top_probs, top_ids = probs.topk(17, dim=-1)
    sparse = error_distance(correction, targets, topk_probs=top_probs, topk_ids=top_ids)
    torch.testing.assert_close(sparse, expected, atol=1e-4, rtol=1e-4)


def test_copilot_loss_averages_valid_tokens_only():
    probs = torch.randn(1, 3, 5).softmax(-1)
    targets = torch.tensor([[1, -100, 3]])
    correction = torch.zeros(1, 3, 5, requires_grad=True)
    loss = copilot_loss(correction, targets, probs=probs)
    distances = dense_error(probs, targets).norm(dim=-1)[0]
    torch.testing.assert_close(loss, (distances[0] + distances[2]) / 2)
    loss.backward()
    assert torch.isfinite(correction.grad).all()
    assert copilot_loss(correction, torch.full((1, 3), -100), probs=probs) == 0


def test_shift_targets():
    labels = torch.tensor([[-100, 4, 5, 6]])
    assert shift_targets(labels).tolist() == [[4, 5, 6, -100]]
