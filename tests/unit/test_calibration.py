"""studies/calibration.py: rates and shared-host slowdowns recovered from roles' timelines built with known
values; studies/advisor.py's splits and recommendation on those rates."""

import dataclasses
import json

import numpy as np
import pytest

from asyncor.studies.advisor import check, recommend, splits
from asyncor.studies.calibration import CalibrationError, calibrate, measured, overlap_fraction, shape_of
from asyncor.studies.simulator import simulate
from asyncor.studies.runs import load_run

GEN, LEARN, A_L, A_A, L_A = 500.0, 2000.0, 0.8, 0.5, 0.1  # the truth the timelines are built from


def test_overlap_fraction_of_intervals():
    busy = np.array([[1.0, 2.0], [3.0, 5.0]])
    iv = np.array([[0.0, 2.0, 1], [1.5, 3.5, 1], [5.0, 6.0, 1], [2.0, 3.0, 1]])
    assert overlap_fraction(iv, busy).tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])


def build_run(tmp_path, eta=2, with_timelines=True, step_every=10.0):
    """Learner trains 5 s of every 10 s for 8 steps; actor 0 generates in 1 s engine steps for 40 s, actor 1
    for the first 20 s; so every overlap share is 0 or 1 and each step's tokens follow the model exactly."""
    run = tmp_path / "cal"
    (run / "roles").mkdir(parents=True)
    train = [[10.0 * k, 10.0 * k + 5, 0.0] for k in range(8)]
    for step in train:
        actors_busy = step[0] < 40
        step[2] = LEARN * 5 / (1 + L_A * actors_busy)
    gens = []
    for actor, until in ((0, 40), (1, 20)):
        steps = []
        for t in range(until):
            learner_busy = (t % 10) < 5
            other_busy = t < (20 if actor == 0 else 40)
            steps.append([float(t), t + 1.0, GEN / (1 + A_L * learner_busy + A_A * other_busy)])
        gens.append(steps)
    lengths = {"3": 10, "5": 30}
    for i, g in enumerate(gens):
        actor = {"groups": 100, "load_s_mean": 0.02, "response_lengths": lengths,
                 "time": {"other": 1.0, "waiting_for_outbox": 0.0}}
        if with_timelines:
            actor["timeline"] = {"generating": g, "dropped": 0}
        (run / "roles" / f"actor{i}.json").write_text(json.dumps(actor))
    learner = {"steps": 8, "ranks": 2, "broadcast_s_mean": 0.3,
               "time": {"reporting_version": 0.08, "other": 0.08, "training": 40.0}}
    if with_timelines:
        learner["timeline"] = {"training": train, "dropped": 0}
    (run / "roles" / "learner.json").write_text(json.dumps(learner))
    (run / "roles" / "buffer.json").write_text(json.dumps({"rejection_sampling": {"solve_all": 10, "solve_none": 40}}))
    config = {"actors": {"count": 2, "group_size": 4, "update_mode": "inflight", "prompts_per_chunk": 8,
                         "inflight_sequences": 0, "tensor_parallel_size": 1},
              "buffer": {"max_staleness": eta}, "learner": {"prompts_per_step": 8, "steps": 8}, "run": {"seed": 0}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps({"cluster": {"nodes": 1}, "staleness": {"mean": 0.5}}))
    with open(run / "metrics.jsonl", "w") as f:
        for k in range(8):
            f.write(json.dumps({"ts": step_every * k + 5.5, "role": "learner", "step": k + 1,
                                "learner/wait_for_batch_s": [4.0, 0.7, 0.2, 0.9, 0.5, 0.4, 0.6, 0.3][k]}) + "\n")
    return run


def test_rates_and_slowdowns_come_back_from_the_timelines(tmp_path):
    cal = calibrate(load_run(str(build_run(tmp_path))), fit_handoff=False)
    r = cal.rates
    assert r.gen_tokens_per_s == pytest.approx(GEN)
    assert r.learner_tokens_per_s == pytest.approx(LEARN)
    assert (r.actor_slowdown_learner, r.actor_slowdown_actor, r.learner_slowdown_actor) == pytest.approx(
        (A_L, A_A, L_A))
    assert r.actor_slowdown_both == pytest.approx(0.0, abs=1e-9)  # the timelines were built additive
    assert list(cal.layouts) == [2] and cal.rates_for(1).actor_slowdown_learner == pytest.approx(A_L)
    assert cal.learner_ranks == 2 and r.sync_s == 0.3 and r.load_s == pytest.approx(0.02)
    assert r.step_overhead_s == pytest.approx(0.16 / 8)
    assert r.group_overhead_s == pytest.approx(2.0 / 200)
    assert r.keep_frac == pytest.approx(1 - 50 / 200)
    assert (r.lengths, r.length_counts) == ([3, 5], [20, 60])


def test_a_run_without_overlap_or_timelines_says_what_it_cannot_measure(tmp_path):
    with pytest.raises(CalibrationError, match="no timelines"):
        calibrate(load_run(str(build_run(tmp_path / "a", with_timelines=False))))


def test_the_handoff_latency_is_fitted_to_the_calibration_runs_wall_time(tmp_path):
    """The simulated steady state of the run's own shape, plus h per step, equals what the run measured."""
    bare = calibrate(load_run(str(build_run(tmp_path / "a"))), fit_handoff=False)
    sim_step = np.mean([simulate(shape_of(load_run(str(tmp_path / "a" / "cal")).config, steps=8, shared=True,
                                          seed=s), bare.rates).steady_wall_s for s in (0, 1)]) / 7
    run = load_run(str(build_run(tmp_path / "b", step_every=sim_step + 0.25)))
    cal = calibrate(run)
    assert measured(run).steady_wall_s == pytest.approx(7 * (sim_step + 0.25))
    # The shape is generation-bound, so the learner-side latency shows up nearly one for one.
    assert 0.15 < cal.rates.handoff_s < 0.3 and any("handoff latency" in n for n in cal.notes)
    assert np.mean([simulate(shape_of(run.config, steps=8, shared=True, seed=s), cal.rates).steady_wall_s
                    for s in (0, 1)]) == pytest.approx(measured(run).steady_wall_s, rel=1e-3)
    slow = calibrate(load_run(str(build_run(tmp_path / "c", step_every=100.0))))
    assert slow.rates.handoff_s == 2.0 and any("stalled" in n for n in slow.notes)


def test_measured_takes_the_span_from_the_first_step_end_and_the_later_waits(tmp_path):
    m = measured(load_run(str(build_run(tmp_path))))
    assert m.steps == 8 and m.steady_wall_s == pytest.approx(70.0)
    assert m.steady_idle_frac == pytest.approx((0.7 + 0.2 + 0.9 + 0.5 + 0.4 + 0.6 + 0.3) / 70.0)


def test_learner_rate_scales_per_doubling():
    from asyncor.studies.advisor import learner_rate

    assert learner_rate(100.0, 1) == 100.0 and learner_rate(100.0, 8) == pytest.approx(800.0)
    assert learner_rate(100.0, 4, 0.9) == pytest.approx(400.0 * 0.81)


def test_splits_cover_the_devices_and_the_recommendation_is_the_fastest(tmp_path):
    run = load_run(str(build_run(tmp_path)))
    cal = calibrate(run)
    options = splits(cal, run.config, nodes=1, gpus_per_node=8, steps=10)
    assert [(s.learner_ranks, s.actors) for s in options] == [(k, 8 - k) for k in range(1, 8)]
    # Learner ranks stay on node 0 (launcher/plan.py); engines of 2 devices fill what is left of every node.
    placed = splits(cal, run.config, nodes=3, gpus_per_node=4, steps=5, tp=2)
    assert [(s.learner_ranks, s.actors) for s in placed] == [(1, 5), (2, 5), (3, 4), (4, 4)]
    best = recommend(options)
    fastest = max(s.prediction.trained_tokens_per_s for s in options)
    assert best.prediction.trained_tokens_per_s >= 0.98 * fastest
    assert all(s.prediction.staleness_mean >= best.prediction.staleness_mean - 0.005 for s in options
               if s.prediction.trained_tokens_per_s >= 0.98 * fastest)
    # Without the fixed per-step costs, generation (500 tokens/s per engine against 1000 per learner rank) is
    # the bottleneck: the recommendation gives most devices to actors, ~2 per learner rank.
    cal.rates = dataclasses.replace(cal.rates, sync_s=0.0, handoff_s=0.0, step_overhead_s=0.0)
    best = recommend(splits(cal, run.config, nodes=1, gpus_per_node=9, steps=20))
    assert (best.learner_ranks, best.actors) in [(3, 6), (2, 7)]
    assert shape_of(run.config).prompts_per_chunk == 8 and shape_of(run.config, actors=3).actors == 3
    c = check(cal, run)
    assert c.wall_s == pytest.approx(70.0) and c.predicted.steady_wall_s > 0


def test_advise_refuses_what_it_cannot_read_and_writes_advice_for_what_it_can(tmp_path, capsys):
    from asyncor.studies.advisor import advise

    assert advise(None, [], [str(tmp_path / "missing")], None, 1, 4, 5, [], None) == 2
    assert "not a finished run" in capsys.readouterr().err
    build_run(tmp_path / "old", with_timelines=False)
    assert advise(None, [], [str(tmp_path / "old" / "cal")], None, 1, 4, 5, [], None) == 2
    assert "no timelines" in capsys.readouterr().err
    run = build_run(tmp_path / "new")
    assert advise(None, [], [str(run)], None, 1, 4, 5, [str(run)], None) == 0
    text = (run / "advice.md").read_text()
    assert "**Recommended:" in text and "| cal | 2 | 2 | 8 |" in text
    assert "trained groups by staleness: 0: " in text


def test_an_engines_step_cost_and_token_rate_come_back_from_its_steps():
    """Steps of 3..40 running sequences taking 5 ms + n / 2000 s alone, twice as long while the learner works."""
    from asyncor.studies.calibration import fit_engine

    rng = np.random.default_rng(0)
    n = rng.integers(3, 41, size=200).astype(float)
    busy = (np.arange(200) % 3 == 0).astype(float)
    seconds = (0.005 + n / 2000.0) * (1 + 1.0 * busy)
    starts = np.concatenate([[0.0], np.cumsum(seconds)[:-1]])
    step_s, rate, (a,) = fit_engine(np.column_stack([starts, starts + seconds, n]), [busy])
    assert (step_s, rate, a) == pytest.approx((0.005, 2000.0, 1.0), rel=1e-6)


@pytest.mark.parametrize("sets, prompts", [
    ([], 32),  # the tiny default: prompts_per_chunk prompts of group_size
    (["actors.inflight_sequences=40"], 5),  # 40 sequences: 5 groups of 8
    (["actors.update_mode='chunk'"], 32),
    (["algo.stages=[{start_step=3, group_size=16}]"], 32 * 16 // 8),  # sized for stage 1's groups, runs stage 0's
])
def test_the_simulated_shape_runs_as_many_prompts_at_once_as_the_actors_rule(sets, prompts):
    """shape_of reads a run's config through the actors' own refill rule (actors/refill.py)."""
    from asyncor.actors.refill import RefillRule
    from asyncor.configs.loader import load_config
    from asyncor.configs.stages import max_over_stages
    from asyncor.studies.runs import flatten

    config = load_config(None, sets)
    rule = RefillRule.from_config(config.actors, max_over_stages(config, "group_size"))
    shape = shape_of(flatten(config.model_dump(mode="json")))
    assert (shape.update_mode, shape.group_size) == (config.actors.update_mode, config.actors.group_size)
    assert shape.prompts_per_chunk == rule.prompts_at_once(config.actors.group_size) == prompts
