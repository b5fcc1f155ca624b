"""A run's metrics, config and summary in Weights & Biases ([telemetry.wandb], docs/trackers.md), and the
report of `launch.py report` as a W&B run of its own (`log_report`).

Who produces, who consumes: the sink's only caller is its tracker thread (launcher/tracker_thread.py), fed by
the launcher's telemetry collector; W&B's own service process (wandb-core, a child of the launcher) writes
`<run dir>/wandb/` and, online, uploads. What blocks: `wandb.init` (seconds; W&B's `init_timeout` bounds it)
and every W&B call, on the tracker's thread only: the collector never waits for W&B (the thread's bounded
queue sheds instead, counted). What is dropped: what RecordMapper skips (text, nulls, non-finite numbers);
a record W&B refuses makes the tracker fail (logged, dropped), never the run.

Steps: the roles' steps interleave (the learner at version 40 while an actor logs at 39 and the buffer at 41)
and W&B's own step must only grow, so a record's metrics carry its role's step metric `step/<role>`
(`step/learner`, `step/actor0`, ...) and each metric is defined against its role's (`define_metric(key,
step_metric=...)`), which the W&B UI plots it against; W&B's own step just counts rows. Records of different
roles share a row (one `run.log` per row, sent at the latest every `flush_s`; a role's second record starts a
new row): much of W&B's cost is per row, which many actors would otherwise multiply. `*_hist` metrics (counts
per integer bin) become `wandb.Histogram`s (at most 512 bins: neighbours are merged beyond). The resolved
config is the run's config; the run summary's numbers and strings go to the W&B summary as
`summary/<dotted.path>`.

Quiet by design: W&B's console capture is off and its messages silenced (`launch.py run` output stays the
launcher's), and system metrics are not sampled: the launcher's node is not where the work runs on a cluster,
and the roles' metrics already carry their throughput. Resuming (trackers.json holds the W&B run id) continues
the same W&B run (`resume="allow"`); offline, that is a second `offline-run-*` directory with the same id,
and `wandb sync` of both uploads one run.
"""

from __future__ import annotations

import math
import os
import shutil

from asyncor.launcher.tracker_records import RecordMapper, flat_leaves, load_ids, save_ids

MAX_BINS = 512  # wandb.Histogram's limit


class WandbSink:
    name = "wandb"
    flush_s = 2.0  # rows are sent at the latest this long after their first record

    def __init__(self, settings, run_dir: str, run_name: str, resume: bool = False):
        """`settings`: the run's WandbConfig; `resume`: continue the W&B run recorded in the run's trackers.json."""
        self.settings = settings
        self.run_dir = os.path.abspath(run_dir)
        self.run_name = run_name
        self.resume = resume
        self.run = None
        self._wandb = None
        self._mapper = RecordMapper()
        self._defined: set[str] = set()
        self._row: dict = {}
        self._roles: set[str] = set()  # in the row being built

    def open(self) -> None:
        import wandb

        self._wandb = wandb
        ids = load_ids(self.run_dir).get("wandb", {}) if self.resume else {}
        run_id = ids.get("id") if isinstance(ids, dict) and isinstance(ids.get("id"), str) else None
        self.run = init(self.settings, self.run_dir, name=self.settings.name or self.run_name, job_type="train",
                        group=self.settings.group, run_id=run_id)
        save_ids(self.run_dir, self.name, {"id": self.run.id, "project": self.settings.project,
                                           "entity": self.settings.entity, "mode": self.settings.mode})

    def config(self, tree: dict) -> None:
        self.run.config.update(tree, allow_val_change=True)  # a resumed run may change some keys (--set)

    def write(self, record: dict) -> None:
        role, step, metrics = self._mapper.map(record)
        if not metrics:
            return
        step_key = f"step/{role}"
        # A row holds one step per role: a record of a role at another step starts a new row, and records of a
        # role at the same step are one point per metric, the last value (W&B's own rule for a step logged twice;
        # metrics.jsonl and TensorBoard keep every record). An actor logs many records per version.
        if role in self._roles and self._row.get(step_key) != step:
            self.flush()
        self._row[step_key] = step
        self._roles.add(role)
        for key, value in metrics.items():
            if key not in self._defined:
                self.run.define_metric(key, step_metric=step_key)
                self._defined.add(key)
            self._row[key] = histogram(self._wandb, value) if isinstance(value, list) else value

    def flush(self) -> None:
        if self._row:
            row, self._row, self._roles = self._row, {}, set()
            self.run.log(row)

    def finish(self, summary: dict | None) -> None:
        self.flush()
        if summary is not None:
            self.run.summary.update({f"summary/{k}": v for k, v in flat_leaves(summary).items()})
        self.run.finish(exit_code=0 if summary is not None else 1)

    def abort(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)


def histogram(wandb, counts: list):
    """A wandb.Histogram of counts per integer bin (bin i holds the value i)."""
    k = max(1, math.ceil(len(counts) / MAX_BINS))
    merged = counts if k == 1 else [sum(counts[i:i + k]) for i in range(0, len(counts), k)]
    edges = [i * k - 0.5 for i in range(len(merged) + 1)]
    return wandb.Histogram(np_histogram=(merged, edges))


def init(settings, root: str, name: str, job_type: str, group: str | None, run_id: str | None = None,
         config: dict | None = None):
    """wandb.init for a run under `<root>/wandb/`, quiet; continues `run_id` when given."""
    import wandb

    # W&B's messages off for the launcher's process (its own settings reach only some of them), and no
    # interactive login: without credentials an online run fails (the tracker is dropped, said so) rather than
    # prompting on the terminal from this thread or quietly going offline.
    wandb.setup(settings=wandb.Settings(silent=True))
    if settings.mode == "online" and not wandb.login(prompt=False, verify=False):
        raise RuntimeError("no W&B credentials: run `wandb login` or set WANDB_API_KEY, or set "
                           'telemetry.wandb.mode = "offline"')
    git_root = _git_root()
    quiet = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_machine_info=True,
                           disable_git=git_root is None, git_root=git_root)
    os.makedirs(root, exist_ok=True)
    return wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode, dir=root, name=name,
                      group=group, tags=list(settings.tags), job_type=job_type, config=config, id=run_id,
                      resume="allow" if run_id else None, reinit="create_new", settings=quiet)


def _git_root() -> str | None:
    """The git checkout asyncor runs from (W&B records its commit), or None."""
    path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root is the package
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def log_report(settings, out: str, group: str | None, images: list[tuple[str, str]],
               tables: dict[str, tuple[list[str], list[list[str]]]], report_md: str, runs: list[str]) -> str:
    """`launch.py report`'s output as a W&B run (job_type "report") under `<out>/wandb/`: each plot an image
    (`plots/<file stem>`), each table a wandb.Table (`tables/<name>`), report.md saved with the run. Returns the
    W&B run id."""
    import wandb

    run = init(settings, os.path.abspath(out), name=f"report-{group}" if group else "report", job_type="report",
               group=group, config={"runs": runs})
    try:
        run.log({**{f"plots/{os.path.splitext(os.path.basename(path))[0]}": wandb.Image(path, caption=title)
                    for title, path in images},
                 **{f"tables/{name}": wandb.Table(columns=columns, data=rows)
                    for name, (columns, rows) in tables.items()}})
        saved = shutil.copy(report_md, run.dir)  # a file outside the run's directory would be symlinked, noisily
        run.save(saved, base_path=run.dir, policy="now")
        run_id = run.id
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run_id

