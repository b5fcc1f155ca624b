"""One training step of the recipe on a small real model: SGD step counts, recomputed old log-probs,
entropy bonus and controller, KL to a reference, importance corrections."""

import copy

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from asyncor.wire.trajectory import Response, TrajectoryGroup
from asyncor.configs.schema import AlgoConfig
from asyncor.learner.entropy_control import make_entropy_control
from asyncor.learner.model import Policy
from asyncor.learner.parallel import Ranks
from asyncor.learner.update import UpdateSettings, train_step

VOCAB = 24


def small_model(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return Policy(Qwen2ForCausalLM(cfg), temperature=1.0, impl="torch", chunk=4096)


ONE_RANK = Ranks(rank=0, world=1, device=torch.device("cpu"), sharded=False)


def make_groups(n_groups, rewards_fn, seed=0, group_size=4):
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(n_groups):
        responses = []
        for j in range(group_size):
            length = int(rng.integers(2, 6))
            tokens = rng.integers(1, VOCAB, length).astype(np.int32)
            # Behaviour log-probs off by a little, as a stale or vLLM-computed policy would be.
            responses.append(Response(tokens, np.full(length, -np.log(VOCAB) + 0.05, np.float32), 0, "stop",
                                      rewards_fn(i, j)))
        groups.append(TrajectoryGroup(i, rng.integers(1, VOCAB, 3).astype(np.int32), responses, 0, i, 0.0))
    return groups


def settings(algo, micro_batch_tokens=1 << 30, layout="varlen"):
    return UpdateSettings(algo=algo, eps_low=0.2, eps_high=0.2, grad_clip=1.0, pad_id=0,
                          micro_batch_tokens=micro_batch_tokens, layout=layout)


def run(algo, groups, steps=1, lr=1e-3, reference=None, model=None, staleness=None, **kw):
    model = model or small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ctl = make_entropy_control(algo.entropy)
    out = [train_step(model, opt, groups, settings(algo, **kw), ctl, ONE_RANK, reference, staleness)
           for _ in range(steps)]
    return model, opt, ctl, out


def alternating(i, j):
    return float(j % 2)


def test_sgd_steps_are_rollout_over_minibatch_times_reuse():
    algo = AlgoConfig(off_policy={"minibatch_prompts": 2, "reuse": 2})
    _, opt, _, (m,) = run(algo, make_groups(4, alternating))
    assert m["learner/sgd_steps"] == 4
    assert all(state["step"].item() == 4 for state in opt.state.values())


def test_recomputed_old_logprobs_make_the_first_ratio_exactly_one():
    algo = AlgoConfig(off_policy={"old_logprobs": "recompute"})
    _, _, _, (m,) = run(algo, make_groups(3, alternating))
    assert m["learner/is_ratio_min"] == pytest.approx(1.0, abs=1e-6) == m["learner/is_ratio_max"]
    # Against the behaviour log-probs, which differ from the learner's, the ratio is not 1.
    _, _, _, (m,) = run(AlgoConfig(), make_groups(3, alternating))
    assert abs(m["learner/is_ratio_mean"] - 1.0) > 1e-3
    assert m["learner/mismatch_kl"] > 0 and m["learner/mismatch_abs_mean"] > 0


def test_entropy_bonus_raises_entropy_and_controller_follows_the_rule():
    groups = make_groups(4, lambda i, j: 1.0)  # all-equal rewards: A = 0, only the bonus moves the weights
    algo = AlgoConfig(entropy={"mode": "fixed", "fixed_coef": 1.0})
    _, _, _, ms = run(algo, groups, steps=8, lr=1e-2)
    assert ms[-1]["learner/entropy"] > ms[0]["learner/entropy"] + 1e-3
    assert all(m["learner/entropy_bonus"] == 1.0 for m in ms)
    # Adaptive, with the target above the model's entropy: c climbs by Δ per step, bonus = c.
    algo = AlgoConfig(entropy={"mode": "adaptive", "target": 10.0, "delta": 1e-3, "coef_max": 2.5e-3})
    _, _, ctl, ms = run(algo, groups, steps=4)
    assert [m["learner/entropy_bonus"] for m in ms] == pytest.approx([1e-3, 2e-3, 2.5e-3, 2.5e-3])
    assert ctl.coef == pytest.approx(2.5e-3)
    # Target below the entropy: c stays at 0, no bonus, no effect on the update.
    algo = AlgoConfig(entropy={"mode": "adaptive", "target": 0.01})
    _, _, _, ms = run(algo, groups, steps=2)
    assert [m["learner/entropy_bonus"] for m in ms] == [0.0, 0.0]


def test_controller_sees_the_whole_batch_entropy_before_any_update():
    groups = make_groups(4, alternating)
    _, _, _, (whole,) = run(AlgoConfig(), groups)  # one SGD step: the forward sees the whole batch
    _, _, _, (split,) = run(AlgoConfig(off_policy={"minibatch_prompts": 1}), groups)  # four SGD steps
    assert split["learner/sgd_steps"] == 4
    assert split["learner/entropy"] == pytest.approx(whole["learner/entropy"], rel=1e-5)


def test_kl_to_reference_starts_at_zero_and_grows():
    model = small_model()
    reference = copy.deepcopy(model).requires_grad_(False)
    algo = AlgoConfig(kl_coef=0.1)
    _, _, _, ms = run(algo, make_groups(4, alternating), steps=3, lr=1e-2, reference=reference, model=model)
    assert ms[0]["learner/kl_ref"] == pytest.approx(0.0, abs=1e-7)
    assert ms[-1]["learner/kl_ref"] > 0


@pytest.mark.parametrize("correction", ["tis", "mis", "icepop", "sequence"])
def test_importance_corrections_report_their_weights(correction):
    algo = AlgoConfig(correction=correction, off_policy={"old_logprobs": "recompute", "is_cap": 1.02})
    _, _, _, (m,) = run(algo, make_groups(3, alternating), staleness=[0, 2, 1])
    # π_prox / μ = e^(log π_prox + log V - 0.05): around 1 for a fresh model, some above the cap.
    assert 0 < m["learner/is_weight_mean"] <= 1.1
    assert 0 <= m["learner/correction_frac"] < 1
    assert m["learner/tokens_s0"] + m["learner/tokens_s1"] + m["learner/tokens_s2"] == m["learner/tokens"]
    if correction != "tis":  # truncation keeps every token; the others mask (or truncate whole responses)
        assert m["learner/correction_frac"] > 0


def test_sequence_aggregation_and_truncation_metrics():
    groups = make_groups(2, alternating)
    groups[0].responses[0].finish_reason = "length"
    algo = AlgoConfig(loss_agg="seq_mean_token_mean", truncation_mask="before")
    _, _, _, (m,) = run(algo, groups)
    assert m["learner/truncation_rate"] == pytest.approx(1 / 8)
    lengths = [len(r.token_ids) for g in groups for r in g.responses]
    assert m["learner/response_len_max"] == max(lengths) and m["learner/tokens"] == sum(lengths)


def test_config_refuses_corrections_without_recomputed_logprobs():
    with pytest.raises(ValueError, match="recompute"):
        AlgoConfig(correction="tis")
    with pytest.raises(ValueError, match="recompute"):  # the old key, mapped to algo.correction
        AlgoConfig(off_policy={"correction": "tis"})


def test_the_share_of_tokens_over_the_behaviour_cap_is_measured_whatever_the_correction():
    """learner/behaviour_over_cap_frac: tokens with π_θ / μ > is_cap before the step (what "mis" drops)."""
    groups = make_groups(3, alternating)
    shares = []
    for cap in (1e-6, 1.0, 1e6):
        _, _, _, (m,) = run(AlgoConfig(off_policy={"is_cap": cap}), groups)
        shares.append(m["learner/behaviour_over_cap_frac"])
    assert shares[0] == 1.0 and shares[2] == 0.0 and 0.0 < shares[1] < 1.0
    _, _, _, (m,) = run(AlgoConfig(correction="mis", off_policy={"is_cap": 1.0, "old_logprobs": "recompute"}), groups)
    assert m["learner/behaviour_over_cap_frac"] == pytest.approx(shares[1])
    assert m["learner/correction_frac"] == pytest.approx(shares[1])  # "mis" masks exactly those tokens
