"""The pipeline simulator (launcher/simulator.py) against cases computed by hand: one actor, fixed lengths."""

import pytest

from launcher.simulator import Rates, Shape, simulate

G, P, L, PROMPT = 4, 8, 50, 10  # group size, prompts per step (= per chunk), response and prompt length
BATCH_TOKENS = P * G * (L + PROMPT)  # what one learner step trains on


def rates(gen, learn, sync=0.5):
    return Rates(gen_tokens_per_s=gen, learner_tokens_per_s=learn, sync_s=sync, lengths=[L], prompt_tokens=PROMPT)


@pytest.mark.parametrize("mode", ["chunk", "inflight"])
def test_synchronous_eta0_alternates_generation_and_training(mode):
    """η = 0: the actor may not start batch k+1 before version k is out, so each step is t_gen + t_train + sync
    and the learner waits exactly t_gen per step."""
    t_gen = P * G * L / 400.0  # all 32 samples share the engine's 400 tok/s and end together: 4 s
    t_train = BATCH_TOKENS / 1000.0  # 1.92 s
    steps = 5
    p = simulate(Shape(actors=1, max_staleness=0, prompts_per_step=P, group_size=G, prompts_per_chunk=P,
                       steps=steps, update_mode=mode), rates(400.0, 1000.0))
    assert p.wall_s == pytest.approx(steps * (t_gen + t_train + 0.5))
    assert p.learner_idle_frac == pytest.approx(steps * t_gen / p.wall_s)
    assert p.staleness_hist == [steps * P] and p.dropped_stale == 0
    assert p.trained_tokens_per_s == pytest.approx(steps * BATCH_TOKENS / p.wall_s)


def test_eta1_overlaps_generation_with_training_when_generation_is_the_bottleneck():
    """η = 1, t_gen > t_train + sync: the actor never stops; batch k is ready at k·t_gen and trained at once,
    so wall = steps·t_gen + t_train + sync. Chunk k ≥ 2 starts at (k-1)·t_gen on version k-2 and is trained at
    version k-1: staleness 1 for all but the first batch."""
    t_gen, t_train, steps = 4.0, BATCH_TOKENS / 1000.0, 6
    p = simulate(Shape(actors=1, max_staleness=1, prompts_per_step=P, group_size=G, prompts_per_chunk=P,
                       steps=steps, update_mode="chunk"), rates(400.0, 1000.0))
    assert p.wall_s == pytest.approx(steps * t_gen + t_train + 0.5)
    assert p.learner_idle_frac == pytest.approx((p.wall_s - steps * (t_train + 0.5)) / p.wall_s)
    assert p.staleness_hist == [P, (steps - 1) * P]
    assert p.actor_idle_frac == 0.0  # always generating (the 7th chunk while the last step trains)


def test_two_actors_halve_generation_time_when_training_is_short():
    """η = 1, two actors with half a batch each per chunk: a batch takes t_gen / 2 of wall time."""
    t_gen = P * G * L / 400.0
    one = simulate(Shape(actors=1, max_staleness=1, prompts_per_step=P, group_size=G, prompts_per_chunk=P,
                         steps=8, update_mode="chunk"), rates(400.0, 1e9, sync=0.0))
    two = simulate(Shape(actors=2, max_staleness=1, prompts_per_step=P, group_size=G, prompts_per_chunk=P // 2,
                         steps=8, update_mode="chunk"), rates(400.0, 1e9, sync=0.0))
    assert one.wall_s == pytest.approx(8 * t_gen, rel=1e-6)
    assert two.wall_s == pytest.approx(8 * t_gen / 2, rel=1e-6)


def test_a_learner_slower_than_generation_keeps_actors_waiting_at_the_staleness_bound():
    """Training is the bottleneck: the learner never waits after the first batch, and the bound η = 2 caps how
    far ahead the actor gets (it idles); nothing is ever older than η."""
    p = simulate(Shape(actors=1, max_staleness=2, prompts_per_step=P, group_size=G, prompts_per_chunk=P,
                       steps=10, update_mode="inflight"), rates(4000.0, 200.0, sync=0.1))
    t_gen, t_train = P * G * L / 4000.0, BATCH_TOKENS / 200.0
    assert p.learner_idle_frac == pytest.approx(t_gen / p.wall_s, rel=1e-6)  # only for the first batch
    assert p.wall_s == pytest.approx(t_gen + 10 * (t_train + 0.1))
    assert len(p.staleness_hist) == 3 and p.dropped_stale == 0 and p.actor_idle_frac > 0.5
