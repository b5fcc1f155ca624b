"""Advantages, aggregation, PPO-clip (incl. clip-higher), KL, importance weights and the whole objective on
hand-computed values (every variant against its paper formula: tests/unit/test_algorithms.py)."""

import math

import numpy as np
import pytest
import torch

from asyncor.configs.schema import OffPolicyConfig
from asyncor.learner.advantage import group_advantages
from asyncor.learner.corrections import mis, tis
from asyncor.learner.loss import LossInputs, LossSettings, behaviour_kl_k3, kl_k3, policy_loss
from asyncor.learner.loss_aggs import seq_mean_token_mean, token_mean
from asyncor.learner.objectives import magic
from asyncor.learner.objectives.magic import clipped_surrogate


def surrogate(lp, old, adv, weight, eps_low, eps_high, is_weight_N=None):
    """The MAGIC objective alone through policy_loss: (loss, stats)."""
    n = len(lp)
    inputs = LossInputs(lp, torch.zeros(n, dtype=lp.dtype), old, adv, weight, torch.ones(n, dtype=lp.dtype),
                        is_weight_N=is_weight_N)
    return policy_loss(inputs, LossSettings(eps_low, eps_high), magic)


def test_group_advantage_hand_computed():
    # r = [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(1/3)
    adv = group_advantages(np.array([1.0, 0.0, 0.0, 1.0]))
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    np.testing.assert_allclose(adv, [expected, -expected, -expected, expected], rtol=1e-6)


def test_all_equal_rewards_give_zero_advantage_and_group_of_one_gives_zero():
    np.testing.assert_array_equal(group_advantages(np.array([1.0, 1.0, 1.0])), [0, 0, 0])
    np.testing.assert_array_equal(group_advantages(np.array([1.0])), [0])


def test_truncation_masks_hand_computed():
    rewards = np.array([1.0, 0.0, 0.0, 0.0])  # the last one was cut at the length limit (reward 0)
    truncated = np.array([False, False, False, True])
    # none: an ordinary zero-reward sample. mean 0.25, unbiased std 0.5
    np.testing.assert_allclose(group_advantages(rewards, truncated, "none"),
                               [0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001], rtol=1e-5)
    # before: statistics over the first three (mean 1/3, std sqrt(1/3)); the truncated one gets 0
    s = math.sqrt(1 / 3) + 1e-6
    np.testing.assert_allclose(group_advantages(rewards, truncated, "before"),
                               [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0.0], rtol=1e-5)
    # after: statistics over all four, then the truncated one is set to 0
    np.testing.assert_allclose(group_advantages(rewards, truncated, "after"),
                               [0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, 0.0], rtol=1e-5)
    with pytest.raises(ValueError, match="truncation mask"):
        group_advantages(rewards, truncated, "sometimes")


def test_token_and_sequence_aggregation_weights():
    lengths = np.array([1, 3])  # two responses of lengths 1 and 3
    np.testing.assert_allclose(token_mean.token_weights(lengths, 0), np.full(4, 0.25))
    np.testing.assert_allclose(seq_mean_token_mean.token_weights(lengths, 0), [0.5, 1 / 6, 1 / 6, 1 / 6])
    # On-policy with A = +1 / -1 per response: token-level gives (1 - 3)/4, sequence-level (1 - 1)/2.
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0])
    lp = torch.zeros(4)
    loss_tok, _ = surrogate(lp, lp, adv, torch.tensor(token_mean.token_weights(lengths, 0)).float(), 0.2, 0.2)
    loss_seq, _ = surrogate(lp, lp, adv, torch.tensor(seq_mean_token_mean.token_weights(lengths, 0)).float(), 0.2, 0.2)
    assert loss_tok.item() == pytest.approx(-(1 - 3) / 4)
    assert loss_seq.item() == pytest.approx(0.0, abs=1e-7)


def test_ppo_on_policy_is_minus_weighted_advantage():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    adv = torch.tensor([1.0, -2.0, 4.0])
    loss, stats = surrogate(lp, lp.clone(), adv, torch.full((3,), 1 / 3), 0.2, 0.2)
    assert loss.item() == pytest.approx(-(1 - 2 + 4) / 3)
    assert float(stats["ratio_sum"] / stats["ratio_count"]) == pytest.approx(1.0)
    assert float(stats["clip_low"]) == float(stats["clip_high"]) == 0.0


def test_ppo_clips_hand_computed():
    # ratios 1.5 (A>0: clipped to 1.2), 0.5 (A<0: clipped to 0.8), 1.5 (A<0: unclipped 1.5), 0.5 (A>0: unclipped)
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5])
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    lp = torch.log(ratios).requires_grad_()
    loss, stats = surrogate(lp, torch.zeros(4), adv, torch.full((4,), 0.25), 0.2, 0.2)
    assert loss.item() == pytest.approx(-(1.2 * 1 + 0.8 * -1 + 1.5 * -1 + 0.5 * 2) / 4, rel=1e-6)
    # clip counts are tokens: one of the four on each side (learner/clip_frac_* = count / ratio_count)
    assert float(stats["clip_high"]) == 1 and float(stats["clip_low"]) == 1 and float(stats["ratio_count"]) == 4
    assert float(stats["ratio_min"]) == pytest.approx(0.5) and float(stats["ratio_max"]) == pytest.approx(1.5)
    loss.backward()
    # clipped tokens carry no gradient; unclipped ones: d(-ρA/4)/dlogp = -ρA/4
    np.testing.assert_allclose(lp.grad.numpy(), [0, 0, 1.5 / 4, -0.5 * 2 / 4], rtol=1e-6)
    # the per-token terms and the flags of the branch taken
    terms = clipped_surrogate(ratios, adv, 0.2, 0.2)
    torch.testing.assert_close(terms.loss_N, torch.tensor([-1.2, 0.8, 1.5, -1.0]))
    assert terms.clip_high_N.tolist() == [True, False, False, False]
    assert terms.clip_low_N.tolist() == [False, True, False, False]


def test_clip_higher_uses_separate_upper_bound():
    lp = torch.log(torch.tensor([1.25, 1.3, 0.7]))
    adv = torch.tensor([1.0, 1.0, -1.0])
    w = torch.full((3,), 1 / 3)
    loss, stats = surrogate(lp, torch.zeros(3), adv, w, 0.2, 0.28)
    # 1.25 < 1.28: unclipped (it would be clipped at 1.2 without clip-higher); 1.3 > 1.28: clipped to 1.28;
    # 0.7 < 1 - 0.2 with A < 0: clipped to 0.8.
    assert loss.item() == pytest.approx(-(1.25 + 1.28 - 0.8) / 3, rel=1e-6)
    assert float(stats["clip_high"]) == 1 and float(stats["clip_low"]) == 1
    loss, _ = surrogate(lp[:1], torch.zeros(1), adv[:1], torch.ones(1), 0.2, 0.25)
    assert loss.item() == pytest.approx(-1.25)


def test_importance_weight_multiplies_the_surrogate():
    lp = torch.zeros(2)
    loss, _ = surrogate(lp, lp, torch.tensor([1.0, 1.0]), torch.full((2,), 0.5), 0.2, 0.2,
                        is_weight_N=torch.tensor([2.0, 0.0]))
    assert loss.item() == pytest.approx(-1.0)


def test_kl_estimators_hand_computed():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    torch.testing.assert_close(kl_k3(lp, ref), torch.tensor([0.0, math.exp(0.5) - 0.5 - 1]))
    behaviour = torch.tensor([-1.0, -2.5])
    torch.testing.assert_close(behaviour_kl_k3(lp, behaviour), torch.tensor([0.0, math.exp(0.5) - 1 - 0.5]))


def test_tis_truncates_and_mis_drops_above_cap():
    log_ratio = torch.log(torch.tensor([0.5, 1.0, 3.0]))  # log π_prox / μ
    seq = torch.tensor([0, 0, 1])
    off_policy = OffPolicyConfig(is_cap=2.0)
    weight, flagged = tis.weights(log_ratio, seq, off_policy)
    torch.testing.assert_close(weight, torch.tensor([0.5, 1.0, 2.0]))
    assert flagged.tolist() == [False, False, True]
    weight, flagged = mis.weights(log_ratio, seq, off_policy)
    torch.testing.assert_close(weight, torch.tensor([0.5, 1.0, 0.0]))
    assert flagged.tolist() == [False, False, True]


def test_policy_loss_matches_the_formula_in_float64_on_random_odd_inputs():
    """L = -Σ w·c·min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) - α Σ w·H + β Σ w·k3(π_θ, π_ref), ρ = e^(lp - old),
    with clip-higher, an importance weight c that drops some tokens, and filler tokens (real = 0)."""
    rng = np.random.default_rng(11)
    n, eps_low, eps_high, alpha, beta = 37, 0.2, 0.28, 0.03, 0.1
    lp, ref = rng.normal(-2.0, 0.5, n), rng.normal(-2.0, 0.5, n)
    old = lp + rng.normal(0, 0.4, n)  # ratios spread over both clip bounds
    ent, adv = rng.uniform(0.5, 3.0, n), rng.normal(0, 1, n)
    weight = rng.uniform(0.1, 1.0, n) / 53.0  # a share of a larger mini-batch
    real = (rng.uniform(size=n) > 0.2).astype(np.float64)
    is_weight = np.where(rng.uniform(size=n) < 0.15, 0.0, rng.uniform(0.5, 2.0, n))

    ratio = np.exp(lp - old)
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv) * is_weight
    kl = np.sum(weight * (np.exp(ref - lp) - (ref - lp) - 1))
    expected = -np.sum(weight * surrogate) - alpha * np.sum(weight * ent) + beta * kl
    # d/d lp: the unclipped branch carries -w·c·A·ρ (inside the bounds, or where the min picks it), the KL term
    # β·w·(1 - e^(ref - lp)); d/d H: -α·w.
    unclipped = ratio * adv <= np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv
    grad_lp = -weight * is_weight * adv * ratio * unclipped + beta * weight * (1 - np.exp(ref - lp))

    t = lambda a: torch.tensor(a, dtype=torch.float64)
    lp_N, ent_N = t(lp).requires_grad_(), t(ent).requires_grad_()
    inputs = LossInputs(logprob_N=lp_N, entropy_N=ent_N, old_logprob_N=t(old), advantage_N=t(adv),
                        weight_N=t(weight), real_N=t(real), is_weight_N=t(is_weight), ref_logprob_N=t(ref))
    loss, stats = policy_loss(inputs, LossSettings(eps_low, eps_high, alpha, beta), magic)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(lp_N.grad.numpy(), grad_lp, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ent_N.grad.numpy(), -alpha * weight, rtol=1e-12)

    counted = real > 0
    assert 0 < (ratio < 1 - eps_low).sum() and 0 < (ratio > 1 + eps_high).sum()  # both bounds are exercised
    assert float(stats["loss"]) == pytest.approx(expected, rel=1e-12)
    assert float(stats["kl_ref"]) == pytest.approx(kl, rel=1e-12)
    assert float(stats["clip_low"]) == np.sum(real * ((ratio < 1 - eps_low) & (adv < 0)))  # real tokens clipped
    assert float(stats["clip_high"]) == np.sum(real * ((ratio > 1 + eps_high) & (adv > 0)))
    assert float(stats["ratio_sum"]) == pytest.approx(np.sum(ratio * counted), rel=1e-12)
    assert float(stats["ratio_count"]) == counted.sum()
    assert float(stats["ratio_min"]) == pytest.approx(ratio[counted].min(), rel=1e-12)
    assert float(stats["ratio_max"]) == pytest.approx(ratio[counted].max(), rel=1e-12)


def test_policy_loss_without_optional_terms_is_the_surrogate():
    """No importance weight, no reference, α = 0: the loss is the PPO-clip surrogate alone, with no extra stats."""
    rng = np.random.default_rng(5)
    n = 13
    lp, old = torch.tensor(rng.normal(-1, 0.3, n)), torch.tensor(rng.normal(-1, 0.3, n))
    adv, weight = torch.tensor(rng.normal(0, 1, n)), torch.full((n,), 1.0 / n, dtype=torch.float64)
    inputs = LossInputs(lp, torch.tensor(rng.uniform(1, 2, n)), old, adv, weight, torch.ones(n, dtype=torch.float64))
    loss, stats = policy_loss(inputs, LossSettings(0.2, 0.2), magic)
    terms = clipped_surrogate(torch.exp(lp - old), adv, 0.2, 0.2)
    assert loss.item() == (weight * terms.loss_N).sum().item()
    assert "kl_ref" not in stats
