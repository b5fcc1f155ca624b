"""Batch packing (which positions the loss sees), the arithmetic task and its verifier."""

import numpy as np
import torch

from buffer.prompts import PromptStream
from buffer.protocol import Response, TrajectoryGroup
from configs.schema import TaskConfig
from learner.batch import pack
from tasks.arithmetic import make_splits, score


def test_pack_selects_response_tokens_and_their_predecessor_positions():
    r1 = Response(np.array([7, 8], np.int32), np.array([-0.1, -0.2], np.float32), 0, "stop", 1.0)
    r2 = Response(np.array([9], np.int32), np.array([-0.3], np.float32), 0, "stop", 0.0)
    g = TrajectoryGroup(0, np.array([1, 2, 3], np.int32), [r1, r2], actor_id=0, seq=0, gen_time_s=0.0)
    b = pack([g], pad_id=0)
    assert b.input_ids_BT.tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 9, 0]]
    assert b.attention_mask_BT.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.row_N.tolist() == [0, 0, 1] and b.col_N.tolist() == [2, 3, 2]
    # the hidden state at col predicts the token at col + 1
    assert [b.input_ids_BT[r, c + 1].item() for r, c in zip(b.row_N, b.col_N)] == b.target_N.tolist()
    torch.testing.assert_close(b.behaviour_logprob_N, torch.tensor([-0.1, -0.2, -0.3]))
    adv = b.advantage_N.tolist()
    assert adv[0] == adv[1] > 0 > adv[2]


def test_splits_are_disjoint_deterministic_and_correct():
    cfg = TaskConfig(digits=2, train_size=300, heldout_size=200)
    train, held = make_splits(cfg, seed=3)
    assert len(train) == 300 and len(held) == 200
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert make_splits(cfg, seed=3) == (train, held)
    for p in train[:50]:
        a, b = p.prompt.rstrip("=").split("+")
        assert int(p.answer) == int(a) + int(b)


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
