"""telemetry/progress.py: ETA, rate-limited lines, the final line, zero and unknown totals, and the launcher's
reader of a phase's progress lines."""

from __future__ import annotations

import json

import pytest

from asyncor.telemetry.progress import Progress, ProgressTail, describe, duration, parse_line


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Log:
    def __init__(self):
        self.lines: list[dict] = []

    def info(self, event: str, **kv) -> None:
        self.lines.append({"event": event, **kv})


def make(total, every_s=5.0, **kw):
    clock, log = Clock(), Log()
    return Progress("work", total, log=log, every_s=every_s, clock=clock, bar=False, unit="steps", **kw), clock, log


def test_eta_is_units_left_over_the_rate():
    p, clock, log = make(100)
    assert p.eta_s() is None  # unknown until the first unit is done
    clock.t += 10
    p.update(20)  # 2 units/s over the first window
    assert p.current_rate() == pytest.approx(2.0)
    assert p.eta_s() == pytest.approx(40.0)
    (line,) = log.lines
    assert line["event"] == "progress" and line["done"] == 20 and line["total"] == 100 and line["pct"] == 20.0
    assert line["eta_s"] == pytest.approx(40.0) and line["elapsed_s"] == pytest.approx(10.0)
    assert line["rate_per_s"] == pytest.approx(2.0) and line["final"] is False


def test_rate_is_smoothed_over_windows():
    p, clock, log = make(1000, smoothing=0.5)
    clock.t += 10
    p.update(10)  # window 1: 1 unit/s
    clock.t += 10
    p.update(30)  # window 2: 3 units/s -> 0.5 * 3 + 0.5 * 1
    assert p.rate == pytest.approx(2.0)
    assert p.eta_s() == pytest.approx((1000 - 40) / 2.0)
    assert [line["rate_per_s"] for line in log.lines] == pytest.approx([1.0, 2.0])
    clock.t += 0.01
    p.update(16)  # a last chunk that ends at once: no line, and it does not make the final rate 1600/s
    p.close()
    assert log.lines[-1]["rate_per_s"] == pytest.approx(56 / 20.01, rel=1e-3)  # the whole run's mean


def test_lines_are_rate_limited_and_the_final_line_always_comes():
    p, clock, log = make(50, every_s=5.0)
    for _ in range(50):  # 0.4 s per unit: 20 s in all -> a line every 5 s, then the final one
        clock.t += 0.4
        p.update()
    assert len(log.lines) == 3  # at 5.2, 10.4 and 15.6 s; the last unit (20 s) comes under 5 s after that
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(log.lines, log.lines[1:])]
    assert all(g >= 5.0 for g in gaps)
    p.close()
    p.close()  # once only
    assert len(log.lines) == 4
    final = log.lines[-1]
    assert final["final"] is True and final["done"] == 50 and final["pct"] == 100.0 and final["eta_s"] == 0.0
    assert final["rate_per_s"] == pytest.approx(2.5)


def test_context_manager_logs_the_final_line_even_on_error():
    clock, log = Clock(), Log()
    with pytest.raises(RuntimeError):
        with Progress("work", 10, log=log, clock=clock, bar=False) as p:
            p.update(3)
            raise RuntimeError("boom")
    (final,) = log.lines
    assert final["final"] is True and final["stopped"] is True and final["done"] == 3
    assert describe(final).endswith("stopped")


def test_zero_total_is_complete_at_once():
    p, clock, log = make(0)
    assert p.eta_s() == 0.0
    with p:
        pass
    (final,) = log.lines
    assert final["pct"] == 100.0 and final["eta_s"] == 0.0 and final["done"] == 0 and final["rate_per_s"] is None


def test_unknown_total_has_a_rate_but_no_eta():
    p, clock, log = make(None)
    clock.t += 8
    p.update(4)
    (line,) = log.lines
    assert line["total"] is None and line["pct"] is None and line["eta_s"] is None
    assert line["rate_per_s"] == pytest.approx(0.5)
    assert "4 steps," in describe(line) and "ETA ?" in describe(line)


def test_skipped_units_count_as_done_but_not_into_the_rate():
    p, clock, log = make(10)
    p.skip(4)  # e.g. sweep runs done before
    assert p.eta_s() is None  # still nothing worked
    clock.t += 60
    p.update()  # one run in 60 s
    assert p.done == 5 and p.current_rate() == pytest.approx(1 / 60)
    assert p.eta_s() == pytest.approx(5 * 60)


def test_fields_ride_along_and_update_replaces_them():
    p, clock, log = make(10, phase="greedy")
    clock.t += 6
    p.update(1, loss=0.5)
    clock.t += 6
    p.update(1, loss=0.25, phase="sampled")
    assert [(line["phase"], line["loss"]) for line in log.lines] == [("greedy", 0.5), ("sampled", 0.25)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="total"):
        Progress("x", -1, log=Log(), bar=False)
    with pytest.raises(ValueError, match="smoothing"):
        Progress("x", 1, log=Log(), bar=False, smoothing=0.0)


def test_describe_and_duration():
    assert duration(None) == "?" and duration(45.4) == "45 s" and duration(200) == "3 min 20 s"
    assert duration(7500) == "2 h 05 min"
    text = describe({"what": "warm start", "unit": "steps", "done": 150, "total": 400, "pct": 37.5,
                     "rate_per_s": 12.5, "elapsed_s": 12, "eta_s": 20.0, "final": False})
    assert text == "warm start: 150/400 steps (38 %), 12.5 steps/s, 12 s elapsed, ETA 20 s"


def _line(**kv) -> str:
    record = {"what": "evaluation", "unit": "samples", "done": 1, "total": 4, "pct": 25.0, "rate_per_s": 1.0,
              "elapsed_s": 1.0, "eta_s": 3.0, "final": False, "event": "progress", "role": "eval", **kv}
    return json.dumps(record)


def test_parse_line_checks_untrusted_lines():
    assert parse_line(_line().encode())["done"] == 1
    assert parse_line(b"srun: prefix " + _line().encode())["total"] == 4  # text before the JSON object
    assert parse_line(b'{"event": "other", "what": "x", "done": 1, "elapsed_s": 1}') is None
    assert parse_line(_line(done="1").encode()) is None  # figures must be numbers
    assert parse_line(_line(eta_s=True).encode()) is None
    assert parse_line(_line()[:-5].encode()) is None  # torn
    assert parse_line(b'"progress" but not json') is None
    assert parse_line(b'["progress"]') is None
    assert parse_line(_line(what="x" * 70000).encode()) is None  # too long to be a progress line


def test_tail_prints_the_latest_record_of_either_file_rate_limited(tmp_path):
    clock = Clock()
    tail = ProgressTail([str(tmp_path / "prepare.jsonl"), str(tmp_path / "prepare.out")], every_s=10, clock=clock)
    assert tail.poll() is None  # no files yet
    with open(tmp_path / "prepare.out", "w") as f:  # a cluster's output: noise and a JSON line
        f.write("INFO vllm says hello\n" + _line(done=1) + "\n" + _line(done=2))  # the last line is torn
    assert "1/4 samples" in tail.poll()
    with open(tmp_path / "prepare.out", "a") as f:
        f.write("\n" + _line(done=3) + "\n")
    assert tail.poll() is None  # new, but printed less than 10 s ago
    clock.t += 10
    assert "3/4 samples" in tail.poll()  # the torn line was completed and the newest wins
    clock.t += 10
    assert tail.poll() is None  # nothing new
    (tmp_path / "prepare.jsonl").write_text(_line(done=4, final=True) + "\n")
    assert tail.poll().endswith("done")


def test_tail_of_a_role_starts_at_the_logs_end_and_over_on_a_truncated_file(tmp_path):
    path = tmp_path / "eval_before.jsonl"
    path.write_text(_line(done=3, final=True) + "\n")  # an earlier process of that name
    tail = ProgressTail.for_role(str(tmp_path), "eval_before", every_s=0)
    assert tail.poll() is None
    with open(path, "a") as f:
        f.write(_line(done=2) + "\n" * 10)
    assert "2/4" in tail.poll()
    path.write_text(_line(done=1) + "\n")  # shorter than what was read: truncated, read from the start
    assert "1/4" in tail.poll()


def test_progress_lines_read_back_through_the_tail(tmp_path):
    """What Progress writes through the JSON-lines logger is what the launcher reads."""
    import structlog

    out = open(tmp_path / "role.jsonl", "w", buffering=1)
    log = structlog.wrap_logger(structlog.PrintLogger(out), processors=[structlog.processors.JSONRenderer()])
    tail = ProgressTail.for_role(str(tmp_path), "role", every_s=0)  # the launcher starts it with the phase
    clock = Clock()
    p = Progress("warm start", 40, log=log, every_s=1, unit="steps", clock=clock, bar=False)
    clock.t += 2
    p.update(10, loss=1.5)
    assert tail.poll() == "warm start: 10/40 steps (25 %), 5 steps/s, 2 s elapsed, ETA 6 s"
    assert tail.latest["loss"] == 1.5
    out.close()


# ----------------------------------------------------------------------------- where users wait


def test_a_sweep_says_how_many_runs_are_left_and_their_eta(tmp_path, monkeypatch, capsys):
    """Runs done before count as done but not into the rate; the ETA is the runs left over the wall times of
    the runs run here (each 60 s on the injected clock)."""
    from asyncor.configs.loader import load_config
    from asyncor.studies import sweep as sweep_mod

    clock, log = Clock(), Log()
    monkeypatch.setattr(sweep_mod, "Progress", lambda *a, **kw: Progress(*a, **{**kw, "clock": clock, "bar": False,
                                                                               "log": log}))
    grid = ["buffer.max_staleness=0,1,2,3"]
    runs = sweep_mod.expand(grid, seeds=1, base_seed=0)
    root = tmp_path / "eta"
    summary = json.dumps({"learner": {"steps": 3}, "wall_s": 10.0, "staleness": {"mean": 0.5}})
    first = root / runs[0].name  # done before: its configs hold its grid point
    first.mkdir(parents=True)
    (first / "launch_config.json").write_text(json.dumps(load_config(None, runs[0].overrides).model_dump(mode="json")))
    (first / "summary.json").write_text(summary)

    def child(args, _log):  # a `launch.py run` that takes 60 s
        name = next(a.split("=", 1)[1] for a in args if a.startswith("run.name="))
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "summary.json").write_text(summary)
        clock.t += 60
        return 0

    monkeypatch.setattr(sweep_mod, "_run_child", child)
    assert sweep_mod.sweep(None, [], grid, 1, "eta", str(tmp_path), "local", []) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines[0].endswith("done before (3 steps in 10 s of RL, staleness mean 0.50)")
    assert lines[2].endswith("; 2 left, ETA 2 min 00 s")  # [2/4] ran in 60 s: 2 more at 60 s each
    assert lines[4].endswith("; 1 left, ETA 1 min 00 s")
    assert "left" not in lines[6]
    final = log.lines[-1]
    assert final["final"] and final["done"] == 4 and final["total"] == 4 and final["unit"] == "runs"
    assert final["rate_per_s"] == pytest.approx(1 / 60, rel=1e-3)  # 4 significant digits


def test_the_launcher_prints_a_phase_s_progress_while_it_waits(tmp_path, capsys):
    """launcher/run.py run_phase: the phase's `progress` lines, read from its log, reach the console."""
    from asyncor.launcher.backend import RoleSpec
    from asyncor.launcher.run import run_phase
    from asyncor.launcher.stop_signals import StopSignals

    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "prepare.jsonl").write_text(_line(what="old", done=9) + "\n")  # an earlier run's: not shown

    class Handle:
        name, node, returncode = "prepare", "localhost", None
        log_path = str(log_dir / "prepare.out")

        def tail(self, lines=15):
            return ""

    class Backend:
        polls = 0

        def start(self, spec, _log_dir):
            return Handle()

        def poll(self, handles):  # the phase writes a line per look, and ends at the third
            self.polls += 1
            with open(log_dir / "prepare.jsonl", "a") as f:
                f.write(_line(what="warm start", unit="steps", done=self.polls, total=3) + "\n")
            if self.polls == 3:
                handles[0].returncode = 0

        def stop(self, handles, grace_s, reap_s):
            return []

    run_phase(Backend(), RoleSpec("prepare", "asyncor.prepare", [], 0), str(log_dir), 60.0, StopSignals(),
              "run.prepare_timeout_s")
    out = capsys.readouterr().out
    assert "  warm start: 1/3 steps (25 %)" in out and "old" not in out
    assert out.count("warm start") == 1  # the next lines came less than 10 s later


class SeededEngine:
    """An engine whose completion of a prompt depends on the prompt, the sample's seed and the temperature only
    (as vLLM's per-request seeded sampling), counting each request's samples into `progress` as vLLM's progress
    hook does (actors/engine.py), recording each call's size."""

    def __init__(self):
        self.calls: list[int] = []

    def generate(self, prompts, n, temperature, top_p, max_tokens, stop_token_id, seed=None, progress=None):
        import numpy as np

        from asyncor.actors.engine import Completion

        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            samples = []
            for i in range(n):
                rng = np.random.default_rng([int(p.sum()), seed + i, int(temperature * 100)])
                ids = rng.integers(0, 9, size=3).astype(np.int32)
                samples.append(Completion(ids, np.zeros(3, np.float32), "stop" if ids[0] else "length"))
            out.append(samples)
            if progress is not None:
                progress.update(n)
        return out


def test_vllms_progress_hook_counts_every_finished_requests_samples_and_draws_nothing(capsys):
    from asyncor.actors.engine import counting_bar

    log = Log()
    progress = Progress("evaluation", 12, log=log, bar=False, every_s=0.0, unit="samples")
    # What vLLM's LLM.generate does with a `use_tqdm` callable (vllm/entrypoints/common/offline.py).
    bar = counting_bar()(total=3, desc="Processed prompts", dynamic_ncols=True, postfix="speed", progress=progress)
    for _ in range(3):
        bar.postfix = f"elapsed {bar.format_dict['elapsed']:.2f}"
        bar.update(4)
        if bar.n == 3:
            bar.refresh()
    bar.close()
    progress.close()
    assert [line["done"] for line in log.lines] == [4, 8, 12, 12] and log.lines[-1]["final"]
    assert capsys.readouterr() == ("", "")  # nothing drawn on the terminal


def test_held_out_results_are_one_call_per_decoding_and_progress_counts_every_sample(monkeypatch):
    """evaluate_engine: greedy then k samples per problem, one engine call each, every sample counted."""
    import numpy as np

    from asyncor.actors import evaluate
    from asyncor.configs.loader import load_config
    from asyncor.tasks.task import Problem

    class Codec:
        eos_id = 0

        def decode(self, ids):
            return str(int(ids[0]))

    class Scorer:
        reward = None  # no task.reward: the task's own scoring

        def score(self, samples):
            return [0.0 if s.truncated else float(s.text == s.reference) for s in samples]

    config = load_config(None, ["eval.samples_per_problem=3", "eval.temperature=1.0"])
    problems = [Problem(i, np.array([i, 2 * i], np.int32), "arithmetic", str(i % 9), ["a", "b"][i % 2])
                for i in range(70)]
    log = Log()
    monkeypatch.setattr(evaluate, "Progress", lambda *a, **kw: Progress(*a, **{**kw, "log": log, "bar": False}))
    engine = SeededEngine()
    result = evaluate.evaluate_engine(config, engine, Codec(), Scorer(), problems)
    assert engine.calls == [70, 70] and result["samples_per_problem"] == 3  # greedy, then sampled
    final = log.lines[-1]
    assert final["final"] and final["done"] == final["total"] == 70 * (1 + 3) and final["unit"] == "samples"


def test_report_reads_runs_one_by_one_with_progress(tmp_path, monkeypatch):
    from asyncor.studies import report

    for name in ("b", "a"):
        run = tmp_path / "sweep" / name
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"wall_s": 1.0}))
        (run / "config.json").write_text(json.dumps({"run": {"seed": 0}}))
        (run / "metrics.jsonl").write_text("")
    log = Log()
    monkeypatch.setattr(report, "Progress", lambda *a, **kw: Progress(*a, **{**kw, "log": log, "bar": False}))
    runs = report.read_runs([str(tmp_path / "sweep")])
    assert [r.name for r in runs] == ["a", "b"]
    (final,) = log.lines
    assert final["final"] and final["done"] == final["total"] == 2 and final["unit"] == "runs"


def test_advise_counts_its_simulations(tmp_path, monkeypatch, capsys):
    from asyncor.studies import advisor
    from asyncor.studies.calibration import handoff_simulations
    from tests.unit.test_calibration import build_run

    run = build_run(tmp_path)
    log = Log()
    monkeypatch.setattr(advisor, "Progress", lambda *a, **kw: Progress(*a, **{**kw, "log": log, "bar": False,
                                                                            "every_s": 0.0}))
    assert advisor.advise(None, [], [str(run)], None, 1, 4, 5, [str(run)], str(tmp_path / "advice.md")) == 0
    first, final = log.lines[0], log.lines[-1]
    later = len(advisor.placements(1, 4)) + advisor.CHECK_SEEDS  # 3 splits of 4 devices, one checked run
    assert later == 6 and first["total"] == handoff_simulations(1) + later
    assert final["final"] and final["done"] == final["total"] <= first["total"]
    assert [line["done"] for line in log.lines[:-1]] == list(range(1, final["done"] + 1))  # one line each
