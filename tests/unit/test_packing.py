"""Micro-batch planning (balanced, equal step counts) and exact attention on packed rows."""

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from asyncor.learner.packing import LAYOUTS, best_fit_decreasing, pack, padded_bins


def test_best_fit_decreasing_respects_the_budget_and_keeps_every_sequence():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 97).tolist()
    bins = best_fit_decreasing(list(range(97)), lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(97))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) <= -(-sum(lengths) // 64) + 2  # BFD is near the lower bound on this kind of input
    padded = padded_bins(list(range(97)), lengths, 64)
    assert sorted(i for b in padded for i in b) == list(range(97))
    assert all(len(b) * max(lengths[i] for i in b) <= 64 for b in padded)


def test_a_sequence_over_the_budget_gets_a_bin_of_its_own():
    assert best_fit_decreasing([0, 1, 2], [100, 3, 4], 10) == [[0], [2, 1]]
    assert padded_bins([0, 1, 2], [100, 3, 4], 10) == [[0], [2, 1]]


def test_planning_thousands_of_sequences_takes_milliseconds():
    import time

    lengths = (np.random.default_rng(1).pareto(1.2, 4096) * 500 + 50).astype(int).clip(max=34816).tolist()
    for layout in LAYOUTS:
        start = time.perf_counter()
        pack(lengths, 36864, 4, layout)
        assert time.perf_counter() - start < 1.0, layout  # best fit with a sorted index: O(n log n)


def cost(rows, lengths, layout):
    longest_row = max(sum(lengths[i] for i in row) for row in rows)
    return sum(lengths[i] for row in rows for i in row) if layout == "varlen" else len(rows) * longest_row


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_plan_balances_tokens_and_gives_every_rank_the_same_step_count(ranks, layout):
    rng = np.random.default_rng(ranks)
    lengths = (rng.pareto(1.5, 61) * 20 + 5).astype(int).clip(max=200).tolist()  # long-tailed, like RL responses
    p = pack(lengths, 256, ranks, layout)
    assert len(p) == ranks and len({len(steps) for steps in p}) == 1
    assert sorted(i for steps in p for mb in steps for row in mb for i in row) == list(range(61))
    assert all(cost(mb, lengths, layout) <= 256 for steps in p for mb in steps if mb)
    if layout == "padded":
        assert all(len(row) == 1 for steps in p for mb in steps for row in mb)
    if layout == "varlen":
        assert all(len(mb) == 1 for steps in p for mb in steps if mb)
    loads = [sum(lengths[i] for mb in steps for row in mb for i in row) for steps in p]
    assert max(loads) - min(loads) <= max(lengths)


def test_rows_layout_wastes_less_than_padding_on_long_tailed_lengths():
    rng = np.random.default_rng(5)
    lengths = (rng.pareto(1.5, 200) * 20 + 5).astype(int).clip(max=400).tolist()
    waste = {}
    for layout in ("rows", "padded"):
        mbs = [mb for mb in pack(lengths, 2048, 1, layout)[0] if mb]
        slots = sum(len(mb) * max(sum(lengths[i] for i in row) for row in mb) for mb in mbs)
        waste[layout] = 1 - sum(lengths) / slots
    assert waste["rows"] < waste["padded"] / 2, waste


def test_fewer_sequences_than_ranks_leaves_empty_micro_batches():
    assert pack([5], 64, 2) == [[[[0]]], [[]]]
    assert pack([], 64, 2) == [[[]], [[]]]


# eager takes its softmax in float32 whatever the model dtype: equal to fp32 rounding; sdpa is exact in float64.
@pytest.mark.parametrize("attn,tol", [("sdpa", 1e-12), ("eager", 1e-5)])
def test_packed_rows_attend_only_within_each_sequence(attn, tol):
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(cfg).double().requires_grad_(False)
    model.set_attn_implementation(attn)
    seqs = [torch.randint(0, 50, (1, n)) for n in (7, 1, 13, 4)]
    alone = [model.model(input_ids=s, use_cache=False).last_hidden_state[0] for s in seqs]
    packed = torch.cat(seqs, 1)
    positions = torch.cat([torch.arange(s.shape[1]) for s in seqs])[None]
    hidden = model.model(input_ids=packed, position_ids=positions, use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(hidden, torch.cat(alone), rtol=tol, atol=tol)
