"""Entropy bonus coefficient: the paper's adaptive controller, a fixed value, or none.

Adaptive (Skywork-OR1 §3.2.5, Eq. 3.2, with the released scripts' clip):
each training step, with H the batch's token-weighted full-vocabulary entropy,
    c <- clip(c + Δ if H < target else c - Δ, c_min, c_max)
    α  = c · 1[H <= target]
and the loss subtracts α · H. The bonus is thus active only at or below the
target, which lower-bounds the entropy without pushing it up from above.
The state (c) is saved in every checkpoint (trainer_state.json) and restored
on resume; a fixed coefficient is taken from the config, not the checkpoint.
"""

from __future__ import annotations


class AdaptiveEntropy:
    def __init__(self, coef_init: float, delta: float, coef_min: float, coef_max: float, target: float):
        self.coef = coef_init
        self.delta, self.coef_min, self.coef_max, self.target = delta, coef_min, coef_max, target

    def coefficient(self, entropy: float) -> float:
        """Advance one training step with this batch's entropy; returns the bonus α for the step."""
        step = self.delta if entropy < self.target else -self.delta
        self.coef = min(self.coef_max, max(self.coef_min, self.coef + step))
        return self.coef if entropy <= self.target else 0.0

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


class FixedEntropy:
    def __init__(self, coef: float):
        self.coef = coef

    def coefficient(self, entropy: float) -> float:
        return self.coef

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        pass  # the configured value wins


class NoEntropyBonus(FixedEntropy):
    def __init__(self):
        super().__init__(0.0)


def make_entropy_control(cfg):
    """From `algo.entropy` (configs.schema.EntropyControlConfig)."""
    if cfg.mode == "adaptive":
        return AdaptiveEntropy(cfg.coef_init, cfg.delta, cfg.coef_min, cfg.coef_max, cfg.target)
    if cfg.mode == "fixed":
        return FixedEntropy(cfg.fixed_coef)
    return NoEntropyBonus()
