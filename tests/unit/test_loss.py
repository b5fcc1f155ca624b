"""Advantages and the token-level PPO-clip loss on hand-computed values."""

import math

import numpy as np
import pytest
import torch

from learner.loss import group_advantages, ppo_clip_loss


def test_group_advantage_hand_computed():
    # r = [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(1/3)
    adv = group_advantages(np.array([1.0, 0.0, 0.0, 1.0]))
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    np.testing.assert_allclose(adv, [expected, -expected, -expected, expected], rtol=1e-6)


def test_all_equal_rewards_give_zero_advantage_and_group_of_one_gives_zero():
    np.testing.assert_array_equal(group_advantages(np.array([1.0, 1.0, 1.0])), [0, 0, 0])
    np.testing.assert_array_equal(group_advantages(np.array([1.0])), [0])


def test_ppo_loss_on_policy_is_minus_mean_advantage():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    adv = torch.tensor([1.0, -2.0, 4.0])
    loss, stats = ppo_clip_loss(lp, lp.clone(), adv, 0.2, 0.2)
    assert loss.item() == pytest.approx(-(1 - 2 + 4) / 3)
    assert stats.ratio_mean == pytest.approx(1.0) and stats.clip_frac_low == stats.clip_frac_high == 0.0


def test_ppo_loss_clips_hand_computed():
    # ratios 1.5 (A>0: clipped to 1.2), 0.5 (A<0: clipped to 0.8), 1.5 (A<0: unclipped 1.5), 0.5 (A>0: unclipped)
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5])
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    behaviour = torch.zeros(4)
    lp = torch.log(ratios).requires_grad_()
    loss, stats = ppo_clip_loss(lp, behaviour, adv, 0.2, 0.2)
    expected = -(1.2 * 1 + 0.8 * -1 + 1.5 * -1 + 0.5 * 2) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats.clip_frac_high == pytest.approx(0.25) and stats.clip_frac_low == pytest.approx(0.25)
    loss.backward()
    # clipped tokens carry no gradient; unclipped ones: d(-ρA/4)/dlogp = -ρA/4
    np.testing.assert_allclose(lp.grad.numpy(), [0, 0, 1.5 / 4, -0.5 * 2 / 4], rtol=1e-6)


def test_clip_higher_uses_separate_upper_bound():
    lp = torch.log(torch.tensor([1.3]))
    loss, _ = ppo_clip_loss(lp, torch.zeros(1), torch.tensor([1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_loss_is_token_level_not_per_sequence():
    # Two responses, lengths 1 and 3, advantages +1 and -1: token mean = (1 - 3) / 4
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0])
    lp = torch.zeros(4)
    loss, _ = ppo_clip_loss(lp, lp, adv, 0.2, 0.2)
    assert loss.item() == pytest.approx(-(1 - 3) / 4)
