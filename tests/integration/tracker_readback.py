"""Read a finished run's experiment-tracker data back with each tracker's own tools (not a test file: helpers
for the tests of launcher/tracker_thread.py and of whole runs with [telemetry.wandb] / [telemetry.mlflow]).

    read_wandb(run_dir)   the W&B run under `<run dir>/wandb/` (offline mode), from W&B's own transaction
                          log (`run-<id>.wandb`, one per session: a resumed run has several), decoded with
                          W&B's protobuf records (wandb.proto.wandb_internal_pb2.Record). wandb 0.31 has no
                          Python reader of that file any more (wandb.sdk.internal.datastore is gone), so
                          `wandb_records` walks its framing: leveldb-log blocks of 32 KiB, each record a
                          7-byte header (CRC-32 seeded with the record type, length, type) and FULL or
                          FIRST/MIDDLE/LAST pieces, after a 7-byte file header (":W&B", 0xBEE1, version 0).
    read_mlflow(run_dir)  the MLflow run, through MlflowClient(uri): get_run, get_metric_history,
                          list_artifacts, download_artifacts.

Both take the run ids from `<run dir>/trackers.json` unless given one, and return plain dicts:
config, metric histories {name: [(step, value), ...]} in the order logged, summary, tags / group, and the
names of the images / artifacts.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _ids(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "trackers.json")) as f:
            return json.load(f)
    except OSError:
        return {}


def wandb_records(path: str):
    """Every record of one `.wandb` transaction log, as wandb_internal_pb2.Record, in the order written."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        data = f.read()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B transaction log"
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:  # zero padding at the end of a block or the file
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad CRC at {pos}"
        pos += HEADER + length
        pieces += chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def _set(tree: dict, path: list[str], value) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _items(items) -> list[tuple[list[str], object]]:
    return [([it.key] if it.key else list(it.nested_key), json.loads(it.value_json)) for it in items]


def read_wandb(run_dir: str, run_id: str | None = None) -> dict:
    """The W&B run `run_id` (default: trackers.json's, else the newest) under `<run_dir>/wandb/`."""
    base = os.path.join(run_dir, "wandb")
    run_id = run_id or _ids(run_dir).get("wandb", {}).get("id")
    dirs = sorted(d for d in os.listdir(base) if d.startswith(("offline-run-", "run-")))
    run_id = run_id or dirs[-1].rsplit("-", 1)[1]
    dirs = [os.path.join(base, d) for d in dirs if d.endswith(f"-{run_id}")]
    assert dirs, f"no W&B run {run_id} under {base}"
    out = {"id": run_id, "sessions": len(dirs), "config": {}, "summary": {}, "rows": [], "step_metrics": {},
           "files": [], "group": None, "tags": [], "name": None, "job_type": None, "project": None}
    for d in dirs:
        for record in wandb_records(os.path.join(d, f"run-{run_id}.wandb")):
            which = record.WhichOneof("record_type")
            if which == "run":
                r = record.run
                out.update(group=r.run_group or None, tags=list(r.tags), name=r.display_name,
                           job_type=r.job_type or None, project=r.project)
                for path, value in _items(r.config.update):
                    _set(out["config"], path, value)
            elif which == "config":
                for path, value in _items(record.config.update):
                    _set(out["config"], path, value)
            elif which == "history":
                row: dict = {}
                for path, value in _items(record.history.item):
                    _set(row, path, value)
                out["rows"].append(row)
            elif which == "summary":
                for path, value in _items(record.summary.update):
                    _set(out["summary"], path, value)
            elif which == "metric" and record.metric.step_metric:
                out["step_metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
            elif which == "files":
                out["files"] += [f.path for f in record.files.files]
    out["config"].pop("_wandb", None)
    history: dict[str, list] = {}
    for row in out["rows"]:
        for key, value in row.items():
            if key.startswith("_") or key.startswith("step/"):
                continue
            step_key = out["step_metrics"].get(key)
            history.setdefault(key, []).append((row.get(step_key, row.get("_step")) if step_key else row.get("_step"),
                                                value))
    out["history"] = history
    out["images"] = sorted(k for k, points in history.items()
                           if any(isinstance(v, dict) and v.get("_type") == "image-file" for _, v in points))
    out["tables"] = sorted(k for k, points in history.items()
                           if any(isinstance(v, dict) and "table" in str(v.get("_type")) for _, v in points))
    return out


def read_mlflow(run_dir: str, run_id: str | None = None, tracking_uri: str | None = None) -> dict:
    """The MLflow run `run_id` in store `tracking_uri` (defaults: trackers.json's)."""
    from mlflow.tracking import MlflowClient

    ids = _ids(run_dir).get("mlflow", {})
    run_id, tracking_uri = run_id or ids["run_id"], tracking_uri or ids["tracking_uri"]
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in run.data.metrics}

    def walk(path=None):
        names = []
        for info in client.list_artifacts(run_id, path):
            names += walk(info.path) if info.is_dir else [info.path]
        return names

    artifacts = sorted(walk())
    summary = None
    if "summary.json" in artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            with open(client.download_artifacts(run_id, "summary.json", tmp)) as f:
                summary = json.load(f)
    return {"id": run_id, "name": run.info.run_name, "status": run.info.status, "params": dict(run.data.params),
            "tags": dict(run.data.tags), "group": run.data.tags.get("group"), "history": history,
            "metrics": dict(run.data.metrics), "artifacts": artifacts, "summary": summary,
            "experiment_id": run.info.experiment_id, "artifact_uri": run.info.artifact_uri}


def find_mlflow_run(tracking_uri: str, name: str, experiment: str = "asyncor") -> str | None:
    """The id of the newest MLflow run named `name` (e.g. `report`) in `experiment`, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
