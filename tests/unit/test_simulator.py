"""The pipeline simulator (studies/simulator.py) against cases computed by hand: one actor, fixed lengths."""

import pytest

from asyncor.studies.simulator import Rates, Shape, simulate

G, P, L = 4, 8, 50  # group size, prompts per step (= per chunk), response length
BATCH_TOKENS = P * G * L  # response tokens one learner step trains on


def rates(gen, learn, sync=0.5, **kw):
    return Rates(gen_tokens_per_s=gen, learner_tokens_per_s=learn, sync_s=sync, lengths=[L], **kw)


@pytest.mark.parametrize("mode", ["chunk", "inflight"])
def test_synchronous_eta0_alternates_generation_and_training(mode):
    """η = 0: the actor may not start batch k+1 before version k is out, so each step is t_gen + t_train + sync
    and the learner waits exactly t_gen per step."""
    t_gen = P * G * L / 400.0  # all 32 samples share the engine's 400 tok/s and end together: 4 s
    t_train = BATCH_TOKENS / 1000.0  # 1.6 s
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


def test_turn_taking_at_eta0_is_untouched_by_sharing_a_host():
    """η = 0: the actor and the learner never work at the same time, so slowdowns between them change nothing."""
    shape = dict(actors=1, max_staleness=0, prompts_per_step=P, group_size=G, prompts_per_chunk=P, steps=4,
                 update_mode="chunk")
    alone = simulate(Shape(**shape), rates(400.0, 1000.0))
    shared = simulate(Shape(**shape, shared_host=True),
                      rates(400.0, 1000.0, actor_slowdown_learner=1.0, learner_slowdown_actor=1.0))
    assert shared.wall_s == pytest.approx(alone.wall_s) == pytest.approx(4 * (4.0 + 1.6 + 0.5))


def test_a_shared_host_slows_both_roles_while_they_overlap():
    """η = 1, chunk mode, t_gen = 4 s and t_train = 1 s alone, each role at half speed while the other works.
    Training always overlaps the next chunk: it takes 2 s, during which the actor does 1 s of its 4; the chunk
    ends 3 s later. So each chunk takes 5 s after the first (4 s), and the last step trains 2 s beside a chunk
    the bound still allows: wall = 4 + 5 · 5 + 2 = 31 s, from the first step's end 5 · 5 = 25 s."""
    p = simulate(Shape(actors=1, max_staleness=1, prompts_per_step=P, group_size=G, prompts_per_chunk=P, steps=6,
                       update_mode="chunk", shared_host=True),
                 rates(P * G * L / 4.0, BATCH_TOKENS / 1.0, sync=0.0, actor_slowdown_learner=1.0,
                       learner_slowdown_actor=1.0))
    assert p.wall_s == pytest.approx(31.0)
    assert p.steady_wall_s == pytest.approx(25.0)
    # The learner waits 4 s for the first batch and then 3 s per step (its 2 s of training end before the
    # chunk's last 3 s): 5 waits of 3 s over 25 s.
    assert p.steady_idle_frac == pytest.approx(15.0 / 25.0)
    one_sided = simulate(Shape(actors=1, max_staleness=1, prompts_per_step=P, group_size=G, prompts_per_chunk=P,
                               steps=6, update_mode="chunk", shared_host=True),
                         rates(P * G * L / 4.0, BATCH_TOKENS / 1.0, sync=0.0, actor_slowdown_learner=1.0))
    # Only the actor slows: training 1 s at full speed costs the chunk 0.5 s of progress, so 4.5 s per chunk.
    assert one_sided.wall_s == pytest.approx(4.0 + 5 * 4.5 + 1.0)


def test_batch_latency_adds_to_every_step_and_group_overhead_hides_behind_training():
    """η = 0: each step is t_gen + latency + t_train + sync; the actor's per-group bookkeeping (8 · 0.01 s after
    its chunk) overlaps the learner's 1.6 s of training and costs nothing."""
    p = simulate(Shape(actors=1, max_staleness=0, prompts_per_step=P, group_size=G, prompts_per_chunk=P, steps=5,
                       update_mode="chunk"), rates(400.0, 1000.0, handoff_s=0.2, group_overhead_s=0.01))
    assert p.wall_s == pytest.approx(5 * (4.0 + 0.2 + 1.6 + 0.5))
    assert p.learner_idle_frac == pytest.approx(5 * 4.2 / p.wall_s)


def test_rejection_sampling_makes_actors_generate_one_over_keep_frac_groups_per_kept_group():
    """Half the groups kept: a batch needs twice the generation, on average (one prompt per chunk, training
    free): wall ≈ steps · P · 2 · t_group."""
    t_group = G * L / 400.0
    p = simulate(Shape(actors=1, max_staleness=0, prompts_per_step=P, group_size=G, prompts_per_chunk=1, steps=100,
                       update_mode="chunk"), rates(400.0, 1e12, sync=0.0, keep_frac=0.5))
    assert p.wall_s == pytest.approx(100 * P * 2 * t_group, rel=0.1)
    assert sum(p.staleness_hist) == 100 * P


def test_length_counts_weigh_the_draw():
    """Lengths 10 and 90 drawn 3:1 average 30 tokens: η = 0 with free training runs at 30 tokens per sample."""
    p = simulate(Shape(actors=1, max_staleness=0, prompts_per_step=P, group_size=1, prompts_per_chunk=1, steps=200,
                       update_mode="chunk"),
                 Rates(gen_tokens_per_s=100.0, learner_tokens_per_s=1e12, lengths=[10, 90], length_counts=[3, 1]))
    assert p.wall_s == pytest.approx(200 * P * 30 / 100.0, rel=0.05)


@pytest.mark.parametrize("rates_kw, message", [
    (dict(gen_tokens_per_s=0.0, learner_tokens_per_s=1.0), "positive token rates"),
    (dict(gen_tokens_per_s=1.0, learner_tokens_per_s=1.0, keep_frac=0.0), "keep_frac"),
    (dict(gen_tokens_per_s=1.0, learner_tokens_per_s=1.0, lengths=[5, 6], length_counts=[1]), "one positive count"),
])
def test_bad_rates_are_refused(rates_kw, message):
    with pytest.raises(ValueError, match=message):
        simulate(Shape(actors=1, max_staleness=0, prompts_per_step=1, group_size=1, prompts_per_chunk=1, steps=1),
                 Rates(**rates_kw))


def test_a_fixed_cost_per_decoding_step_is_paid_once_per_token_of_the_longest_sample():
    """gen_step_s = 10 ms per engine step plus 32 running samples at 400 tokens/s: each of the L = 50 steps of
    a chunk takes 0.01 + 32 / 400 = 0.09 s, so a chunk takes 4.5 s instead of 4 s."""
    p = simulate(Shape(actors=1, max_staleness=0, prompts_per_step=P, group_size=G, prompts_per_chunk=P, steps=3,
                       update_mode="chunk"), rates(400.0, 1000.0, gen_step_s=0.01))
    assert p.wall_s == pytest.approx(3 * (L * (0.01 + P * G / 400.0) + 1.6 + 0.5))
