"""Every variant of the algorithm registry (configs/algorithms.py) against an independent reference written from
its paper's formula, the invariants that tie the objectives together, micro-batch exactness of each, the
registry and config checks, and the mismatch metrics.

The references below are written the way the papers write them: ragged responses as a list of per-response
float64 tensors, python loops over responses and tokens, branches for the clips, and no helper of the learner's
modules. Each `REFERENCES` table is keyed by registry name and a test checks it lists every registered variant,
so a new variant fails here until its reference is written.
"""

import math

import numpy as np
import pytest
import torch

from asyncor.configs.algorithms import (ADVANTAGES, CORRECTIONS, LOSS_AGGS, OBJECTIVES, REGISTRY, Variant,
                                        requirement_errors)
from asyncor.configs.schema import AlgoConfig
from asyncor.learner.advantage import TRUNCATION_MASKS, step_advantages
from asyncor.learner.entropy_control import make_entropy_control
from asyncor.learner.loss import LossInputs, LossSettings, policy_loss
from asyncor.learner.mismatch import Mismatch
from asyncor.learner.update import UpdateSettings, train_step
from asyncor.learner.variants import INTERFACE, load

F64 = torch.float64
EPS_LOW, EPS_HIGH = 0.2, 0.28  # learner.clip_eps_low / clip_eps_high (magic, decoupled)
IS_CAP, IS_FLOOR = 1.5, 0.7  # algo.off_policy: both sides of the corrections are exercised
SUM_NORM_TOKENS = 17  # algo.loss_agg_tokens, L of seq_mean_token_sum_norm: above the longest response (13)
PARAMS = dict(gspo={"clip_low": 0.04, "clip_high": 0.05}, cispo={"eps_low": 0.25, "eps_high": 0.28},
              m2po={"threshold": 0.04}, sapo={"tau_pos": 0.9, "tau_neg": 1.7})


def algo_config(objective="magic", correction="none", loss_agg="token_mean", advantage="grpo", **over):
    kw = dict(PARAMS, objective=objective, correction=correction, loss_agg=loss_agg, advantage=advantage,
              loss_agg_tokens=SUM_NORM_TOKENS,
              off_policy={"old_logprobs": "recompute", "is_cap": IS_CAP, "is_floor": IS_FLOOR})
    kw.update(over)
    return AlgoConfig(**kw)


def valid(objective, correction):
    return not requirement_errors(objective, correction, "recompute")


# --- the paper references ---

def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


def clip(x, low, high):
    """clip(x, low, high) as a branch: a bound is a constant (no gradient)."""
    return low if x < low else high if x > high else x


def ppo_term(ratio, adv, eps_low, eps_high):
    """-min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) and which bound's branch the min took."""
    clipped = clip(ratio, 1 - eps_low, 1 + eps_high)
    plain, capped = ratio * adv, clipped * adv
    took_clip = bool(capped < plain)
    return -(capped if took_clip else plain), took_clip and ratio < 1 - eps_low, took_clip and ratio > 1 + eps_high


def ref_magic(lp, old, adv, mask, algo, eps):
    """Skywork-OR1 Eq. 3.1 / DAPO Eq. 8, per token: ℓ_t = -min(ρ_t A, clip(ρ_t, 1-ε_low, 1+ε_high) A)."""
    out = []
    for i in range(len(lp)):
        out.append([ppo_term(torch.exp(lp[i][t] - old[i][t]), adv[i], *eps) for t in range(len(lp[i]))])
    return out


def ref_gspo(lp, old, adv, mask, algo, eps):
    """GSPO Eq. 5-7: s_i = exp((1/|y_i|) Σ_t log π_θ/π_old), ℓ_i = -min(s_i A_i, clip(s_i) A_i) on every token."""
    out = []
    for i in range(len(lp)):
        total = 0.0
        for t in range(len(lp[i])):
            total = total + (lp[i][t] - old[i][t])
        s = torch.exp(total / len(lp[i]))
        out.append([ppo_term(s, adv[i], algo.gspo.clip_low, algo.gspo.clip_high)] * len(lp[i]))
    return out


def ref_gspo_token(lp, old, adv, mask, algo, eps):
    """GSPO Eq. 13-14: s_i,t = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)], ℓ_i,t = -min(s_i,t A, clip(s_i,t) A)."""
    out = []
    for i in range(len(lp)):
        total = 0.0
        for t in range(len(lp[i])):
            total = total + (lp[i][t] - old[i][t]).detach()
        s = torch.exp(total / len(lp[i]))
        out.append([ppo_term(s * torch.exp(lp[i][t] - lp[i][t].detach()), adv[i], algo.gspo.clip_low,
                             algo.gspo.clip_high) for t in range(len(lp[i]))])
    return out


def ref_cispo(lp, old, adv, mask, algo, eps):
    """MiniMax-M1 Eq. 4-5: ℓ_t = -sg(clip(ρ_t, 1-ε_low^IS, 1+ε_high^IS)) · A · log π_θ(y_t)."""
    lo, hi = 1 - algo.cispo.eps_low, 1 + algo.cispo.eps_high
    out = []
    for i in range(len(lp)):
        row = []
        for t in range(len(lp[i])):
            ratio = float(torch.exp(lp[i][t] - old[i][t]).detach())
            row.append((-clip(ratio, lo, hi) * adv[i] * lp[i][t], ratio < lo, ratio > hi))
        out.append(row)
    return out


def ref_decoupled(lp, old, adv, mask, algo, eps):
    """AReaL Eq. 5: -w_t · min(ρ_t A, clip(ρ_t) A), ρ against π_prox; w_t is the correction's (applied by the loss)."""
    return ref_magic(lp, old, adv, mask, algo, eps)


def m2po_mask(log_ratio, threshold):
    """M2PO Algorithm 1, literally: drop the token with the largest (log π/μ)² until the mean over the kept ones is
    at most τ. `log_ratio`: a flat list of floats; returns 0/1 per token."""
    kept = list(range(len(log_ratio)))
    while kept and sum(log_ratio[k] ** 2 for k in kept) / len(kept) > threshold:
        kept.remove(max(kept, key=lambda k: log_ratio[k] ** 2))
    return [1.0 if k in kept else 0.0 for k in range(len(log_ratio))]


def ref_m2po(lp, old, adv, mask, algo, eps):
    """M2PO Eq. 6-8: ℓ_t = -M_t · ρ_t · A, no clip."""
    return [[(-mask[i][t] * torch.exp(lp[i][t] - old[i][t]) * adv[i], False, False) for t in range(len(lp[i]))]
            for i in range(len(lp))]


def ref_sapo(lp, old, adv, mask, algo, eps):
    """SAPO Eq. 5-6: ℓ_t = -f(ρ_t) A, f(ρ) = σ(τ(ρ - 1)) · 4/τ, τ = τ_pos if A > 0 else τ_neg."""
    out = []
    for i in range(len(lp)):
        tau = algo.sapo.tau_pos if adv[i] > 0 else algo.sapo.tau_neg
        out.append([(-sigmoid(tau * (torch.exp(lp[i][t] - old[i][t]) - 1)) * 4 / tau * adv[i], False, False)
                    for t in range(len(lp[i]))])
    return out


OBJECTIVE_REFERENCES = {"magic": ref_magic, "gspo": ref_gspo, "gspo_token": ref_gspo_token, "cispo": ref_cispo,
                        "decoupled": ref_decoupled, "m2po": ref_m2po, "sapo": ref_sapo}


def ref_correction(name, prox, behaviour, off_policy):
    """Per response, per token: (weight c_t, flagged) from k_t = π_prox(y_t) / μ(y_t)."""
    cap, floor = off_policy.is_cap, off_policy.is_floor
    out = []
    for p, b in zip(prox, behaviour):
        k = [math.exp(p[t] - b[t]) for t in range(len(p))]
        if name == "none":
            out.append([(1.0, False) for _ in k])
        elif name == "tis":  # min(k, C)
            out.append([(min(x, cap), x > cap) for x in k])
        elif name == "mis":  # k, masked above C
            out.append([(x if x <= cap else 0.0, x > cap) for x in k])
        elif name == "icepop":  # k inside [α, β], else 0
            out.append([(x if floor <= x <= cap else 0.0, not floor <= x <= cap) for x in k])
        elif name == "sequence":  # min(Π_t k_t, C) on every token of the response
            product = 1.0
            for x in k:
                product *= x
            out.append([(min(product, cap), product > cap) for _ in k])
        else:
            raise AssertionError(f"no reference for correction {name!r}: write one")
    return out


def ref_loss_agg(name, lengths, constant):
    """Per response: its tokens' weight."""
    present = sum(1 for n in lengths if n > 0)
    if name == "token_mean":  # 1/T
        return [1.0 / sum(lengths)] * len(lengths)
    if name == "seq_mean_token_mean":  # 1/(|y_i| B'), B' = non-empty responses
        return [1.0 / (n * present) if n else 0.0 for n in lengths]
    if name == "seq_mean_token_sum_norm":  # 1/(B L)
        return [1.0 / (len(lengths) * constant)] * len(lengths)
    raise AssertionError(f"no reference for loss_agg {name!r}: write one")


# --- advantages ---

def ref_grpo(groups):
    out = []
    for r in groups:
        if len(r) < 2:
            out.append([0.0] * len(r))
            continue
        mean = sum(r) / len(r)
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
        out.append([(x - mean) / (std + 1e-6) for x in r])
    return out


def ref_drgrpo(groups):
    return [[0.0] * len(r) if len(r) < 2 else [x - sum(r) / len(r) for x in r] for r in groups]


def ref_rloo(groups):
    out = []
    for r in groups:
        row = []
        for i in range(len(r)):
            others = [r[j] for j in range(len(r)) if j != i]
            row.append(r[i] - sum(others) / len(others) if others else 0.0)
        out.append(row)
    return out


def batch_norm(groups):
    flat = [x for r in groups for x in r]
    if not flat:
        return groups
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))  # population std
    return [[(x - mean) / (std + 1e-6) for x in r] for r in groups]


def ref_reinforce_pp(groups):
    return batch_norm(groups)


def ref_reinforce_pp_baseline(groups):
    return batch_norm([[x - sum(r) / len(r) for x in r] for r in groups])


ADVANTAGE_REFERENCES = {"grpo": ref_grpo, "drgrpo": ref_drgrpo, "rloo": ref_rloo, "reinforce_pp": ref_reinforce_pp,
                        "reinforce_pp_baseline": ref_reinforce_pp_baseline}
CORRECTION_NAMES = ("none", "tis", "mis", "icepop", "sequence")  # those ref_correction knows
LOSS_AGG_NAMES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")  # those ref_loss_agg knows


def test_every_registered_variant_has_a_reference():
    assert set(OBJECTIVE_REFERENCES) == set(OBJECTIVES)
    assert set(ADVANTAGE_REFERENCES) == set(ADVANTAGES)
    assert set(CORRECTION_NAMES) == set(CORRECTIONS)
    assert set(LOSS_AGG_NAMES) == set(LOSS_AGGS)


# --- a. each variant against its reference ---

def make_case(seed=3, lengths=None, n_responses=7):
    """Ragged responses (1..13 tokens): current log-probs, π_old = π_prox perturbed so ratios leave both clip
    bounds, behaviour μ further off (the corrections clip on both sides), mixed-sign advantages, staleness 0..3."""
    rng = np.random.default_rng(seed)
    lengths = list(lengths) if lengths is not None else [int(n) for n in rng.integers(1, 14, n_responses)]
    lp = [rng.normal(-1.5, 0.6, n) for n in lengths]
    old = [x + rng.normal(0, 0.35, len(x)) for x in lp]
    behaviour = [x + rng.normal(0, 0.4, len(x)) for x in old]
    adv = [float(a) for a in rng.normal(0, 1, len(lengths))]
    staleness = [int(s) for s in rng.integers(0, 4, len(lengths))]
    return dict(lengths=lengths, lp=lp, old=old, behaviour=behaviour, adv=adv, staleness=staleness)


def module_loss(case, algo, objective, correction, loss_agg, eps=(EPS_LOW, EPS_HIGH), old=None):
    """The learner's loss and gradient w.r.t. the log-probs, through its modules as learner/update.py calls them."""
    lengths = np.array(case["lengths"], np.int64)
    t = lambda xs: torch.tensor(np.concatenate(xs), dtype=F64)
    lp_N = t(case["lp"]).requires_grad_()
    old_N = t(old if old is not None else case["old"])
    log_ratio_M = old_N - t(case["behaviour"])  # log π_prox / μ
    seq_N = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths))
    weight_N = torch.tensor(load("loss_agg", loss_agg).token_weights(lengths, SUM_NORM_TOKENS), dtype=F64)
    c_N, flagged_N = load("correction", correction).weights(log_ratio_M, seq_N, algo.off_policy)
    settings = LossSettings(*eps, algo=algo)
    obj = load("objective", objective)
    mask_N = obj.token_mask(log_ratio_M, settings) if hasattr(obj, "token_mask") else None
    inputs = LossInputs(logprob_N=lp_N, entropy_N=torch.zeros(len(lp_N), dtype=F64), old_logprob_N=old_N,
                        advantage_N=torch.tensor(np.repeat(case["adv"], lengths), dtype=F64), weight_N=weight_N,
                        real_N=torch.ones(len(lp_N), dtype=F64), seq_N=seq_N, num_seqs=len(lengths),
                        is_weight_N=None if correction == "none" else c_N, mask_N=mask_N)
    loss, stats = policy_loss(inputs, settings, obj)
    loss.backward()
    return loss.detach(), lp_N.grad, stats, dict(c=c_N, flagged=flagged_N, mask=mask_N)


def reference_loss(case, algo, objective, correction, loss_agg, eps=(EPS_LOW, EPS_HIGH), old=None):
    """L = Σ_i Σ_t w_i · c_i,t · ℓ_i,t from the references, on per-response tensors."""
    lp = [torch.tensor(x, dtype=F64, requires_grad=True) for x in case["lp"]]
    old = [torch.tensor(x, dtype=F64) for x in (old if old is not None else case["old"])]
    prox = [[float(v) for v in x] for x in old]
    # M2PO's mask from log π_prox/μ over the whole mini-batch: the weights before the step's first update, where
    # π_θ = π_prox (learner/update.py computes it there, once)
    log_ratio = [p - b for x, y in zip(prox, case["behaviour"]) for p, b in zip(x, y)]
    flat_mask = m2po_mask(log_ratio, algo.m2po.threshold)
    mask, k = [], 0
    for n in case["lengths"]:
        mask.append(flat_mask[k:k + n])
        k += n
    terms = OBJECTIVE_REFERENCES[objective](lp, old, case["adv"], mask, algo, eps)
    corr = ref_correction(correction, prox, case["behaviour"], algo.off_policy)
    agg = ref_loss_agg(loss_agg, case["lengths"], SUM_NORM_TOKENS)
    loss, clip_low, clip_high = 0.0, 0, 0
    for i in range(len(lp)):
        for t in range(len(lp[i])):
            term, low, high = terms[i][t]
            loss = loss + agg[i] * corr[i][t][0] * term
            clip_low, clip_high = clip_low + low, clip_high + high
    loss.backward()
    grad = torch.cat([x.grad if x.grad is not None else torch.zeros_like(x) for x in lp])
    flags = dict(clip_low=clip_low, clip_high=clip_high, c=[w for r in corr for w, _ in r],
                 flagged=[f for r in corr for _, f in r], mask=flat_mask)
    return loss.detach(), grad, flags


def errors(got, want):
    """(max abs error, max abs error / max |want|)."""
    got, want = torch.as_tensor(got, dtype=F64).flatten(), torch.as_tensor(want, dtype=F64).flatten()
    worst = float((got - want).abs().max())
    return worst, worst / max(float(want.abs().max()), 1e-300)


COMBOS = [(o, c, a) for o in OBJECTIVES for c in CORRECTIONS for a in LOSS_AGGS if valid(o, c)]


@pytest.mark.parametrize("objective,correction,loss_agg", COMBOS)
def test_objective_correction_and_loss_agg_match_the_paper_formulas(objective, correction, loss_agg):
    case = make_case()
    algo = algo_config(objective, correction, loss_agg)
    loss, grad, stats, parts = module_loss(case, algo, objective, correction, loss_agg)
    ref, ref_grad, flags = reference_loss(case, algo, objective, correction, loss_agg)
    assert errors(loss, ref)[1] < 1e-10, (float(loss), float(ref))
    assert errors(grad, ref_grad)[1] < 1e-10
    assert float(grad.abs().max()) > 0
    # the clipped branches taken, the correction's weights and flags, the objective's own mask
    assert float(stats["clip_low"]) == flags["clip_low"] and float(stats["clip_high"]) == flags["clip_high"]
    assert errors(parts["c"], flags["c"])[1] < 1e-12
    assert parts["flagged"].tolist() == flags["flagged"]
    if parts["mask"] is not None:
        assert parts["mask"].tolist() == flags["mask"]


def test_the_reference_case_exercises_every_branch():
    """The case above is not trivial: each clip, each correction and the M2PO mask act on some tokens, not all."""
    case = make_case()
    for objective in ("magic", "gspo", "gspo_token", "cispo"):
        _, _, flags = reference_loss(case, algo_config(objective), objective, "none", "token_mean")
        tokens = sum(case["lengths"])
        assert 0 < flags["clip_low"] and 0 < flags["clip_high"], objective
        assert flags["clip_low"] + flags["clip_high"] < tokens, objective
    for correction in ("tis", "mis", "icepop", "sequence"):
        _, _, flags = reference_loss(case, algo_config(correction=correction), "magic", correction, "token_mean")
        assert 0 < sum(flags["flagged"]) < len(flags["flagged"]), correction
    k = np.exp(np.concatenate(case["old"]) - np.concatenate(case["behaviour"]))
    assert (k < IS_FLOOR).any() and (k > IS_CAP).any()  # icepop masks on both sides
    _, _, flags = reference_loss(case, algo_config("m2po"), "m2po", "none", "token_mean")
    assert 0 < sum(flags["mask"]) < len(flags["mask"])
    assert {a > 0 for a in case["adv"]} == {True, False}  # SAPO's two temperatures
    assert len(set(case["lengths"])) > 3 and min(case["lengths"]) >= 1 and max(case["lengths"]) <= 13


@pytest.mark.parametrize("name", list(ADVANTAGES))
def test_advantage_estimators_match_the_paper_formulas(name):
    rng = np.random.default_rng(17)
    groups = [rng.integers(0, 2, 5).astype(float), np.array([1.0]), rng.normal(0, 1, 3), np.array([0.5, 0.5, 0.5]),
              rng.uniform(0, 1, 7), np.array([1.0, 0.0])]
    got = load("advantage", name).advantages([g.copy() for g in groups])
    want = ADVANTAGE_REFERENCES[name]([list(g) for g in groups])
    assert [len(g) for g in got] == [len(g) for g in groups]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    assert any(np.abs(g).max() > 0 for g in got)


@pytest.mark.parametrize("name", list(ADVANTAGES))
@pytest.mark.parametrize("mask", TRUNCATION_MASKS)
def test_truncation_masks_with_every_estimator(name, mask):
    """"before": the truncated responses are left out of the estimator's statistics (group and batch), advantage 0;
    "after": counted, then set to 0; "none": ordinary samples."""
    rng = np.random.default_rng(23)
    rewards = [rng.uniform(0, 1, 5), rng.uniform(0, 1, 4), np.array([0.3, 0.9]), rng.uniform(0, 1, 6)]
    truncated = [np.array([0, 1, 0, 0, 1], bool), np.zeros(4, bool), np.array([1, 0], bool),
                 np.array([1, 1, 1, 1, 1, 1], bool)]
    for r, c in zip(rewards, truncated):
        r[c] = 0.0  # the actor scores a cut response 0
    got = step_advantages(rewards, truncated, load("advantage", name), mask)
    reference = ADVANTAGE_REFERENCES[name]
    if mask == "before":
        kept = reference([[x for x, cut in zip(r, c) if not cut] for r, c in zip(rewards, truncated)])
        want = []
        for r, c, k in zip(rewards, truncated, kept):
            it = iter(k)
            want.append([0.0 if cut else next(it) for cut in c])
    else:
        want = reference([list(r) for r in rewards])
        if mask == "after":
            want = [[0.0 if cut else a for a, cut in zip(w, c)] for w, c in zip(want, truncated)]
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    if mask != "none":
        assert all((g[c] == 0).all() for g, c in zip(got, truncated))


@pytest.mark.parametrize("name", list(LOSS_AGGS))
def test_loss_agg_weights_match_the_paper_formulas(name):
    lengths = np.array([3, 1, 0, 13, 5, 2, 7], np.int64)  # one empty response
    got = load("loss_agg", name).token_weights(lengths, SUM_NORM_TOKENS)
    want = np.repeat(ref_loss_agg(name, list(lengths), SUM_NORM_TOKENS), lengths)
    assert len(got) == lengths.sum()
    np.testing.assert_allclose(got, want, rtol=1e-14)
    if name != "seq_mean_token_sum_norm":  # Dr. GRPO's weights sum to T / (B L) < 1, by design
        assert float(np.sum(got)) == pytest.approx(1.0, rel=1e-14)
    else:
        assert float(np.sum(got)) == pytest.approx(lengths.sum() / (len(lengths) * SUM_NORM_TOKENS), rel=1e-14)
        with pytest.raises(ValueError, match="constant"):
            load("loss_agg", name).token_weights(lengths, 0)


# --- b. invariants ---

INVARIANT_CORRECTION = {o: "mis" if not valid(o, "none") else "none" for o in OBJECTIVES}


@pytest.mark.parametrize("loss_agg", list(LOSS_AGGS))
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_at_ratio_one_every_objective_is_reinforce(objective, loss_agg):
    """π_old = π_θ (ρ = 1, no clip active, nothing masked): ∇L = -Σ w c A ∇log π for every objective, with the
    correction's weight c (here the sequence correction's, and with "none"/"mis" at μ = π_prox, c = 1)."""
    case = make_case(seed=5)
    for correction, behaviour in ((INVARIANT_CORRECTION[objective], case["lp"]), ("sequence", case["behaviour"])):
        at_one = dict(case, behaviour=behaviour)
        algo = algo_config(objective, correction, loss_agg, m2po={"threshold": 1e6})
        loss, grad, stats, parts = module_loss(at_one, algo, objective, correction, loss_agg, old=case["lp"])
        lengths = np.array(case["lengths"])
        w = np.asarray(load("loss_agg", loss_agg).token_weights(lengths, SUM_NORM_TOKENS))
        reinforce = -w * parts["c"].numpy() * np.repeat(case["adv"], lengths)
        if objective == "cispo":  # ℓ = -ρ̂ A log π: its value is not REINFORCE's surrogate, its gradient is
            value = reinforce * np.concatenate(case["lp"])
        elif objective == "sapo":  # f(1) = σ(0) · 4/τ = 2/τ
            tau = np.where(np.repeat(case["adv"], lengths) > 0, algo.sapo.tau_pos, algo.sapo.tau_neg)
            value = reinforce * 2 / tau
        else:
            value = reinforce
        assert float(loss) == pytest.approx(float(np.sum(value)), rel=1e-12, abs=1e-15), correction
        np.testing.assert_allclose(grad.numpy(), reinforce, rtol=1e-12, atol=1e-15, err_msg=correction)
        assert float(stats["clip_low"]) == float(stats["clip_high"]) == 0
        if parts["mask"] is not None:
            assert bool((parts["mask"] == 1).all())


@pytest.mark.parametrize("loss_agg", list(LOSS_AGGS))
def test_gspo_on_one_token_responses_is_the_token_objective(loss_agg):
    """|y_i| = 1: s_i = ρ_i, so GSPO is MAGIC's token PPO-clip with GSPO's clip bounds (and so is GSPO-token)."""
    case = make_case(seed=9, lengths=[1] * 11)
    algo = algo_config("gspo", loss_agg=loss_agg)
    bounds = (algo.gspo.clip_low, algo.gspo.clip_high)
    magic = module_loss(case, algo, "magic", "none", loss_agg, eps=bounds)
    for objective in ("gspo", "gspo_token"):
        loss, grad, stats, _ = module_loss(case, algo, objective, "none", loss_agg)
        assert errors(loss, magic[0])[1] < 1e-14 and errors(grad, magic[1])[1] < 1e-14
        assert float(stats["clip_low"]) == float(magic[2]["clip_low"]) > 0
        assert float(stats["clip_high"]) == float(magic[2]["clip_high"]) > 0


@pytest.mark.parametrize("correction", ["none", "sequence"])
@pytest.mark.parametrize("loss_agg", list(LOSS_AGGS))
def test_gspo_token_equals_gspo_with_one_advantage_per_response(loss_agg, correction):
    """Same value and same gradient as GSPO (a response's tokens share its weight, its advantage and here its
    correction): under "seq_mean_token_mean" this is the paper's GSPO-token = GSPO when A_i,t = A_i; every
    loss_agg here gives each token of a response the same weight, so they all keep it."""
    case = make_case(seed=1)
    algo = algo_config("gspo", correction, loss_agg)
    gspo = module_loss(case, algo, "gspo", correction, loss_agg)
    token = module_loss(case, algo, "gspo_token", correction, loss_agg)
    assert errors(token[0], gspo[0])[1] < 1e-13
    assert errors(token[1], gspo[1])[1] < 1e-13
    assert float(gspo[2]["clip_low"]) > 0 and float(gspo[2]["clip_high"]) > 0


# --- c. micro-batched == one batch ---

# Each objective with "none" (decoupled: "mis") and two of the other corrections, in turn.
MICRO_CASES = [case for i, o in enumerate(OBJECTIVES) for case in
               ((o, "none" if valid(o, "none") else "mis"), (o, ("tis", "icepop", "sequence")[i % 3]),
                (o, ("tis", "icepop", "sequence")[(i + 1) % 3]))]


def noisy_groups():
    from tests.unit.test_update import make_groups  # (imports transformers: see `one_step`)

    groups = make_groups(4, lambda i, j: float((i + j) % 3 == 0), seed=4)
    rng = np.random.default_rng(8)
    for g in groups:  # behaviour log-probs off by more: the clips, corrections and M2PO's mask all act
        for r in g.responses:
            r.logprobs = (r.logprobs + rng.normal(0, 0.3, len(r.logprobs))).astype(np.float32)
    return groups


def one_step(algo, micro_batch_tokens, groups, staleness):
    # Imported here, not at the top: transformers imports triton, and triton imported before
    # tests/unit/test_logprob_entropy.py sets TRITON_INTERPRET=1 breaks its interpreter runs.
    from tests.unit.test_update import ONE_RANK, small_model

    model = small_model()
    start = [p.detach().clone() for p in model.parameters()]
    settings = UpdateSettings(algo=algo, eps_low=EPS_LOW, eps_high=EPS_HIGH, grad_clip=1e9, pad_id=0,
                              micro_batch_tokens=micro_batch_tokens)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the weight change is the gradient
    m = train_step(model, opt, groups, settings, make_entropy_control(algo.entropy), ONE_RANK, staleness=staleness)
    return [s - p.detach() for s, p in zip(start, model.parameters())], m


@pytest.fixture
def one_thread():
    """A tiny model: one intra-op thread is ~10x faster than two contending with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("objective,correction", MICRO_CASES)
def test_micro_batched_step_equals_the_unsplit_step(objective, correction, one_thread):
    """Each objective (x corrections) takes the same step whether its mini-batch runs whole or one sequence per
    micro-batch: weights, correction and mask are fixed over the whole mini-batch first. The loss_agg and the
    advantage estimator rotate over the cases, so each is covered too."""
    i = MICRO_CASES.index((objective, correction))
    # Two mini-batches: the second is trained at weights one step past π_prox, so the clips act too.
    algo = algo_config(objective, correction, list(LOSS_AGGS)[i % len(LOSS_AGGS)],
                       list(ADVANTAGES)[i % len(ADVANTAGES)], loss_agg_tokens=9,
                       off_policy={"old_logprobs": "recompute", "is_cap": IS_CAP, "is_floor": IS_FLOOR,
                                   "minibatch_prompts": 2})
    groups, staleness = noisy_groups(), [2, 0, 3, 1]
    whole, mw = one_step(algo, 1 << 30, groups, staleness)
    split, ms = one_step(algo, 30, groups, staleness)
    assert mw["learner/micro_batches"] == 2 and ms["learner/micro_batches"] >= 4 and mw["learner/sgd_steps"] == 2
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert max(float(b.abs().max()) for b in whole) > 1e-3
    for name, value in mw.items():
        if name in ("learner/micro_batches", "learner/padding_frac"):
            continue
        assert ms[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert {f"learner/tokens_s{k}" for k in range(4)} <= set(mw)
    assert mw["learner/is_ratio_max"] - mw["learner/is_ratio_min"] > 0.1  # the second mini-batch is off π_prox
    if correction != "none":
        assert 0 < mw["learner/correction_frac"] < 1
    if objective == "m2po":
        assert 0 < mw["learner/objective_masked_frac"] < 1


# --- d. registry and config ---

@pytest.mark.parametrize("kind,name", [(k, n) for k, names in REGISTRY.items() for n in names])
def test_every_registered_variant_loads_with_its_interface(kind, name):
    module = load(kind, name)
    assert module.__name__ == REGISTRY[kind][name].module
    assert all(callable(getattr(module, f)) for f in INTERFACE[kind])
    assert module.__doc__ and len(module.__doc__) > 80  # it states its formula


@pytest.mark.parametrize("kind", list(REGISTRY))
def test_a_bad_name_or_a_module_without_the_interface_is_refused(kind, monkeypatch):
    with pytest.raises(ValueError, match=f"algo.{kind} must be one of"):
        load(kind, "nope")
    monkeypatch.setitem(REGISTRY[kind], "broken", Variant("asyncor.configs.algorithms"))
    with pytest.raises(TypeError, match=f"algo.{kind} = 'broken'"):
        load(kind, "broken")


@pytest.mark.parametrize("key,names", [("objective", OBJECTIVES), ("advantage", ADVANTAGES),
                                       ("correction", CORRECTIONS), ("loss_agg", LOSS_AGGS)])
def test_config_refuses_a_bad_choice_naming_the_key_and_the_choices(key, names):
    with pytest.raises(ValueError) as err:
        AlgoConfig(**{key: "nope"})
    assert key in str(err.value) and all(f"'{n}'" in str(err.value) for n in names)
    for name in names:  # every registered name is accepted (with what it needs)
        kw = {"off_policy": {"old_logprobs": "recompute"}}
        if key == "objective" and not valid(name, "none"):
            kw["correction"] = "mis"
        assert getattr(AlgoConfig(**{key: name}, **kw), key) == name


def test_config_refuses_what_a_variant_needs_and_maps_the_old_keys():
    with pytest.raises(ValueError, match="algo.correction to one of"):
        AlgoConfig(objective="decoupled", off_policy={"old_logprobs": "recompute"})
    for correction in ("tis", "mis", "icepop", "sequence"):
        with pytest.raises(ValueError, match="old_logprobs = 'recompute'"):
            AlgoConfig(correction=correction)
    with pytest.raises(ValueError, match="old_logprobs = 'recompute'"):
        AlgoConfig(objective="decoupled", correction="mis")
    assert AlgoConfig(objective="decoupled", correction="mis", off_policy={"old_logprobs": "recompute"})
    old = AlgoConfig(aggregation="sequence", off_policy={"old_logprobs": "recompute", "correction": "decoupled"})
    assert (old.loss_agg, old.correction) == ("seq_mean_token_mean", "mis")
    assert AlgoConfig(aggregation="token").loss_agg == "token_mean"
    with pytest.raises(ValueError, match="clashes"):
        AlgoConfig(aggregation="token", loss_agg="seq_mean_token_mean")
    with pytest.raises(ValueError, match="moved to algo.correction"):
        from asyncor.configs.schema import OffPolicyConfig
        OffPolicyConfig(correction="tis")
    with pytest.raises(ValueError, match="is_floor"):
        AlgoConfig(correction="icepop", off_policy={"old_logprobs": "recompute", "is_floor": 2.0, "is_cap": 2.0})
    AlgoConfig(correction="tis", off_policy={"old_logprobs": "recompute", "is_floor": 0.5, "is_cap": 0.1})


# --- e. mismatch metrics ---

def test_mismatch_metrics_match_numpy_in_all_and_by_staleness():
    rng = np.random.default_rng(31)
    cap = 1.3
    mm = Mismatch(cap)
    parts = []
    for n in (37, 1, 53):  # three mini-batches
        log_ratio = rng.normal(0, 0.4, n)
        weight = rng.uniform(0, 2, n)
        flagged = rng.uniform(size=n) < 0.2
        mask = (rng.uniform(size=n) < 0.8).astype(np.float32)
        staleness = rng.integers(0, 4, n)
        mm.add(torch.tensor(log_ratio, dtype=torch.float32), torch.tensor(weight, dtype=torch.float32),
               torch.tensor(flagged), torch.tensor(mask), staleness)
        parts.append((log_ratio.astype(np.float32).astype(np.float64), weight.astype(np.float32).astype(np.float64),
                      flagged, mask == 0, staleness))
    lr, weight, flagged, masked, staleness = (np.concatenate(p) for p in zip(*parts))
    got = mm.metrics(correction=True)

    def expect(at, suffix, with_weight):
        x = lr[at]
        gap = np.sort(np.abs(x))
        rank = 0.99 * (len(gap) - 1)  # the 99th percentile, linear between the closest ranks
        lo = int(math.floor(rank))
        p99 = gap[lo] + (gap[min(lo + 1, len(gap) - 1)] - gap[lo]) * (rank - lo)
        out = {f"learner/mismatch_abs_mean{suffix}": np.mean(np.abs(x)), f"learner/mismatch_abs_p99{suffix}": p99,
               f"learner/mismatch_abs_max{suffix}": np.max(np.abs(x)),
               f"learner/mismatch_kl{suffix}": np.mean(np.exp(x) - 1 - x),
               f"learner/behaviour_over_cap_frac{suffix}": np.mean(np.exp(x) > cap),
               f"learner/correction_frac{suffix}": np.mean(flagged[at]),
               f"learner/objective_masked_frac{suffix}": np.mean(masked[at])}
        if with_weight:
            out["learner/is_weight_mean"] = np.mean(weight)
        return out

    want = expect(np.ones(len(lr), bool), "", True)
    for k in range(4):
        want.update(expect(staleness == k, f"_s{k}", False))
        want[f"learner/tokens_s{k}"] = int((staleness == k).sum())
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    # without a correction: no mean weight; a mini-batch without the objective's mask: no masked share
    mm = Mismatch(cap)
    mm.add(torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.bool), None, np.zeros(3, np.int64))
    got = mm.metrics(correction=False)
    assert "learner/is_weight_mean" not in got and not any("objective_masked" in k for k in got)
    assert got["learner/mismatch_kl"] == 0 and got["learner/tokens_s0"] == 3
    assert Mismatch(cap).metrics(correction=True) == {}
