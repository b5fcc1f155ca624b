"""The algorithm registry (DESIGN §6): every objective, advantage estimator, rollout correction and loss
aggregation by name, with the module that implements it.

Config keys pick one of each (`algo.objective`, `algo.advantage`, `algo.correction`, `algo.loss_agg`); the
learner loads the module by its name here (learner/variants.py), so the training loop never names a variant.
Adding one is one new file under learner/<kind>/ and one line here: the config accepts the name at once,
`launch.py config` lists it, and tests/unit/test_algorithms.py checks the file keeps the kind's interface.
Names only: this floor module imports no role.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    module: str  # the implementing module, imported by the learner only
    needs: tuple[str, ...] = ()  # "proximal": algo.off_policy.old_logprobs = "recompute"; "correction": not "none"


OBJECTIVES = {
    "magic": Variant("asyncor.learner.objectives.magic"),
    "gspo": Variant("asyncor.learner.objectives.gspo"),
    "gspo_token": Variant("asyncor.learner.objectives.gspo_token"),
    "cispo": Variant("asyncor.learner.objectives.cispo"),
    "decoupled": Variant("asyncor.learner.objectives.decoupled", needs=("proximal", "correction")),
    "m2po": Variant("asyncor.learner.objectives.m2po"),
    "sapo": Variant("asyncor.learner.objectives.sapo"),
}

ADVANTAGES = {
    "grpo": Variant("asyncor.learner.advantages.grpo"),
    "drgrpo": Variant("asyncor.learner.advantages.drgrpo"),
    "rloo": Variant("asyncor.learner.advantages.rloo"),
    "reinforce_pp": Variant("asyncor.learner.advantages.reinforce_pp"),
    "reinforce_pp_baseline": Variant("asyncor.learner.advantages.reinforce_pp_baseline"),
}

CORRECTIONS = {
    "none": Variant("asyncor.learner.corrections.none"),
    "tis": Variant("asyncor.learner.corrections.tis", needs=("proximal",)),
    "mis": Variant("asyncor.learner.corrections.mis", needs=("proximal",)),
    "icepop": Variant("asyncor.learner.corrections.icepop", needs=("proximal",)),
    "sequence": Variant("asyncor.learner.corrections.sequence", needs=("proximal",)),
}

LOSS_AGGS = {
    "token_mean": Variant("asyncor.learner.loss_aggs.token_mean"),
    "seq_mean_token_mean": Variant("asyncor.learner.loss_aggs.seq_mean_token_mean"),
    "seq_mean_token_sum_norm": Variant("asyncor.learner.loss_aggs.seq_mean_token_sum_norm"),
}

REGISTRY = {"objective": OBJECTIVES, "advantage": ADVANTAGES, "correction": CORRECTIONS, "loss_agg": LOSS_AGGS}


def requirement_errors(objective: str, correction: str, old_logprobs: str) -> list[str]:
    """What the chosen objective and correction need that the config does not give (empty: all met)."""
    errors = []
    for key, name, variant in (("algo.objective", objective, OBJECTIVES[objective]),
                               ("algo.correction", correction, CORRECTIONS[correction])):
        if "proximal" in variant.needs and old_logprobs != "recompute":
            errors.append(f"{key} = {name!r} weighs by π_prox/μ with π_prox recomputed on the learner: set "
                          "algo.off_policy.old_logprobs = 'recompute'")
        if "correction" in variant.needs and correction == "none":
            errors.append(f"{key} = {name!r} weighs each token by the behaviour importance weight π_prox/μ: set "
                          f"algo.correction to one of {[c for c in CORRECTIONS if c != 'none']} (AReaL: 'mis')")
    return errors
