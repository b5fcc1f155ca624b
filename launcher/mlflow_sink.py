"""A run's metrics, config and summary in MLflow ([telemetry.mlflow], docs/trackers.md), and the report of
`launch.py report` as an MLflow run of its own (`log_report`).

Who produces, who consumes: the sink's only caller is its tracker thread (launcher/tracker_thread.py), fed by
the launcher's telemetry collector; MLflow's client writes the tracking store (by default
`sqlite:///<run.output_dir>/mlflow.db`, one store for every run of the output directory, artifacts under
`<run.output_dir>/mlartifacts/`; any other `tracking_uri`, e.g. a server, as given). What blocks: every MLflow
call, on the tracker's thread only: the collector never waits for MLflow. Metrics are buffered and written
as one `log_batch` per flush (`flush_s`, 10 s): a sqlite transaction costs ~8 ms of CPU whatever it holds,
and each metric ~0.07 ms more (SQLAlchemy's ORM), so batches save the first. What is dropped: what
RecordMapper skips, and the `*_hist` metrics (counts per bin): MLflow has no histograms (TensorBoard and W&B
have them). A call MLflow refuses makes the tracker fail (logged, dropped), never the run.

What goes where: metrics under the names RecordMapper gives them (`learner/loss`, `actor0/tokens_per_s`) at
the record's step, with the record's time; the resolved config as params `section.key` (values as JSON text,
cut to MLflow's length limit); `telemetry.mlflow.group` as the tag `group`, each of `telemetry.mlflow.tags`
as a tag with an empty value, the run directory as `asyncor.run_dir`; the run summary as the artifact
`summary.json` plus its numeric leaves as metrics `summary/<dotted.path>` at step 0 (sortable in the runs
table); the run ends FINISHED, or FAILED when the run failed or was stopped.

Resuming (trackers.json holds the MLflow run id and its store's URI) continues the same MLflow run. A param
cannot change in MLflow, so a key the resumed run changed (`--set learner.steps=N`) keeps its first value and
the new one goes to the tag `resumed.<key>`. Metrics of the steps redone after the checkpoint appear twice in
the history (the first attempt's and the resumed one's).
"""

from __future__ import annotations

import json
import logging
import os
import time

from asyncor.configs.loader import flatten
from asyncor.launcher.tracker_records import KEY, RecordMapper, flat_leaves, load_ids, save_ids
from asyncor.telemetry import log as tlog

log = tlog.get("launcher")

MAX_METRICS = 1000  # per log_batch (MLflow's limit)
MAX_PARAMS = 100  # params and tags per log_batch (MLflow's limit)
MAX_VALUE = 6000  # a param's value (MLflow's limit; mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)


class MlflowSink:
    name = "mlflow"
    flush_s = 10.0  # metrics reach the store at the latest this long after their record

    def __init__(self, settings, run_dir: str, run_name: str, output_dir: str, resume: bool = False):
        """`settings`: the run's MlflowConfig; `resume`: continue the MLflow run recorded in trackers.json."""
        self.settings = settings
        self.run_dir = os.path.abspath(run_dir)
        self.run_name = run_name
        self.output_dir = os.path.abspath(output_dir)
        self.resume = resume
        self.client = None
        self.run_id: str | None = None
        self._mapper = RecordMapper()
        self._pending: dict = {}  # (metric, step) -> its last point in this flush
        self._metric_type = None

    def open(self) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        quiet()  # after the import: importing mlflow sets its logger's level
        self._metric_type = Metric
        uri = tracking_uri(self.settings, self.output_dir)
        self.client = MlflowClient(uri)
        ids = load_ids(self.run_dir).get("mlflow", {}) if self.resume else {}
        if isinstance(ids, dict) and isinstance(ids.get("run_id"), str) and ids.get("tracking_uri") == uri:
            self.run_id = self._reopen(ids["run_id"])
        if self.run_id is None:
            experiment_id = experiment(self.client, self.settings.experiment,
                                       None if self.settings.tracking_uri else self.output_dir)
            tags = {**run_tags(self.settings), "asyncor.run_dir": self.run_dir}
            self.run_id = self.client.create_run(experiment_id, run_name=self.settings.name or self.run_name,
                                                 tags=tags).info.run_id
        save_ids(self.run_dir, self.name, {"run_id": self.run_id, "tracking_uri": uri})

    def _reopen(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as exc:  # the store was moved or the run deleted: a new MLflow run, said so
            log.warning("tracker_resume_missed", tracker=self.name, run_id=run_id, reason=str(exc)[:200])
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def config(self, tree: dict) -> None:
        from mlflow.entities import Param, RunTag

        params = config_params(tree)
        logged = self.client.get_run(self.run_id).data.params  # a resumed run's, from its first session
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"resumed.{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
        for i in range(0, len(new), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=new[i:i + MAX_PARAMS])
        for i in range(0, len(changed), MAX_PARAMS):
            self.client.log_batch(self.run_id, tags=changed[i:i + MAX_PARAMS])

    def write(self, record: dict) -> None:
        _, step, metrics = self._mapper.map(record)
        ms = int(record["ts"] * 1000)
        # One point per metric and step in a flush: a role's records at the same step (an actor logs many per
        # version) keep the last value, as W&B does (launcher/wandb_sink.py); metrics.jsonl keeps every record.
        self._pending.update({(key, step): self._metric_type(key, value, ms, step) for key, value in metrics.items()
                              if not isinstance(value, list)})  # counts per bin: MLflow has no histograms

    def flush(self) -> None:
        pending, self._pending = list(self._pending.values()), {}
        for i in range(0, len(pending), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=pending[i:i + MAX_METRICS])

    def finish(self, summary: dict | None) -> None:
        self.flush()
        if summary is not None:
            self.client.log_dict(self.run_id, summary, "summary.json")
            ms = int(time.time() * 1000)
            leaves = [self._metric_type(f"summary/{k}", float(v), ms, 0) for k, v in flat_leaves(summary).items()
                      if isinstance(v, (int, float)) and KEY.match(f"summary/{k}")]
            for i in range(0, len(leaves), MAX_METRICS):
                self.client.log_batch(self.run_id, metrics=leaves[i:i + MAX_METRICS])
        self.client.set_terminated(self.run_id, status="FINISHED" if summary is not None else "FAILED")

    def abort(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED")


def quiet() -> None:
    """MLflow and alembic (which sets up a new sqlite store) say only warnings: `launch.py run` output stays
    readable."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(settings, output_dir: str) -> str:
    """`telemetry.mlflow.tracking_uri`, or the output directory's own store."""
    return settings.tracking_uri or f"sqlite:///{os.path.join(os.path.abspath(output_dir), 'mlflow.db')}"


def experiment(client, name: str, output_dir: str | None) -> str:
    """The id of experiment `name`, created when missing (with its artifacts under `<output_dir>/mlartifacts/`
    when `output_dir` is given: the default store's)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = os.path.join(output_dir, "mlartifacts") if output_dir else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # made meanwhile by another run of the same store
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def run_tags(settings) -> dict:
    tags = {tag[:250]: "" for tag in settings.tags}
    if settings.group:
        tags["group"] = settings.group
    return tags


def config_params(tree: dict) -> dict[str, str]:
    """A config tree as MLflow params: `section.key` -> the value as JSON text (strings as they are), cut to
    MLflow's length limit."""
    params = {}
    for key, value in flatten(tree).items():
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > MAX_VALUE:
            text = text[:MAX_VALUE - 3] + "..."
        if len(key) <= 250:
            params[key] = text
    return params


def log_report(settings, output_dir: str, group: str | None, images: list[tuple[str, str]],
               tables: dict[str, tuple[list[str], list[list[str]]]], report_md: str, runs: list[str]) -> str:
    """`launch.py report`'s output as an MLflow run named `report` (tag `group`; tag `asyncor.report_of`: the
    runs): every plot under `plots/`, report.md, and each table as `tables/<name>.json`. `output_dir`: the
    reported runs' (their store when `settings.tracking_uri` is None). Returns the MLflow run id."""
    from mlflow.tracking import MlflowClient

    quiet()
    client = MlflowClient(tracking_uri(settings, output_dir))
    experiment_id = experiment(client, settings.experiment, None if settings.tracking_uri else output_dir)
    tags = {**run_tags(settings), "asyncor.report_of": ", ".join(runs)[:5000]}
    if group:
        tags["group"] = group
    run_id = client.create_run(experiment_id, run_name="report", tags=tags).info.run_id
    try:
        for _, path in images:
            client.log_artifact(run_id, path, "plots")
        client.log_artifact(run_id, report_md)
        for name, (columns, rows) in tables.items():
            client.log_dict(run_id, {"columns": columns, "rows": rows}, f"tables/{name}.json")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
