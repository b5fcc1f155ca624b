"""TensorBoard events (issue 15 item 3): what the collector receives is readable by TensorBoard's own reader,
value for value, per role; `export` rebuilds a run's events from metrics.jsonl."""

import json
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asyncor.launcher.ports import free_port
from asyncor.launcher.collector import Collector
from asyncor.telemetry.metrics import MetricsWriter
from asyncor.launcher.tensorboard import export
from asyncor.runtime.run_dir import RunDir


def scalars(run_dir, role, tag):
    acc = EventAccumulator(os.path.join(run_dir, "tensorboard", role), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)], acc


def test_every_record_reaches_tensorboard_per_role_and_step(tmp_path):
    port = free_port()
    collector = Collector(str(tmp_path), "127.0.0.1", port, tensorboard=True, actors=2).start()
    try:
        learner = MetricsWriter(RunDir(str(tmp_path)).metrics, "learner", f"tcp://127.0.0.1:{port}")
        actors = [MetricsWriter(RunDir(str(tmp_path)).metrics, f"actor{i}", f"tcp://127.0.0.1:{port}") for i in range(2)]
        for step in range(1, 8):
            learner.log({"learner/loss": 0.5 / step, "learner/staleness_hist": [step, 2, 0, 1], "reward/mean": None,
                         "learner/stage": step // 4, "learner/odd_hist": ["x", -1], "learner/text": "x"}, step=step)
            for i, actor in enumerate(actors):
                actor.log({"actor/tokens_per_s": 100.0 * i + step}, step=step)
        for w in (learner, *actors):
            w.close()
    finally:
        collector.stop()
    loss, acc = scalars(tmp_path, "learner", "learner/loss")
    assert [s for s, _ in loss] == list(range(1, 8))
    assert all(abs(v - 0.5 / s) < 1e-7 for s, v in loss)  # stored as float32
    assert "reward/mean" not in acc.Tags()["scalars"]  # null values are left out
    assert "learner/odd_hist" not in acc.Tags()["histograms"] and collector.tensorboard_errors == 0
    hist = acc.Histograms("learner/staleness_hist")
    assert len(hist) == 7 and hist[0].histogram_value.num == 4  # counts 1 + 2 + 0 + 1 at step 1
    for i in range(2):  # one event directory per actor: TensorBoard overlays them under one tag
        values, _ = scalars(tmp_path, f"actor{i}", "actor/tokens_per_s")
        assert values == [(s, 100.0 * i + s) for s in range(1, 8)]


def test_export_rebuilds_the_events_from_metrics_jsonl(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(3):
            f.write(json.dumps({"ts": 1000.0 + step, "role": "buffer", "step": step, "buffer/size": step * 2}) + "\n")
        f.write(json.dumps({"ts": 1004.0, "role": "eval", "step": None, "eval/accuracy": 0.25}) + "\n")
    export(str(tmp_path))
    values, _ = scalars(tmp_path, "buffer", "buffer/size")
    assert values == [(0, 0.0), (1, 2.0), (2, 4.0)]
    assert scalars(tmp_path, "eval", "eval/accuracy")[0] == [(0, 0.25)]  # no step: counted per role
