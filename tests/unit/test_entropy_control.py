"""The adaptive entropy controller follows the paper's rule step by step."""

import pytest

from asyncor.configs.schema import EntropyControlConfig
from asyncor.learner.entropy_control import AdaptiveEntropy, make_entropy_control


def test_trajectory_over_a_fixed_entropy_sequence():
    ctl = AdaptiveEntropy(coef_init=0.0, delta=1e-3, coef_min=0.0, coef_max=2.5e-3, target=0.2)
    entropies = [0.5, 0.1, 0.1, 0.15, 0.2, 0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3]
    alphas, coefs = [], []
    for h in entropies:
        alphas.append(ctl.coefficient(h))
        coefs.append(ctl.coef)
    # c: above target -> clipped at 0; below -> +Δ each step up to c_max; at exactly the target -> -Δ.
    assert coefs == pytest.approx([0, 1e-3, 2e-3, 2.5e-3, 1.5e-3, 2.5e-3, 2.5e-3, 2.5e-3, 1.5e-3, 0.5e-3, 0, 0])
    # α = c · 1[H <= target]: on at or below the target (including H == target), off above it.
    assert alphas == pytest.approx([0, 1e-3, 2e-3, 2.5e-3, 1.5e-3, 2.5e-3, 2.5e-3, 2.5e-3, 0, 0, 0, 0])


def test_state_round_trip_and_modes():
    ctl = AdaptiveEntropy(0.0, 1e-4, 0.0, 5e-3, 0.2)
    for _ in range(7):
        ctl.coefficient(0.05)
    restored = AdaptiveEntropy(0.0, 1e-4, 0.0, 5e-3, 0.2)
    restored.load_state_dict(ctl.state_dict())
    assert restored.coef == pytest.approx(7e-4)
    assert restored.coefficient(0.05) == pytest.approx(8e-4)
    fixed = make_entropy_control(EntropyControlConfig(mode="fixed", fixed_coef=1e-3))
    assert fixed.coefficient(0.0) == fixed.coefficient(9.0) == 1e-3
    assert make_entropy_control(EntropyControlConfig(mode="off")).coefficient(0.0) == 0.0
    defaults = make_entropy_control(EntropyControlConfig())  # the released scripts' values
    assert (defaults.coef, defaults.delta, defaults.coef_max, defaults.target) == (0.0, 1e-4, 5e-3, 0.2)


def test_bounds_are_validated():
    with pytest.raises(ValueError, match="coef_min <= coef_init <= coef_max"):
        EntropyControlConfig(coef_init=1.0, coef_max=0.5)
