"""Batch packing (which positions the loss sees), the arithmetic task and its verifier."""

import numpy as np
import torch

from asyncor.buffer.prompts import PromptStream
from asyncor.wire.trajectory import Response, TrajectoryGroup
from asyncor.configs.schema import TaskConfig
from asyncor.learner.advantage import group_advantages
from asyncor.learner.batch import micro_batch, minibatch
from asyncor.learner.loss_aggs import seq_mean_token_mean, token_mean
from asyncor.tasks.arithmetic import make_splits, score


def _group():
    r1 = Response(np.array([7, 8], np.int32), np.array([-0.1, -0.2], np.float32), 0, "stop", 1.0)
    r2 = Response(np.array([9], np.int32), np.array([-0.3], np.float32), 0, "stop", 0.0)
    return TrajectoryGroup(0, np.array([1, 2, 3], np.int32), [r1, r2], actor_id=0, seq=0, gen_time_s=0.0)


def _minibatch(groups, loss_agg):
    """The groups' sequences with GRPO advantages and `loss_agg`'s token weights."""
    return minibatch(groups, [group_advantages(g.rewards) for g in groups], loss_agg)


def test_padded_micro_batch_selects_response_tokens_and_their_predecessor_positions():
    mb = _minibatch([_group()], token_mean)
    b = micro_batch([[s] for s in mb.sequences], packing=False, pad_id=0)
    assert b.input_ids_BT.tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 9, 0]]
    assert b.attention_mask_BT.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.row_N.tolist() == [0, 0, 1] and b.col_N.tolist() == [2, 3, 2]
    # the hidden state at col predicts the token at col + 1
    assert [b.input_ids_BT[r, c + 1].item() for r, c in zip(b.row_N, b.col_N)] == b.target_N.tolist()
    torch.testing.assert_close(b.behaviour_logprob_N, torch.tensor([-0.1, -0.2, -0.3]))
    adv = b.advantage_N.tolist()
    assert adv[0] == adv[1] > 0 > adv[2]
    assert b.slots == 10 and b.real_tokens == 9


def test_packed_micro_batch_is_one_row_with_positions_restarting_per_sequence():
    mb = _minibatch([_group()], seq_mean_token_mean)
    b = micro_batch([mb.sequences], packing=True, pad_id=0)
    assert b.input_ids_BT.tolist() == [[1, 2, 3, 7, 8, 1, 2, 3, 9]] and b.attention_mask_BT is None
    assert b.position_ids_BT.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]]
    assert b.row_N.tolist() == [0, 0, 0] and b.col_N.tolist() == [2, 3, 7]
    assert [b.input_ids_BT[0, c + 1].item() for c in b.col_N] == b.target_N.tolist()
    # sequence aggregation: each response weighs 1/2, spread over its tokens
    torch.testing.assert_close(b.weight_N, torch.tensor([0.25, 0.25, 0.5]))
    assert b.slots == b.real_tokens == 9 and b.real_N.tolist() == [1, 1, 1]


def test_packed_rows_are_right_padded_with_the_tail_as_its_own_block():
    r = lambda n: Response(np.arange(1, n + 1).astype(np.int32), np.zeros(n, np.float32), 0, "stop", float(n % 2))
    g = TrajectoryGroup(0, np.array([20, 21], np.int32), [r(4), r(1), r(1), r(2)], actor_id=0, seq=0, gen_time_s=0.0)
    s = _minibatch([g], token_mean).sequences  # lengths 6, 3, 3, 4
    b = micro_batch([[s[0]], [s[3]], [s[1], s[2]]], packing=True, pad_id=0)
    assert b.input_ids_BT.tolist() == [[20, 21, 1, 2, 3, 4], [20, 21, 1, 2, 0, 0], [20, 21, 1, 20, 21, 1]]
    assert b.position_ids_BT.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert [b.input_ids_BT[r, c + 1].item() for r, c in zip(b.row_N, b.col_N)] == b.target_N.tolist()
    assert b.slots == 18 and b.real_tokens == 16
    # each token's response within the micro-batch, and its place in the mini-batch's flat order (offsets 0, 4, 5, 6)
    assert b.seq_N.tolist() == [0, 0, 0, 0, 1, 1, 2, 3] and b.num_seqs == 4
    assert b.index_N.tolist() == [0, 1, 2, 3, 6, 7, 4, 5]


def test_minibatch_carries_staleness_per_group_and_token():
    g = _group()
    mb = minibatch([g, g], [group_advantages(g.rewards)] * 2, token_mean, staleness=[3, 1])
    assert mb.staleness.tolist() == [3, 3, 1, 1] and mb.staleness_M().tolist() == [3, 3, 3, 1, 1, 1]
    assert mb.seq_M().tolist() == [0, 0, 1, 2, 2, 3] and mb.tokens == 6
    torch.testing.assert_close(mb.behaviour_M(), torch.tensor([-0.1, -0.2, -0.3] * 2))
    assert [s.offset for s in mb.sequences] == [0, 2, 3, 5]
    assert minibatch([g], [group_advantages(g.rewards)], token_mean).staleness.tolist() == [0, 0]  # default


def test_empty_micro_batch_is_a_weight_zero_filler():
    b = micro_batch([], packing=True, pad_id=5)
    assert b.input_ids_BT.tolist() == [[5, 5]] and b.target_N.tolist() == [5]
    assert b.weight_N.tolist() == [0.0] and b.real_N.tolist() == [0.0] and b.real_tokens == 0


def test_splits_are_disjoint_deterministic_and_correct():
    cfg = TaskConfig(digits=2, train_size=300, heldout_size=200)
    train, held = make_splits(cfg, seed=3)
    assert len(train) == 300 and len(held) == 200
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert make_splits(cfg, seed=3) == (train, held)
    for p in train[:50]:
        a, b = p.prompt.rstrip("=").split("+")
        assert int(p.answer) == int(a) + int(b)


def test_repeat_task_is_long_tailed_disjoint_and_deterministic():
    import pytest

    from asyncor.tasks.builtin import make_splits as builtin_splits

    cfg = TaskConfig(kind="repeat", digits=3, max_repeat=30, train_size=2000, heldout_size=100)
    train, held = builtin_splits(cfg, seed=1)
    assert builtin_splits(cfg, seed=1) == (train, held)
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    for p in train[:100]:
        a, n = p.prompt.rstrip("=").split("*")
        assert p.answer == a * int(n)
    repeats = np.array([int(p.prompt.rstrip("=").split("*")[1]) for p in train])
    assert repeats.min() == 1 and repeats.max() == 30
    assert np.median(repeats) <= 3 and (repeats >= 10).mean() > 0.03  # most short, a heavy tail
    with pytest.raises(ValueError, match="max_repeat"):
        builtin_splits(TaskConfig(kind="repeat", digits=1, max_repeat=2, train_size=100, heldout_size=10), seed=0)


def test_exact_answer_verifier():
    assert score("168", "168") == 1.0 and score(" 168\n", "168") == 1.0
    assert score("167", "168") == 0.0 and score("1688", "168") == 0.0 and score("", "168") == 0.0


def test_prompt_stream_epochs_and_given_back_prompts_first():
    cfg = TaskConfig(digits=1, train_size=10, heldout_size=5)
    train, _ = make_splits(cfg, seed=0)
    s = PromptStream(train, seed=0)
    first = s.take(10)
    assert sorted(p.id for p in first) == list(range(10))
    s.give_back(first[:2])
    assert s.take(2) == first[:2]
    assert s.take(1) and s.epoch == 1


def test_prompt_stream_never_hands_out_a_prompt_still_in_flight():
    cfg = TaskConfig(digits=1, train_size=10, heldout_size=5)
    train, _ = make_splits(cfg, seed=0)
    s = PromptStream(train, seed=0)
    first = s.take(7)
    busy = {p.id for p in first}
    nxt = s.take(7, busy=busy)  # 3 left in this epoch, then a new epoch whose busy prompts are skipped
    assert len(nxt) == 3 and not {p.id for p in nxt} & busy and len({p.id for p in nxt}) == 3
    everything = busy | {p.id for p in nxt}
    assert s.take(5, busy=everything) == []  # all 10 in flight: nothing, and no endless loop
    again = s.take(4, busy=busy)
    assert {p.id for p in again} <= {p.id for p in nxt} and len(again) == 3
