import pytest
import torch

from tcopilot_peft.mistake_log import MistakeLog, dense_error_bytes_per_token


def round_inputs(batch=3, length=6, vocab=50, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :2] = 0  # left padding in row 0
    targets = torch.randint(3, vocab, (batch, length), generator=g)
    targets[:, :3] = -100
    targets[:, -1] = -100
    hidden = torch.randn(batch, length, width, generator=g)
    logits = torch.randn(batch, length, vocab, generator=g)
    return ids, mask, targets, hidden, logits[targets != -100]  # packed at the target positions, row-major


def test_append_drops_padding_and_keeps_only_top_k_at_target_positions():
    log = MistakeLog(top_k=4)
    ids, mask, targets, hidden, logits = round_inputs()
    rows = log.append(ids, mask, targets, hidden, logits)
    assert len(rows) == 3 and len(log) == 3
    assert rows[0].input_ids.tolist() == ids[0, 2:].tolist()
    assert rows[1].topk_probs.shape == (2, 4)  # 2 target positions, k = 4
    assert rows[1].hidden.dtype == torch.bfloat16 and rows[1].topk_probs.dtype == torch.float16
    row_1 = logits[2:4]  # row 0's two targets come first in the packed logits
    expected = torch.softmax(row_1, -1).topk(4, -1)
    torch.testing.assert_close(rows[1].topk_probs.float(), expected.values, atol=1e-3, rtol=1e-3)
    gold = torch.log_softmax(row_1, -1).gather(-1, targets[1, 3:5, None]).squeeze(-1)
    torch.testing.assert_close(rows[1].gold_log_probs, gold)  # the fused cross-entropy needs log p̂ of the gold token
    assert log.total_bytes == sum(r.nbytes for r in rows)
    assert log.bytes_per_token == log.total_bytes / (4 + 6 + 6)


def test_log_is_much_smaller_than_dense_errors_at_realistic_sizes():
    log = MistakeLog(top_k=8)
    vocab, width = 32000, 256
    ids, mask, targets, hidden, logits = round_inputs(batch=2, length=32, vocab=vocab, width=width)
    log.append(ids, mask, targets, hidden, logits)
    assert log.bytes_per_token < 0.02 * dense_error_bytes_per_token(vocab)


def test_bounded_by_rounds_and_by_bytes_oldest_first():
    log = MistakeLog(max_rounds=2)
    for seed in range(3):
        log.append(*round_inputs(seed=seed))
    assert len(log.rounds) == 2 and log.appended_rounds == 3
    one_round = log.total_bytes // 2
    small = MistakeLog(max_bytes=int(one_round * 1.5))
    small.append(*round_inputs(seed=0))
    small.append(*round_inputs(seed=1))
    assert len(small.rounds) == 1 and small.total_bytes <= small.max_bytes
    torch.testing.assert_close(
        small.rounds[0][1].hidden.float(), round_inputs(seed=1)[3][1].to(torch.bfloat16).float()
    )


def test_budget_smaller_than_one_micro_batch_says_how_much_is_needed():
    log = MistakeLog(max_bytes=100)
    with pytest.raises(ValueError, match=r"needs \d+ bytes"):
        log.append(*round_inputs())


def test_non_finite_rows_never_enter_the_buffer():
    log = MistakeLog()
    ids, mask, targets, hidden, logits = round_inputs()
    hidden[1, 4, 0] = float("nan")
    logits[4, 5] = float("inf")  # row 2's first target position (rows 0 and 1 have two each)
    rows = log.append(ids, mask, targets, hidden, logits)
    assert len(rows) == 1


@pytest.mark.parametrize("policy", ["current", "uniform", "newest"])
def test_sample_rebuilds_padded_batches(policy):
    log = MistakeLog(top_k=3, seed=1)
    for seed in range(4):
        log.append(*round_inputs(seed=seed))
    batch = log.sample(5, policy)
    size = 3 if policy == "current" else 5
    assert batch.input_ids.shape == (size, 6) and batch.topk_probs.shape == (size, 6, 3)
    assert ((batch.targets != -100) <= batch.attention_mask).all()
    assert (batch.topk_probs[batch.targets == -100] == 0).all()


def test_newest_policy_prefers_recent_rounds():
    log = MistakeLog(max_rounds=10, seed=0)
    for seed in range(10):
        ids, mask, targets, hidden, logits = round_inputs(seed=seed)
        ids[:] = seed + 10  # tag rows by round
        log.append(ids, None, targets, hidden, logits)
    newest = log.sample(2000, "newest").input_ids[:, 0].float().mean()
    uniform = log.sample(2000, "uniform").input_ids[:, 0].float().mean()
    assert newest > uniform + 1.0  # expected means: 16 vs 14.5


def test_state_dict_round_trip_is_exact_including_the_sampler():
    log = MistakeLog(seed=3)
    for seed in range(3):
        log.append(*round_inputs(seed=seed))
    tensors, meta = log.state_dict()
    restored = MistakeLog()
    restored.load_state_dict(tensors, meta)
    assert restored.total_bytes == log.total_bytes and len(restored) == len(log)
    a, b = log.sample(4, "uniform"), restored.sample(4, "uniform")
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.hidden, b.hidden)


def test_a_whole_pass_is_held_alone_and_survives_a_checkpoint():
    log = MistakeLog(max_rounds=4)
    log.append(*round_inputs(seed=0))  # the tail of an epoch begun before the log was: not part of a pass
    assert log.begin_pass(3) == "partial"
    for seed in range(3):
        log.append(*round_inputs(seed=seed))
    assert log.begin_pass(3) == "held" and log.holds_a_pass
    assert len(log.rounds) == 3  # the earlier round, whose rows are in the pass again, is gone
    tensors, meta = log.state_dict()
    restored = MistakeLog()
    restored.load_state_dict(tensors, meta)
    assert restored.holds_a_pass and restored.pass_start == 4 and restored.total_bytes == log.total_bytes
    torch.testing.assert_close(restored.pilot_loss(), log.pilot_loss())
    for seed in range(2):  # rounds appended after it evict one of its rounds
        log.append(*round_inputs(seed=seed))
    assert not log.holds_a_pass


def test_a_pass_that_does_not_fit_or_lacks_rounds_is_not_held():
    log = MistakeLog(max_rounds=2)
    log.begin_pass(3)
    for seed in range(3):
        log.append(*round_inputs(seed=seed))
    assert log.begin_pass(3) == "too_large" and not log.holds_a_pass
    log.bound_rounds(8)
    for seed in range(2):  # a round of the pass was refused (non-finite values), say
        log.append(*round_inputs(seed=seed))
    assert log.begin_pass(3) == "partial" and not log.holds_a_pass
    log.bound_rounds(1)
    assert len(log.rounds) == 1


def test_pilot_loss_is_the_mean_cross_entropy_of_the_logged_targets():
    input_ids, attention_mask, targets, hidden, logits = round_inputs(seed=0)
    log = MistakeLog()
    log.append(input_ids, attention_mask, targets, hidden, logits)
    expected = torch.nn.functional.cross_entropy(logits.float(), targets[targets != -100])
    assert log.pilot_loss() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_settings_and_empty_sampling():
    with pytest.raises(ValueError, match="top_k"):
        MistakeLog(top_k=0)
    with pytest.raises(ValueError, match="empty"):
        MistakeLog().sample(2)
    log = MistakeLog()
    log.append(*round_inputs())
    with pytest.raises(ValueError, match="policy"):
        log.sample(2, "oldest")
