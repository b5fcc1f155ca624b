"""What experiment tracking costs a run: metrics records replayed through the W&B (offline) and MLflow (sqlite)
trackers as the launcher runs them (launcher/tracker_thread.py), CPU measured, per learner step.

    python benchmarks/trackers.py                                   # synthetic records, 60 s in real time
    python benchmarks/trackers.py --metrics runs/timing1/metrics.jsonl --seconds 60
    python benchmarks/trackers.py --step-s 30 --actors 8             # a large model's step, more actors

Records: a real run's metrics.jsonl (`--metrics`, replayed at its own pace from its first record, `--seconds`
of it), or synthetic ones shaped like a real run's: a learner record of 40 metrics (two of them `*_hist`)
every `--step-s` seconds, a record per actor every 0.5 s (4 or 5 metrics, 3 more once per version, as
actors/outbox.py and actors/rollout.py log), a buffer record of 11 metrics every second. They are replayed in
real time (`--speed` > 1 compresses the timeline: fewer of W&B's fixed per-second costs are counted, and the
sinks' batches, one per `flush_s`, hold more records) and handed to a TrackerThread with the real sink, as the
collector does.

CPU counted: this whole process (every thread: the tracker's, with the sink's calls, MLflow's client and
sqlite; W&B's client threads; the submitting thread's enqueues and the replay loop itself, which is
negligible) and every child process of this one (W&B's wandb-core service), from the moment the tracker run is
open to the end of the last flush; opening and closing the tracker run (once per run: wandb-core's start,
MLflow's store creation) is printed apart. A learner step's wall time is
`--step-s`, or with `--metrics` the mean time between the run's learner records.

Printed per tracker: records per second replayed, CPU ms per learner step, that as % of a learner step, and the
one-time open + close CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HIST = 9  # staleness bins of a synthetic learner / buffer record


def synthetic(seconds: float, step_s: float, actors: int, seed: int = 0) -> list[dict]:
    """Records as a run's roles send them, `seconds` of them, ts from 0."""
    rng = random.Random(seed)
    out = []
    for i in range(int(seconds / step_s)):
        rec = {"ts": (i + 1) * step_s, "role": "learner", "step": i + 1}
        rec.update({f"learner/m{k:02d}": rng.random() for k in range(30)})  # + 3 + 5 + 2 = 40
        rec.update({f"reward/m{k}": rng.random() for k in range(3)})
        rec.update({f"sync/m{k}": rng.random() for k in range(5)})
        rec["learner/staleness_hist"] = [rng.randrange(50) for _ in range(HIST)]
        rec["reward/accuracy_hist"] = [rng.randrange(50) for _ in range(5)]
        out.append(rec)
    for a in range(actors):  # as actors/outbox.py and actors/rollout.py log: 4 or 5 metrics, sync 3 per version
        for j in range(int(seconds / 0.5)):
            ts = (j + 1) * 0.5 + a * 0.01
            version = int(ts / step_s)
            rec = {"ts": ts, "role": f"actor{a}", "step": version}
            rec.update({f"actor/m{k}": rng.random() for k in range(4 + j % 2)})
            if j and int((ts - 0.5) / step_s) != version:  # a new version arrived: the weight load's figures
                rec.update({f"sync/m{k}": rng.random() for k in range(3)})
            out.append(rec)
    for j in range(int(seconds)):
        rec = {"ts": j + 1.0, "role": "buffer", "step": int((j + 1) / step_s)}
        rec.update({f"buffer/m{k}": rng.random() for k in range(10)})
        rec["buffer/staleness_hist"] = [rng.randrange(50) for _ in range(HIST)]
        out.append(rec)
    return sorted(out, key=lambda r: r["ts"])


def from_file(path: str, seconds: float) -> tuple[list[dict], float]:
    """The first `seconds` of a run's records (ts from 0), and its wall time per learner step."""
    from asyncor.telemetry.metrics import read_metrics

    records, _ = read_metrics(path)
    start = min(r["ts"] for r in records)
    learner = sorted(r["ts"] for r in records if r["role"] == "learner")
    step_s = (learner[-1] - learner[0]) / (len(learner) - 1)
    return [{**r, "ts": r["ts"] - start} for r in sorted(records, key=lambda r: r["ts"])
            if r["ts"] - start <= seconds], step_s


def children_cpu() -> float:
    """CPU seconds of this process's children (W&B's service; MLflow has none)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Measured:
    """A sink wrapped to read CPU clocks at the edges of the steady state (open done, close begun)."""

    def __init__(self, sink, children: bool):
        """`children`: count this process's children (W&B's service) as the tracker's."""
        self.sink, self.name, self.flush_s = sink, sink.name, sink.flush_s
        self.children = children
        self.opened = threading.Event()
        self.marks: dict[str, tuple[float, float]] = {}

    def _mark(self, name):
        self.marks[name] = (time.process_time(), children_cpu() if self.children else 0.0)

    def open(self):
        self._mark("start")
        self.sink.open()
        self._mark("open")
        self.opened.set()

    def config(self, tree):
        self.sink.config(tree)

    def write(self, record):
        self.sink.write(record)

    def flush(self):
        self.sink.flush()

    def finish(self, summary):
        self._mark("finish")
        self.sink.finish(summary)
        self._mark("end")


def measure(tracker: str, records: list[dict], speed: float, out: str, config) -> dict:
    from asyncor.launcher.tracker_thread import TrackerThread, close_trackers

    run_dir = os.path.join(out, tracker)
    if tracker == "wandb":
        from asyncor.launcher.wandb_sink import WandbSink

        sink = WandbSink(config.telemetry.wandb, run_dir, tracker)
    else:
        from asyncor.launcher.mlflow_sink import MlflowSink

        sink = MlflowSink(config.telemetry.mlflow, run_dir, tracker, out)
    measured = Measured(sink, children=tracker == "wandb")
    thread = TrackerThread(measured).start()
    if not measured.opened.wait(120):
        raise SystemExit(f"{tracker}: the tracker run did not open within 120 s ({thread.failed})")
    thread.set_config(config.model_dump(mode="json"))
    submit_cpu = 0.0  # part of the process's CPU, shown apart: what the collector's thread pays
    start = time.monotonic()
    for record in records:
        delay = record["ts"] / speed - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        before = time.thread_time()
        thread.submit(record)
        submit_cpu += time.thread_time() - before
    wall = time.monotonic() - start
    stats = close_trackers([thread], {"benchmark": {"records": len(records)}}, timeout_s=120)[tracker]
    if stats["failed"] or stats["abandoned"] or stats["sent"] != len(records):
        raise SystemExit(f"{tracker}: {stats}")
    (t0, c0), (t1, c1), (t2, c2), (t3, c3) = (measured.marks[k] for k in ("start", "open", "finish", "end"))
    return {"records": len(records), "wall_s": wall, "steady_cpu_s": (t2 - t1) + (c2 - c1),
            "process_cpu_s": t2 - t1, "service_cpu_s": c2 - c1, "submit_cpu_s": submit_cpu,
            "open_close_cpu_s": (t1 - t0) + (c1 - c0) + (t3 - t2) + (c3 - c2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", help="a run's metrics.jsonl to replay (default: synthetic records)")
    parser.add_argument("--seconds", type=float, default=60.0, help="of the run's timeline to replay")
    parser.add_argument("--step-s", type=float, default=2.0, help="synthetic: a learner step's wall time")
    parser.add_argument("--actors", type=int, default=2, help="synthetic: actors (a record each every 0.5 s)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1: real time)")
    parser.add_argument("--trackers", nargs="+", default=["wandb", "mlflow"], choices=["wandb", "mlflow"])
    args = parser.parse_args()

    from asyncor.configs.loader import load_config

    if args.metrics:
        records, step_s = from_file(args.metrics, args.seconds)
        source = f"{args.metrics} (first {args.seconds:g} s)"
    else:
        records, step_s = synthetic(args.seconds, args.step_s, args.actors), args.step_s
        source = f"synthetic: {args.actors} actors, learner step {step_s:g} s, {args.seconds:g} s"
    steps = sum(r["role"] == "learner" for r in records)
    by_role: dict[str, int] = {}
    for r in records:
        by_role[r["role"]] = by_role.get(r["role"], 0) + 1
    print(f"records: {source}; {len(records)} records {by_role}; {steps} learner steps of {step_s:.2f} s; "
          f"replayed at {args.speed:g}x")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        config = load_config(None, [f"run.output_dir={out}", 'telemetry.wandb.mode="offline"'])
        for tracker in args.trackers:
            r = measure(tracker, records, args.speed, out, config)
            per_step = r["steady_cpu_s"] / steps
            rows.append((tracker, r["records"] / r["wall_s"], per_step * 1000, 100 * per_step / step_s,
                         r["open_close_cpu_s"], r))
    print(f"\n{'tracker':8} {'records/s':>10} {'CPU ms/step':>12} {'% of a step':>12} {'open+close CPU s':>17}")
    for tracker, rate, ms, pct, once, _ in rows:
        print(f"{tracker:8} {rate:10.1f} {ms:12.2f} {pct:11.3f}% {once:17.2f}")
    print("\nsteady-state CPU split (s): " + "; ".join(
        f"{t}: this process {r['process_cpu_s']:.3f} (of which enqueues {r['submit_cpu_s']:.4f}), child "
        f"processes {r['service_cpu_s']:.3f}"
        for t, *_, r in rows))
    print(json.dumps({t: {**r, "cpu_ms_per_step": ms, "pct_of_step": pct} for t, _, ms, pct, _, r in rows}))


if __name__ == "__main__":
    main()
