"""Experiment trackers (issue 30 item 1): records the collector takes reach W&B (offline) and MLflow (sqlite)
with their steps, read back with each tracker's own tools (tests/integration/tracker_readback.py); a tracker
that fails, hangs or falls behind never slows the collector; a resumed run continues the same tracker runs."""

import json
import os
import shutil
import sys
import threading
import time

import pytest
from structlog.testing import capture_logs

from asyncor.configs.loader import ConfigError, load_config
from asyncor.launcher.collector import Collector
from asyncor.launcher.mlflow_sink import config_params
from asyncor.launcher.ports import free_port
from asyncor.launcher.tracker_records import RecordMapper, flat_leaves
from asyncor.launcher.tracker_thread import TrackerThread, close_trackers, make_trackers
from asyncor.launcher.wandb_sink import histogram
from asyncor.studies.report import markdown_rows, write_report
from asyncor.studies.sweep import tracker_groups
from asyncor.wire.envelope import encode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from tracker_readback import find_mlflow_run, read_mlflow, read_wandb  # noqa: E402

TRACKERS = ["telemetry.wandb.enabled=true", 'telemetry.wandb.mode="offline"', 'telemetry.wandb.group="sweep-a"',
            'telemetry.wandb.tags=["tiny", "t2"]', "telemetry.mlflow.enabled=true",
            'telemetry.mlflow.group="sweep-a"', 'telemetry.mlflow.tags=["tiny"]', "actors.count=2"]


def records(steps):
    """What the roles send: learner and actor records with steps, a buffer record without one."""
    for step in steps:
        yield {"ts": 1000.0 + step, "role": "learner", "step": step, "learner/loss": 1.0 / step,
               "learner/staleness_hist": [step, 1, 0, 2], "reward/mean": 0.1 * step, "learner/text": "x",
               "learner/none": None, "sync/actors": 2, "learner/ok": True}
        for i in range(2):
            yield {"ts": 1000.2 + step, "role": f"actor{i}", "step": step - 1,
                   "actor/tokens_per_s": 100.0 * i + step, "sync/recv_s": 0.01 * step}
        # actor 0 logs again at the same step (actors log many records per version): one point, the last value
        yield {"ts": 1000.3 + step, "role": "actor0", "step": step - 1, "actor/tokens_per_s": 7.0 + step}
        yield {"ts": 1000.5 + step, "role": "buffer", "step": None, "buffer/size": 10 + step}


def session(output_dir, steps, summary, extra=()):
    """One launcher session: a collector with both trackers takes `steps`' records through `handle`."""
    config = load_config(None, [f"run.output_dir={output_dir}", "run.name=r", *TRACKERS, *extra])
    os.makedirs(config.run_dir, exist_ok=True)
    collector = Collector(config.run_dir, "127.0.0.1", free_port(), actors=2, trackers=make_trackers(config)).start()
    try:
        for tracker in collector.trackers:
            tracker.set_config(config.model_dump(mode="json"))
        for record in records(steps):
            collector.handle(b"x", encode("metrics", {"record": record}))
        stats = close_trackers(collector.trackers, summary)
    finally:
        collector.stop()
    return config.run_dir, stats


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A run of 5 steps, read back at once (the resume test adds to the same tracker runs later)."""
    root = tmp_path_factory.mktemp("trackers")
    run_dir, stats = session(root, range(1, 6), {"learner": {"steps": 5}, "eval": {"after": 0.25},
                                                  "cluster": {"kind": "local"}, "staleness": {"hist": [1, 2]}})
    return {"root": root, "run_dir": run_dir, "stats": stats, "wandb": read_wandb(run_dir),
            "mlflow": read_mlflow(run_dir)}


def test_both_trackers_get_every_record_with_its_step_config_group_and_summary(first):
    assert first["stats"] == {name: {"sent": 25, "dropped": 0, "unsent": 0, "failed": None, "abandoned": False}
                              for name in ("wandb", "mlflow")}
    w, m = first["wandb"], first["mlflow"]
    for history in (w["history"], m["history"]):
        assert history["learner/loss"] == [(s, 1.0 / s) for s in range(1, 6)]
        # each actor its own series, at its own step; its sync/ metrics under its name too
        assert history["actor1/tokens_per_s"] == [(s - 1, 100.0 + s) for s in range(1, 6)]
        assert history["actor0/sync/recv_s"][2] == (2, pytest.approx(0.03))
        assert history["actor0/tokens_per_s"] == [(s - 1, 7.0 + s) for s in range(1, 6)]  # one point per step
        assert history["buffer/size"] == [(i, 11 + i) for i in range(5)]  # no step: counted per role
        assert history["learner/ok"][0] == (1, 1)
        assert not {"learner/text", "learner/none", "actor/tokens_per_s"} & set(history)
    # W&B: each metric against its role's step metric; histograms as W&B histograms
    assert w["step_metrics"]["actor1/tokens_per_s"] == "step/actor1"
    assert w["step_metrics"]["reward/mean"] == "step/learner"
    step3 = w["history"]["learner/staleness_hist"][2]
    assert step3[0] == 3 and step3[1]["_type"] == "histogram" and step3[1]["values"] == [3, 1, 0, 2]
    assert step3[1]["bins"] == [-0.5, 0.5, 1.5, 2.5, 3.5]
    assert "learner/staleness_hist" not in m["history"]  # MLflow has no histograms
    # the resolved config
    assert w["config"]["run"]["name"] == "r" and w["config"]["actors"]["count"] == 2
    assert m["params"]["actors.count"] == "2" and m["params"]["telemetry.wandb.tags"] == '["tiny", "t2"]'
    assert m["params"]["run.name"] == "r"
    # project / name / group / tags
    assert (w["group"], w["tags"], w["name"], w["project"], w["job_type"]) == ("sweep-a", ["tiny", "t2"], "r",
                                                                              "asyncor", "train")
    assert m["group"] == "sweep-a" and m["tags"]["tiny"] == "" and m["name"] == "r" and m["status"] == "FINISHED"
    # the summary: W&B flattened, MLflow summary.json plus numeric leaves as metrics
    assert w["summary"]["summary/learner.steps"] == 5 and w["summary"]["summary/cluster.kind"] == "local"
    assert "summary/staleness.hist" not in w["summary"]
    assert m["summary"]["eval"] == {"after": 0.25} and m["metrics"]["summary/eval.after"] == 0.25
    assert "summary.json" in m["artifacts"]
    # where they went: under the run dir (W&B offline) and the output dir's own store
    assert os.path.isdir(os.path.join(first["run_dir"], "wandb"))
    assert m["artifact_uri"].startswith(os.path.join(str(first["root"]), "mlartifacts"))
    assert os.path.exists(os.path.join(str(first["root"]), "mlflow.db"))


def test_a_resumed_run_continues_the_same_tracker_runs(first):
    run_dir, stats = session(first["root"], range(6, 9), {"learner": {"steps": 8}},
                             extra=["checkpoint.resume_from=/ckpt/step_000005", "learner.steps=8"])
    assert stats["wandb"]["sent"] == stats["mlflow"]["sent"] == 15
    w, m = read_wandb(run_dir), read_mlflow(run_dir)
    assert w["id"] == first["wandb"]["id"] and w["sessions"] == 2
    assert m["id"] == first["mlflow"]["id"] and m["status"] == "FINISHED"
    for history in (w["history"], m["history"]):
        assert [s for s, _ in history["learner/loss"]] == list(range(1, 9))
    assert w["config"]["learner"]["steps"] == 8 and w["summary"]["summary/learner.steps"] == 8
    # an MLflow param cannot change: the first value stays, the resumed one is a tag
    assert m["params"]["learner.steps"] == first["mlflow"]["params"]["learner.steps"] != "8"
    assert m["tags"]["resumed.learner.steps"] == "8"
    assert m["tags"]["resumed.checkpoint.resume_from"] == "/ckpt/step_000005"


class Recording:
    name = "recording"

    def __init__(self, fail_open=False, fail_at=None, hang=False):
        self.fail_open, self.fail_at, self.hang = fail_open, fail_at, hang
        self.records, self.summary = [], "unset"

    def open(self):
        if self.fail_open:
            raise ConnectionError("tracking server unreachable")

    def config(self, tree):
        pass

    def write(self, record):
        if self.hang:
            threading.Event().wait()  # forever: only the daemon thread is lost
        if self.fail_at is not None and len(self.records) + 1 == self.fail_at:
            raise ValueError("refused record 3")
        self.records.append(record)

    def flush(self):
        pass

    def finish(self, summary):
        self.summary = summary


def test_failing_and_hanging_trackers_never_slow_the_collector(tmp_path):
    sinks = {"open": Recording(fail_open=True), "third": Recording(fail_at=3), "hang": Recording(hang=True),
             "ok": Recording()}
    trackers = [TrackerThread(s, max_records=8 if name == "hang" else 1000) for name, s in sinks.items()]
    for name, t in zip(sinks, trackers):
        t.name = name
    slowest = 0.0
    with capture_logs() as logs:
        collector = Collector(str(tmp_path), "127.0.0.1", free_port(), trackers=trackers).start()
        try:
            for step in range(1, 51):
                if step == 26:  # a config among the records: unsent counts records only
                    trackers[1].set_config({"a": 1})
                raw = encode("metrics", {"record": {"ts": 1.0 * step, "role": "learner", "step": step,
                                                    "learner/loss": 1.0}})
                start = time.monotonic()
                collector.handle(b"x", raw)
                slowest = max(slowest, time.monotonic() - start)
            start = time.monotonic()
            stats = close_trackers(trackers, {"learner": {"steps": 50}}, timeout_s=1.0)
            closing = time.monotonic() - start
        finally:
            collector.stop()
    assert slowest < 0.05  # an enqueue per tracker, whatever they do
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 51))
    assert 0.9 < closing < 1.5  # the hanging tracker is abandoned once the bound has passed
    assert stats["ok"] == {"sent": 50, "dropped": 0, "unsent": 0, "failed": None, "abandoned": False}
    assert len(sinks["ok"].records) == 50 and sinks["ok"].summary == {"learner": {"steps": 50}}
    assert stats["open"]["failed"] == "ConnectionError: tracking server unreachable"
    assert stats["open"]["sent"] == 0 and stats["open"]["unsent"] == 50
    assert stats["third"]["failed"] == "ValueError: refused record 3" and stats["third"]["sent"] == 2
    assert stats["third"]["unsent"] == 48 and sinks["third"].summary == "unset"
    hang = stats["hang"]
    assert hang["abandoned"] and hang["failed"] is None and hang["dropped"] > 0
    assert hang["dropped"] + hang["unsent"] == 50 and hang["sent"] == 0
    failed = sorted(e["tracker"] for e in logs if e["event"] == "tracker_failed")
    assert failed == ["open", "third"] and all(e["log_level"] == "warning" and e["reason"] for e in logs
                                               if e["event"] == "tracker_failed")
    assert [e["tracker"] for e in logs if e["event"] == "tracker_abandoned"] == ["hang"]


def test_wandb_online_without_credentials_fails_the_tracker_not_the_run(tmp_path, monkeypatch):
    """No interactive prompt from the tracker's thread, no quiet switch to offline: a failed tracker, said why."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    config = load_config(None, [f"run.output_dir={tmp_path}", "telemetry.wandb.enabled=true"])
    (tracker,) = make_trackers(config)
    tracker.start()
    stats = close_trackers([tracker], None, timeout_s=20)["wandb"]
    assert "no W&B credentials" in stats["failed"] and not stats["abandoned"]
    assert not os.path.exists(os.path.join(config.run_dir, "wandb"))


@pytest.mark.parametrize("override, field", [
    ('telemetry.wandb.mode="x"', "telemetry.wandb.mode"),
    ("telemetry.mlflow.tags=5", "telemetry.mlflow.tags"),
    ("telemetry.wandb.projct=1", "telemetry.wandb.projct"),
])
def test_bad_tracker_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_record_mapping_names_steps_and_skips():
    mapper = RecordMapper()
    role, step, out = mapper.map({"ts": 1.0, "role": "actor3", "step": 7, "actor/tokens": 5, "sync/load_s": 0.5,
                                  "actor/weird name": 1.0, "actor/inf": float("inf"), "actor/big": 10 ** 400,
                                  "actor/flag": False, "actor/x_hist": [0, 2], "actor/bad_hist": ["a"]})
    assert (role, step) == ("actor3", 7)
    assert out == {"actor3/tokens": 5.0, "actor3/sync/load_s": 0.5, "actor3/flag": 0, "actor3/x_hist": [0, 2]}
    assert [mapper.map({"ts": 1.0, "role": "eval", "eval/accuracy": 0.5})[1] for _ in range(3)] == [0, 1, 2]
    # a name two roles log is the first one's; the other gets its own
    assert mapper.map({"ts": 1.0, "role": "learner", "step": 1, "eval/accuracy": 0.1})[2] == {
        "learner/eval/accuracy": 0.1}


def test_long_histograms_are_merged_to_wandbs_limit_and_params_to_mlflows():
    import wandb

    h = histogram(wandb, [1] * 1030)  # 3 integer values per bin
    assert len(h.histogram) == 344 and h.histogram[0] == 3 and h.histogram[-1] == 1
    assert h.bins[:2] == [-0.5, 2.5]
    params = config_params({"a": {"b": "x" * 7000, "c": [1, 2], "d": None}})
    assert len(params["a.b"]) == 6000 and params["a.b"].endswith("...")
    assert params["a.c"] == "[1, 2]" and params["a.d"] == "null"
    assert flat_leaves({"t": {"actors": [{"w": 1.5}, {"w": 2}]}, "h": [1, 2], "ok": True, "n": None}) == {
        "t.actors.0.w": 1.5, "t.actors.1.w": 2, "ok": 1}


def test_a_sweep_is_one_group_unless_a_group_is_set():
    base = load_config(None, ["telemetry.wandb.enabled=true", "telemetry.mlflow.enabled=true",
                              'telemetry.mlflow.group="mine"'])
    sets = tracker_groups(base, "eta 2")
    assert sets == ['telemetry.wandb.group="eta 2"']
    assert load_config(None, sets).telemetry.wandb.group == "eta 2"
    assert tracker_groups(load_config(None, []), "s") == []  # no tracker on: configs unchanged


def test_the_report_is_logged_as_a_tracker_run_of_its_own(first, tmp_path):
    """`launch.py report` of runs that logged to W&B and MLflow: a report run in each, in the runs' group."""
    runs = tmp_path / "out"
    for seed in (0, 1):
        d = runs / f"s{seed}"
        d.mkdir(parents=True)
        config = load_config(None, [*TRACKERS, f"run.seed={seed}", f"run.name=s{seed}"]).model_dump(mode="json")
        (d / "config.json").write_text(json.dumps(config))
        (d / "summary.json").write_text(json.dumps({"learner": {"steps": 2}, "wall_s": 5.0}))
        with open(d / "metrics.jsonl", "w") as f:
            for step in (1, 2):
                f.write(json.dumps({"ts": 100.0 + step, "role": "learner", "step": step, "reward/mean": 0.1 * step,
                                    "learner/entropy": 1.0 / step}) + "\n")
    shutil.copy(os.path.join(first["root"], "mlflow.db"), runs / "mlflow.db")  # a store made already: faster
    write_report([str(runs)])
    w = read_wandb(str(runs))
    assert w["job_type"] == "report" and w["group"] == "sweep-a" and w["name"] == "report-sweep-a"
    assert {"plots/reward", "plots/entropy"} <= set(w["images"]) and "tables/main" in w["tables"]
    assert "report.md" in w["files"] and w["config"]["runs"] == ["s0", "s1"]
    m = read_mlflow(str(runs), find_mlflow_run(f"sqlite:///{runs}/mlflow.db", "report"), f"sqlite:///{runs}/mlflow.db")
    assert m["group"] == "sweep-a" and m["status"] == "FINISHED"
    assert {"plots/reward.png", "report.md", "tables/main.json"} <= set(m["artifacts"])
    columns, rows = markdown_rows("| a | b \\| c |\n|---|---|\n| 1 | 2 |")
    assert columns == ["a", "b | c"] and rows == [["1", "2"]]
