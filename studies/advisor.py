"""`launch.py advise`: how many actors per learner, predicted before anyone pays for the cluster.

    python launch.py advise --from runs/calibration --nodes 4 --gpus-per-node 8
    python launch.py advise --config my.toml --calibrate --nodes 4 --gpus-per-node 8
    python launch.py advise --from runs/cal-eta0 runs/cal-eta2 --check runs/advisor-check

1. Rates: read from one or more finished runs (`--from`, studies/calibration.py) or measured by a short
   calibration run of the config (`--calibrate`: `learner.steps = --calibration-steps`, evaluations and
   checkpoints off, in `<run.output_dir>/<run.name>-calibration`).
2. Splits: for a cluster of `nodes x gpus_per_node` devices, every split the cluster launcher can place
   (launcher/plan.py): L = 1 .. gpus_per_node learner ranks on node 0 and actor engines of
   actors.tensor_parallel_size devices on the rest of every node; the learner's rate scales with its ranks from
   the calibration's rate per rank, linearly unless `--learner-efficiency E` (E per doubling of the ranks,
   e.g. 0.9; a data-parallel learner's all-reduce is not simulated).
3. Each split runs through the pipeline simulator (studies/simulator.py) with the config's staleness bound,
   batch and group sizes and chunking: predicted step time, learner idle fraction, actor idle fraction,
   staleness and trained tokens/s.
4. Recommended: the split with the most trained tokens/s; among splits within `tolerance` (2 %) of it, the one
   with the freshest data (lowest mean staleness, to 0.1), then the least idle device time.

`--check RUN...` simulates each finished run's own shape with the calibration's rates and sets the prediction
beside what the run measured (steady-state wall time and learner idle fraction): how far to trust the rest.
Everything goes to `advice.md` (`--out`, default: in the first `--from` run, or the calibration run) and is
printed. The simulations take the time (the handoff fit's about 44 per calibration run, most of all; a minute
for one run on 2 CPU cores): they are counted as they go, with an ETA (telemetry/progress.py: a bar on an
interactive terminal, else `progress` log lines).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from asyncor.studies.calibration import (Calibration, CalibrationError, calibrate, handoff_simulations, measured,
                                         shape_of, shared_host)
from asyncor.studies.simulator import Prediction, Shape, simulate
from asyncor.runtime.run_dir import RunDir
from asyncor.telemetry import log as tlog
from asyncor.telemetry.progress import Progress



@dataclass
class Split:
    learner_ranks: int
    actors: int
    prediction: Prediction
    step_s: float  # predicted steady-state seconds per learner step


def learner_rate(per_rank: float, ranks: int, efficiency: float = 1.0) -> float:
    """Tokens/s of `ranks` learner ranks: per-rank rate x ranks x efficiency per doubling (1.0: linear)."""
    return per_rank * ranks * efficiency ** np.log2(ranks)


def placements(nodes: int, gpus_per_node: int, tp: int = 1) -> list[tuple[int, int]]:
    """(learner ranks, actor engines) of every split the cluster launcher can place (launcher/plan.py): L learner
    ranks on node 0 (ranks do not span nodes), actor engines of tp devices on what is left of every node."""
    out = []
    for ranks in range(1, gpus_per_node + 1):
        actors = (gpus_per_node - ranks) // tp + (nodes - 1) * (gpus_per_node // tp)
        if actors >= 1:
            out.append((ranks, actors))
    return out


def splits(cal: Calibration, config: dict, nodes: int, gpus_per_node: int, steps: int, tp: int = 1,
           efficiency: float = 1.0, on_simulated: Callable[[], None] | None = None) -> list[Split]:
    """Every split of `placements`, each simulated (`on_simulated` is called after each, for progress)."""
    per_rank = cal.rates.learner_tokens_per_s / learner_rate(1.0, max(cal.learner_ranks, 1), efficiency)
    out = []
    for ranks, actors in placements(nodes, gpus_per_node, tp):
        rates = replace(cal.rates, learner_tokens_per_s=learner_rate(per_rank, ranks, efficiency))
        p = simulate(shape_of(config, steps=steps, actors=actors, shared=False), rates)
        out.append(Split(ranks, actors, p, p.steady_wall_s / max(steps - 1, 1)))
        if on_simulated is not None:
            on_simulated()
    if not out:
        raise CalibrationError(f"{nodes} x {gpus_per_node} devices cannot hold a learner rank and an actor engine "
                               f"of actors.tensor_parallel_size = {tp}")
    return out


def idle_share(s: Split) -> float:
    """The share of all devices' time spent idle."""
    p = s.prediction
    return (p.steady_idle_frac * s.learner_ranks + p.actor_idle_frac * s.actors) / (s.learner_ranks + s.actors)


def recommend(options: list[Split], tolerance: float = 0.02) -> Split:
    best = max(s.prediction.trained_tokens_per_s for s in options)
    close = [s for s in options if s.prediction.trained_tokens_per_s >= (1 - tolerance) * best]
    return min(close, key=lambda s: (round(s.prediction.staleness_mean, 1), idle_share(s)))


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _staleness_shares(p: Prediction) -> str:
    total = sum(p.staleness_hist) or 1
    return ", ".join(f"{k}: {_pct(n / total)}" for k, n in enumerate(p.staleness_hist))


def split_table(options: list[Split], chosen: Split) -> str:
    rows = ["| learner ranks | actor engines | step s | learner idle | actors idle | staleness mean | "
            "trained tokens/s | |", "|---|---|---|---|---|---|---|---|"]
    for s in options:
        p = s.prediction
        rows.append(f"| {s.learner_ranks} | {s.actors} | {s.step_s:.2f} | {_pct(p.steady_idle_frac)} | "
                    f"{_pct(p.actor_idle_frac)} | {p.staleness_mean:.2f} | {p.trained_tokens_per_s:,.0f} | "
                    f"{'**recommended**' if s is chosen else ''} |")
    return "\n".join(rows)


@dataclass
class Check:
    name: str
    shape: Shape
    predicted: Prediction
    wall_s: float  # measured steady-state wall
    idle_frac: float

    @property
    def wall_error(self) -> float:
        return self.predicted.steady_wall_s / self.wall_s - 1 if self.wall_s else float("nan")

    @property
    def idle_error(self) -> float:
        return self.predicted.steady_idle_frac / self.idle_frac - 1 if self.idle_frac else float("nan")


CHECK_SEEDS = 3


def check(cal: Calibration, run, seeds: int = CHECK_SEEDS, on_simulated: Callable[[], None] | None = None) -> Check:
    """Simulate a finished run's own shape with the calibration's rates (mean over `seeds` simulator seeds)."""
    m = measured(run)
    shape = shape_of(run.config, steps=m.steps, shared=shared_host(run))
    preds = []
    for s in range(seeds):
        preds.append(simulate(replace(shape, seed=s), cal.rates_for(shape.actors)))
        if on_simulated is not None:
            on_simulated()
    mean = replace(preds[0], steady_wall_s=sum(p.steady_wall_s for p in preds) / seeds,
                   steady_idle_frac=sum(p.steady_idle_frac for p in preds) / seeds)
    return Check(run.name, shape_of(run.config, steps=m.steps, shared=shared_host(run)), mean, m.steady_wall_s,
                 m.steady_idle_frac)


def check_table(checks: list[Check]) -> str:
    rows = ["| run | actors | η | steps | wall s measured | wall s predicted | error | learner idle measured | "
            "learner idle predicted | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        rows.append(f"| {c.name} | {c.shape.actors} | {c.shape.max_staleness} | {c.shape.steps} | "
                    f"{c.wall_s:.1f} | {c.predicted.steady_wall_s:.1f} | {100 * c.wall_error:+.0f} % | "
                    f"{_pct(c.idle_frac)} | {_pct(c.predicted.steady_idle_frac)} | {100 * c.idle_error:+.0f} % |")
    return "\n".join(rows)


def rates_table(cal: Calibration) -> str:
    r = cal.rates
    n = sum(r.length_counts or [1] * len(r.lengths))
    mean_len = sum(length * c for length, c in zip(r.lengths, r.length_counts or [1] * len(r.lengths))) / n
    rows = [("generation, one engine alone", f"{r.gen_step_s * 1000:.2f} ms per decoding step + "
                                              f"{r.gen_tokens_per_s:,.0f} tokens/s"),
            (f"learner alone ({cal.learner_ranks} rank{'s' if cal.learner_ranks > 1 else ''})",
             f"{r.learner_tokens_per_s:,.0f} response tokens/s"),
            ("weight publication / load", f"{r.sync_s:.3f} s / {r.load_s:.3f} s"),
            ("learner overhead per step / handoff latency (fitted)",
             f"{r.step_overhead_s:.3f} s / {r.handoff_s:.3f} s"),
            ("actor overhead per group", f"{r.group_overhead_s * 1000:.1f} ms"),
            ("groups kept by rejection sampling", _pct(r.keep_frac)),
            ("response length", f"mean {mean_len:.1f}, {min(r.lengths)}..{max(r.lengths)} tokens ({n} samples)")]
    for k, sd in sorted(cal.layouts.items()):
        rows.append((f"shared host, {k} actor{'s' if k > 1 else ''}: actor slower beside the learner / another actor "
                     "/ both; learner slower beside actors",
                     f"+{_pct(sd['actor_slowdown_learner'])} / +{_pct(sd['actor_slowdown_actor'])} / "
                     f"+{_pct(sd['actor_slowdown_both'])}; +{_pct(sd['learner_slowdown_actor'])}"))
    return "\n".join(["| rate | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def run_calibration(config_path: str | None, sets: list[str], steps: int, output_dir: str | None) -> str:
    """A short run of the config for its rates; returns its directory."""
    from asyncor.configs.loader import load_config

    base = load_config(config_path, sets)
    name = f"{base.run.name}-calibration"
    args = [sys.executable, "-m", "asyncor.launch", "run"]
    if config_path:
        args += ["--config", config_path]
    for item in [*sets, f"learner.steps={steps}", "eval.before_and_after=false", "eval.every_steps=0",
                 f"run.name={name}", "run.overwrite=true", "checkpoint.every_steps=0",
                 *([f"run.output_dir={output_dir}"] if output_dir else [])]:
        args += ["--set", item]
    print(f"calibration run: {steps} steps of {config_path or 'configs/tiny.toml'} -> "
          f"{os.path.join(output_dir or base.run.output_dir, name)}", flush=True)
    code = subprocess.call(args)
    if code:
        raise CalibrationError(f"the calibration run failed (exit {code}); see its launcher output above")
    return os.path.join(output_dir or base.run.output_dir, name)


def advise(config_path: str | None, sets: list[str], from_runs: list[str] | None, calibrate_steps: int | None,
           nodes: int, gpus_per_node: int, sim_steps: int, checks: list[str], out: str | None,
           output_dir: str | None = None, efficiency: float = 1.0) -> int:
    from asyncor.configs.loader import ConfigError, load_config
    from asyncor.studies.runs import ReportError, find_runs, flatten, load_run

    try:
        if not from_runs:
            from_runs = [run_calibration(config_path, sets, calibrate_steps or 40, output_dir)]
        for d in from_runs:
            if not os.path.exists(RunDir(d).summary):
                raise CalibrationError(f"--from {d}: not a finished run (no summary.json there)")
        sources = [load_run(d) for d in from_runs]
        if config_path or sets:
            config = flatten(load_config(config_path, sets).model_dump(mode="json"))
        else:
            config = sources[-1].config
        tp = int(config.get("actors.tensor_parallel_size", 1))
        check_runs = find_runs(checks) if checks else []
        # The simulations are what takes the time (the handoff fit's most of all): counted, with an ETA.
        later = len(placements(nodes, gpus_per_node, tp)) + CHECK_SEEDS * len(check_runs)
        with Progress("advise: simulating", handoff_simulations(len(sources)) + later, log=tlog.get("advise"),
                      unit="simulations") as progress:
            cal = calibrate(sources, on_simulated=progress.update)
            progress.total = progress.done + later  # the handoff fit may have needed fewer
            options = splits(cal, config, nodes, gpus_per_node, sim_steps, tp, efficiency, progress.update)
            chosen = recommend(options)
            checked = [check(cal, r, on_simulated=progress.update) for r in check_runs]
    except (CalibrationError, ConfigError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    devices = nodes * gpus_per_node
    lines = [f"# Actor:learner split for {nodes} node{'s' if nodes > 1 else ''} x {gpus_per_node} devices",
             "", f"Rates from {', '.join(f'`{d}`' for d in from_runs)} (studies/calibration.py):", "",
             rates_table(cal), ""]
    lines += [f"* {n}" for n in cal.notes] + ([""] if cal.notes else [])
    lines += [f"Simulated {sim_steps} learner steps of η = {config.get('buffer.max_staleness')}, "
              f"{config.get('learner.prompts_per_step')} prompts x {config.get('actors.group_size')} samples per step, "
              f"{config.get('actors.update_mode')} actors, every role on its own devices "
              f"({tp} per engine); the learner's rate grows "
              + ("linearly with its ranks" if efficiency == 1 else f"with its ranks, {efficiency:g} x linear per "
                 "doubling") + ".", "",
              split_table(options, chosen), "",
              f"**Recommended: {chosen.learner_ranks} learner rank{'s' if chosen.learner_ranks > 1 else ''} and "
              f"{chosen.actors} actor engine{'s' if chosen.actors > 1 else ''}** of {devices} devices: "
              f"{chosen.prediction.trained_tokens_per_s:,.0f} trained tokens/s, the learner waiting "
              f"{_pct(chosen.prediction.steady_idle_frac)} of the time, mean staleness "
              f"{chosen.prediction.staleness_mean:.2f} (trained groups by staleness: "
              f"{_staleness_shares(chosen.prediction)}). "
              f"Set `actors.count = {chosen.actors}` and `learner.ranks = "
              f"{chosen.learner_ranks}`; `launch.py plan --nodes {nodes} --gpus-per-node {gpus_per_node}` shows "
              "where each role goes (docs/clusters.md)."]
    if checked:
        lines += ["", "## Predicted against measured", "",
                  "Each run's own shape simulated with the rates above (steady state: from the end of the first "
                  "learner step to the end of the last; roles sharing one host slow each other as calibrated).",
                  "", check_table(checked)]
    text = "\n".join(lines) + "\n"
    print(text)
    path = out or os.path.join(from_runs[0], "advice.md")
    with open(path, "w") as f:
        f.write(text)
    print(f"written: {path}")
    return 0


def command(args) -> int:
    """`launch.py advise` (its options: launch.py)."""
    if args.nodes < 1 or args.gpus_per_node < 1 or args.sim_steps < 3 or args.calibration_steps < 3 \
            or not 0 < args.learner_efficiency <= 1:
        print("error: --nodes and --gpus-per-node must be >= 1, --sim-steps and --calibration-steps >= 3, "
              "--learner-efficiency in (0, 1]", file=sys.stderr)
        return 2
    return advise(args.config, args.set, args.from_runs, args.calibration_steps if args.calibrate else None,
                  args.nodes, args.gpus_per_node, args.sim_steps, args.check, args.out,
                  efficiency=args.learner_efficiency)
