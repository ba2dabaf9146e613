import pytest
import torch

from tcopilot_peft.fusion import (
    COPILOT_LOSSES,
    PilotPrediction,
    copilot_loss,
    error_distance,
    error_embedding,
    fuse_logits,
    fuse_logits_where_defined,
    fused_cross_entropy,
    shift_targets,
    undefined_predictions,
)


def dense_error(probs, targets):
    return torch.nn.functional.one_hot(targets.clamp_min(0), probs.shape[-1]).float() - probs


def dense(probs):
    return PilotPrediction(log_probs=probs.log())


def sparse(probs, targets, k):
    """The Mistake Log's form of p̂: top-k probabilities and ids, and the gold token's log-probability."""
    top_probs, top_ids = probs.topk(k, dim=-1)
    gold = probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1).log()
    return PilotPrediction(topk_probs=top_probs, topk_ids=top_ids, gold_log_probs=gold)


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
def test_a_masked_logit_stays_masked_and_an_undefined_prediction_is_the_pilots_own(mode):
    z = torch.randn(4, 7)
    z[0, 3] = float("-inf")  # a mask: the rest of the row is fused
    z[1, 0] = float("nan")
    z[2, 5] = float("inf")
    z[3] = float("-inf")  # nothing finite
    correction = torch.randn(4, 7) * 0.1
    fused = fuse_logits(z, correction, 1.0, mode)
    assert fused[0, 3] == float("-inf") and torch.isfinite(fused[0, torch.arange(7) != 3]).all()
    assert not torch.equal(fused[0, :3], z[0, :3])
    torch.testing.assert_close(fused[1:], z[1:], equal_nan=True)
    torch.testing.assert_close(
        fuse_logits_where_defined(z, correction, 1.0, mode, undefined_predictions(z)), fused, equal_nan=True
    )


def test_undefined_predictions_is_none_when_every_logit_is_finite():
    assert undefined_predictions(torch.randn(2, 3, 5)) is None
    z = torch.randn(2, 3, 5)
    z[0, 1, 2], z[1, 2, 0], z[1, 0] = float("nan"), float("-inf"), float("-inf")
    assert undefined_predictions(z).tolist() == [[False, True, False], [True, False, False]]


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="fusion_mode"):
        fuse_logits(torch.randn(3), torch.randn(3), 1.0, "sum")


def test_error_embedding_matches_dense_error_times_embedding():
    embedding = torch.randn(13, 5)
    probs = torch.randn(2, 4, 13).softmax(-1)
    targets = torch.tensor([[1, 2, -100, 4], [5, -100, 7, 12]])
    expected = dense_error(probs, targets) @ embedding * (targets != -100).unsqueeze(-1)
    torch.testing.assert_close(error_embedding(embedding, targets, dense(probs)), expected)
    # k = |V| makes the sparse form exact
    torch.testing.assert_close(error_embedding(embedding, targets, sparse(probs, targets, 13)), expected)


def test_error_distance_dense_and_sparse_match_the_definition():
    probs = torch.randn(3, 6, 17).softmax(-1)
    targets = torch.randint(0, 17, (3, 6))
    correction = torch.randn(3, 6, 17)
    expected = (correction - dense_error(probs, targets)).norm(dim=-1)
    torch.testing.assert_close(error_distance(correction, targets, dense(probs)), expected, atol=1e-4, rtol=1e-4)
    from_log = error_distance(correction, targets, sparse(probs, targets, 17))
    torch.testing.assert_close(from_log, expected, atol=1e-4, rtol=1e-4)


def test_copilot_loss_averages_valid_tokens_only():
    probs = torch.randn(1, 3, 5).softmax(-1)
    targets = torch.tensor([[1, -100, 3]])
    correction = torch.zeros(1, 3, 5, requires_grad=True)
    loss = copilot_loss(correction, targets, dense(probs), kind="rmse")
    distances = dense_error(probs, targets).norm(dim=-1)[0]
    torch.testing.assert_close(loss, (distances[0] + distances[2]) / 2)
    loss.backward()
    assert torch.isfinite(correction.grad).all()
    assert copilot_loss(correction, torch.full((1, 3), -100), dense(probs), kind="rmse") == 0
    assert copilot_loss(correction, torch.full((1, 3), -100), dense(probs), kind="fused_ce") == 0


def test_fused_cross_entropy_is_the_cross_entropy_of_logit_fusion():
    logits, correction = torch.randn(2, 4, 19), torch.randn(2, 4, 19)
    targets = torch.randint(0, 19, (2, 4))
    expected = torch.nn.functional.cross_entropy(
        fuse_logits(logits, correction, 1.0, "logit").flatten(0, 1), targets.flatten(), reduction="none"
    ).view(2, 4)
    prediction = PilotPrediction.from_logits(logits)
    torch.testing.assert_close(fused_cross_entropy(correction, targets, prediction), expected)
    # With no correction it is the Pilot's own cross-entropy: the loss starts where the Pilot is.
    pilot = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 4)
    torch.testing.assert_close(fused_cross_entropy(torch.zeros_like(correction), targets, prediction), pilot)


def test_sparse_fused_cross_entropy_is_exact_with_the_whole_vocabulary_and_close_with_a_small_tail():
    vocab = 500
    logits = 4.0 * torch.randn(64, vocab)  # peaked, as a fine-tuned Pilot's are
    correction = torch.randn(64, vocab)
    targets = torch.randint(0, vocab, (64,))
    targets[:32] = logits[:32].argmax(-1)  # half the gold tokens inside the top-k, half (mostly) outside
    probs = logits.softmax(-1)
    exact = fused_cross_entropy(correction, targets, PilotPrediction.from_logits(logits))
    full = fused_cross_entropy(correction, targets, sparse(probs, targets, vocab))
    torch.testing.assert_close(full, exact, atol=1e-4, rtol=1e-4)
    approx = fused_cross_entropy(correction, targets, sparse(probs, targets, 8))
    assert (approx - exact).abs().mean() / exact.mean() < 0.02


def test_sparse_fused_cross_entropy_needs_the_gold_log_probability():
    probs = torch.randn(3, 11).softmax(-1)
    top_probs, top_ids = probs.topk(4, dim=-1)
    with pytest.raises(ValueError, match="gold_log_probs"):
        fused_cross_entropy(
            torch.zeros(3, 11), torch.zeros(3, dtype=torch.long), PilotPrediction(None, top_probs, top_ids)
        )


def test_fused_cross_entropy_gradient_moves_probability_to_the_gold_token():
    logits = torch.randn(5, 13)
    targets = torch.randint(0, 13, (5,))
    correction = torch.zeros(5, 13, requires_grad=True)
    copilot_loss(correction, targets, PilotPrediction.from_logits(logits)).backward()
    # d CE / d f = (softmax(z + f) − onehot(y)) / N: negative on the gold token, positive elsewhere.
    expected = (logits.softmax(-1) - torch.nn.functional.one_hot(targets, 13).float()) / 5
    torch.testing.assert_close(correction.grad, expected)


def test_unknown_loss_kind_and_incomplete_prediction_raise():
    with pytest.raises(ValueError, match="loss kind"):
        copilot_loss(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), dense(torch.full((2, 5), 0.2)), kind="l1")
    with pytest.raises(ValueError, match="PilotPrediction"):
        PilotPrediction(topk_probs=torch.zeros(2, 3))


def test_shift_targets():
    labels = torch.tensor([[-100, 4, 5, 6]])
    assert shift_targets(labels).tolist() == [[4, 5, 6, -100]]


def test_sparse_fused_cross_entropy_stays_bounded_when_the_gold_top_k_probability_underflows():
    """A confidently wrong Pilot: the gold token ranks in the top-k with p̂ ≈ 2e-9, which 16 bits store as 0. Raising
    f_y must drive the loss to 0, as the dense loss does, never below it."""
    logits = torch.full((1, 50), -30.0)
    logits[0, 0], logits[0, 1:8] = 0.0, -20.0
    targets = torch.tensor([3])
    prediction = sparse(logits.softmax(-1), targets, 8)
    prediction.topk_probs = prediction.topk_probs.half()  # as the Mistake Log keeps them
    for boost in (0.0, 50.0, 200.0):
        correction = torch.zeros(1, 50)
        correction[0, 3] = boost
        dense_loss = fused_cross_entropy(correction, targets, PilotPrediction.from_logits(logits))
        sparse_loss = fused_cross_entropy(correction, targets, prediction)
        torch.testing.assert_close(sparse_loss, dense_loss, atol=1e-3, rtol=1e-3)


def test_sparse_losses_ignore_padding_rows_without_nan():
    """Per-position logged rows carry zeros (ids 0, probabilities 0) where there is no target."""
    correction = torch.randn(3, 4, 50, requires_grad=True)
    with torch.no_grad():
        correction[0, 0, 0] = 30.0  # f peaks at the padding id
    targets = torch.randint(0, 50, (3, 4))
    targets[:, 0] = -100
    prediction = sparse(torch.randn(3, 4, 50).softmax(-1), targets, 8)
    prediction.topk_probs[:, 0], prediction.topk_ids[:, 0], prediction.gold_log_probs[:, 0] = 0.0, 0, 0.0
    for kind in ("fused_ce", "rmse"):
        loss = copilot_loss(correction, targets, prediction, kind=kind)
        (grad,) = torch.autograd.grad(loss, correction)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert grad[:, 0].abs().sum() == 0  # no gradient from positions without a target


def test_sparse_fused_cross_entropy_gradient_matches_dense_with_the_whole_vocabulary():
    logits, targets = torch.randn(5, 50), torch.randint(0, 50, (5,))
    dense_f = torch.randn(5, 50, requires_grad=True)
    sparse_f = dense_f.detach().clone().requires_grad_(True)
    fused_cross_entropy(dense_f, targets, PilotPrediction.from_logits(logits)).sum().backward()
    fused_cross_entropy(sparse_f, targets, sparse(logits.softmax(-1), targets, 50)).sum().backward()
    torch.testing.assert_close(sparse_f.grad, dense_f.grad, atol=1e-5, rtol=1e-4)


def test_prob_fusion_backward_stays_finite_beside_non_finite_pilot_logits():
    z = torch.randn(2, 7)
    z[0, 3] = float("-inf")
    correction = (0.01 * torch.randn(2, 7)).requires_grad_(True)
    fused = fuse_logits(z, correction, 1.0, "prob")
    fused[torch.isfinite(z)].sum().backward()
    assert torch.isfinite(correction.grad).all()


@pytest.fixture
def l1_objective():
    """An objective registered in one place (the registry) for one test, then removed."""
    from tcopilot_peft.fusion import OBJECTIVES, Objective, register_objective

    objective = register_objective(
        Objective(
            name="l1_test",
            help="the L1 distance to ℓ (a test objective)",
            per_token=lambda f, y, p: (f - dense_error(p.probs(), y)).abs().sum(-1),
            fusion_mode="prob",
            inference_feed="pilot_error",
            fusion_modes=("prob",),
            diagnostics=("copilot_ce_skill",),
        )
    )
    yield objective
    del OBJECTIVES[objective.name]


def test_a_registered_objective_is_a_choice_of_the_configs(l1_objective):
    from typing import get_args, get_type_hints

    from tcopilot_peft import CopilotConfig
    from tcopilot_peft.trainer import CopilotSFTConfig

    for config_class in (CopilotConfig, CopilotSFTConfig):
        choices = get_args(get_args(get_type_hints(config_class)["copilot_loss"])[0])
        assert choices[: len(COPILOT_LOSSES)] == COPILOT_LOSSES and "l1_test" in choices
    config = CopilotConfig(copilot_loss="l1_test")
    assert (config.fusion_mode, config.inference_feed) == ("prob", "pilot_error")  # the objective's own defaults
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    correction = torch.tensor([[0.1, -0.2, 0.0]])
    loss = copilot_loss(correction, torch.tensor([0]), dense(probs), kind="l1_test")
    torch.testing.assert_close(loss, (correction - dense_error(probs, torch.tensor([0]))).abs().sum())


def test_objectives_refuse_a_duplicate_name_or_an_unknown_fusion():
    from tcopilot_peft.fusion import OBJECTIVES, Objective, register_objective

    with pytest.raises(ValueError, match="already registered"):
        register_objective(OBJECTIVES["rmse"])
    with pytest.raises(ValueError, match="fusion modes must be among"):
        Objective("x", "x", error_distance, "sum", "copilot", ("sum",), ())
    with pytest.raises(ValueError, match="inference_feed"):
        Objective("x", "x", error_distance, "prob", "oracle", ("prob",), ())
    defaults = {name: (o.fusion_mode, o.inference_feed) for name, o in OBJECTIVES.items()}
    assert defaults == {"fused_ce": ("logit", "pilot_error"), "rmse": ("prob", "copilot"), "mse": ("prob", "copilot")}


@pytest.mark.parametrize("form", ["dense", "sparse", "sparse_whole_vocabulary"])
@pytest.mark.parametrize("chunk_size", [None, 3, 7])
def test_the_loss_from_the_head_equals_the_loss_of_the_built_correction(form, chunk_size, monkeypatch):
    """`copilot_loss_from_head` (vocabulary chunks, f never built) against `copilot_loss` of f = W·u: values and
    gradients, for dense p̂, the Mistake Log's top-k, and a top-k covering the whole vocabulary (no tail)."""
    from tcopilot_peft.fusion import copilot_loss_from_head, head

    if chunk_size is not None:
        monkeypatch.setattr(head, "HEAD_CHUNK_ELEMENTS", 6 * chunk_size)  # 6 rows below: `chunk_size` columns
    generator = torch.Generator().manual_seed(0)
    vocab, k = (11, 4) if form != "sparse_whole_vocabulary" else (5, 5)
    weight = torch.randn(vocab, 8, generator=generator)
    logits = 2 * torch.randn(6, vocab, generator=generator)
    logits[0, 3] = float("-inf")  # a masked token: log p̂ = -inf there
    targets = torch.tensor([0, 3, -100, 7 % vocab, 1, 4])
    log_probs = torch.log_softmax(logits, -1)
    if form == "dense":
        prediction = PilotPrediction(log_probs=log_probs)
    else:
        top = log_probs.exp().topk(k)
        gold = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        prediction = PilotPrediction(topk_probs=top.values.half(), topk_ids=top.indices, gold_log_probs=gold)
    for kind in ("fused_ce", "rmse"):
        built = torch.randn(6, 8, generator=generator).requires_grad_()
        chunked = built.detach().clone().requires_grad_()
        expected = copilot_loss(torch.nn.functional.linear(built, weight), targets, prediction, kind=kind)
        loss = copilot_loss_from_head(chunked, weight, targets, prediction, kind=kind)
        expected.backward()
        loss.backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(chunked.grad, built.grad)
        assert torch.isfinite(chunked.grad).all()


def test_head_logsumexp_refuses_a_head_that_wants_a_gradient():
    from tcopilot_peft.fusion import head_logsumexp

    with pytest.raises(ValueError, match="detached"):
        head_logsumexp(torch.zeros(2, 3), torch.zeros(4, 3, requires_grad=True))
