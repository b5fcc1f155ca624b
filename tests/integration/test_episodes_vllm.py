"""Multi-turn episodes with real vLLM (tests/integration/episode_worker.py): token in, token out.

The learner's sequence must be, token for token, the prompt, what the engine sampled in each turn and what the
environment answered between turns, with the loss mask on exactly the engine's tokens and their behaviour
log-probs; every turn's request must be the prompt and every token before it (nothing re-tokenised); and the
learner's own log-probs of those tokens, under the weights that sampled them, must match the engine's.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def run_worker(tmp_path, *extra):
    proc = subprocess.run([sys.executable, "-m", "tests.integration.episode_worker", "--work", str(tmp_path), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(os.path.join(tmp_path, "out.json")) as f:
        return json.load(f)


def engine_turns(seq):
    """The engine requests of this sequence's turns, in order: each one's prompt is the prompt and every token
    before it, and its output is the next tokens (matched from the recorded requests of its group)."""
    full, turns = list(seq["prompt"]), []
    target = seq["prompt"] + seq["tokens"]
    while True:
        nxt = [r for r in seq["engine_requests"] if r["prompt"] == full and r["ids"]
               and target[len(full):len(full) + len(r["ids"])] == r["ids"]]
        if not nxt:
            return turns
        turns.append(nxt[0])
        full = full + nxt[0]["ids"]
        rest = target[len(full):]
        obs = []
        while rest and len(obs) < 8 and not any(r["prompt"] == full + obs for r in seq["engine_requests"]):
            obs.append(rest.pop(0))
        full = full + obs


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("episodes"))


def test_the_learner_trains_exactly_the_tokens_the_engine_sampled_across_turns(out):
    seqs = out["sequences"]
    assert len(seqs) == 12
    assert sum(s["turns"] >= 3 for s in seqs) >= 3, [s["turns"] for s in seqs]
    for s in seqs:
        turns = engine_turns(s)
        assert len(turns) == s["turns"]
        rebuilt, mask, behaviour = list(s["prompt"]), [], []
        for k, t in enumerate(turns):
            assert t["prompt"] == rebuilt  # the turn's request: the prompt and every token so far, unchanged
            rebuilt += t["ids"]
            mask += [1] * len(t["ids"])
            behaviour += t["logprobs"]
            if k < len(turns) - 1:  # the environment's answer, as it returned it
                rebuilt += out["observation"]
                mask += [0] * len(out["observation"])
            else:
                assert t["ids"][-1] in out["digits"] + [out["eos"]] or s["end_reason"] == "length"
        assert s["learner_ids"][:len(rebuilt)] == rebuilt == s["prompt"] + s["tokens"]
        assert s["mask"] == mask == s["wire_mask"]
        sampled = [i for t in turns for i in t["ids"]]
        assert s["learner_targets"] == sampled
        np.testing.assert_allclose(s["learner_behaviour"], behaviour, rtol=0, atol=1e-6)
        # The learner's log-probs of those tokens (its own forward, environment tokens as context) are the engine's.
        np.testing.assert_allclose(s["learner"], behaviour, rtol=0, atol=2e-4)


def test_episode_tallies_and_the_prefix_cache_across_turns(out):
    stats = out["stats"]
    assert stats["episodes"] == 12 and stats["turns_mean"] >= 2
    assert stats["end_reasons"]["answered"] + stats["end_reasons"]["length"] == 12
    assert stats["prefix_cached_frac"] > 0.4, stats  # a later turn finds its first 32-token blocks cached


def test_weights_loaded_mid_episode_label_each_policy_token_with_its_version(tmp_path):
    out = run_worker(tmp_path, "--switch")
    both, v1_error, v0_error = 0, [], []
    for s in out["sequences"]:
        v, m = np.array(s["versions"]), np.array(s["mask"])
        assert (v[m == 0] == -1).all() and (v[m == 1] >= 0).all()
        assert (np.diff(v[m == 1]) >= 0).all()  # versions only grow along an episode
        both += (0 in v) and (1 in v)
        lp, b = np.array(s["logprobs"])[m == 1], v[m == 1]
        # Each token matches the weights that sampled it.
        np.testing.assert_allclose(np.array(s["learner"])[b == 0], lp[b == 0], atol=2e-4)
        v1_error += list(np.abs(np.array(s["learner_v1"])[b == 1] - lp[b == 1]))
        v0_error += list(np.abs(np.array(s["learner"])[b == 1] - lp[b == 1]))
    assert both >= 1 and len(v1_error) > 10
    # Version 1's tokens: exact where their context was computed by version 1, a drift where a turn ran across the
    # switch on version 0's KV (inflight_kv = "keep"). How many of each depends on when the environment's threads
    # answered, so the median swings from 0 to near the distance to version 0 (seen: 0.0, 0.014, 0.024, and once
    # 0.060 against 0.078, which failed a bound of half that distance). What a wrong label would show is the other
    # way round: tokens sampled by version 0 match version 0's forward (v0 error ~0) and not version 1's. So: the
    # two versions' forwards differ on these tokens, and the tokens are closer to version 1's.
    assert np.median(v0_error) > 0.02 and np.median(v1_error) < np.median(v0_error), (
        np.median(v1_error), np.median(v0_error))


def test_a_tool_task_run_trains_on_multi_turn_groups_end_to_end(tmp_path):
    """configs/calculator.toml through every real process (vLLM actor, ZeroMQ buffer, learner, gloo broadcast)
    with the untrained tiny model, whose random turns end at the call tag often: multi-turn groups cross the wire
    with their loss masks (nothing refused), are trained (rejection sampling off: a random policy earns no reward,
    and the learning itself is the study's, docs/environments.md), and are counted by turn kind."""
    from tests.integration.test_pipeline import check_common, run_launcher

    steps = 3
    run_dir = run_launcher(tmp_path, "calculator", "--config", os.path.join(ROOT, "configs", "calculator.toml"),
                           "--set", f"learner.steps={steps}", "--set", "warm_start.enabled=false",
                           "--set", "algo.rejection.enabled=false", "--set", "buffer.max_staleness=1",
                           # No reward, no advantage: the entropy bonus moves the weights (check_common's probes).
                           "--set", 'algo.entropy.mode="fixed"', "--set", "algo.entropy.fixed_coef=0.05")
    summary, _ = check_common(run_dir, 1, steps)
    assert not summary["rejected_messages"], summary["rejected_messages"]
    episodes = summary["episodes"]
    assert episodes["turns_mean"] > 1 and int(max(episodes["turns"], key=int)) >= 2, episodes
    assert set(episodes["end_reasons"]) <= {"answered", "length", "turn_limit"}, episodes
    assert episodes["staleness"]["multi"]["groups"] > 0 and episodes["staleness"]["multi"]["max"] <= 1
