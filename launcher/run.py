"""`launch.py run`: prepare the policy, evaluate, run buffer + learner + actors, evaluate, summarise.

The launcher is a supervisor only, the same on every back-end (launcher/backend.py: local, slurm, ray):
  plan      which role runs on which node and GPUs (launcher/plan.py), and the addresses roles bind and
            advertise; written to `plan.json` in the run directory;
  start     every piece of work is a role process started by the back-end on its node, its output
            gathered into `logs/<role>.out`; metrics and final figures come back as messages to the
            launcher's collector (launcher/collector.py), the only writer of metrics.jsonl and roles/ (a
            role whose summary the collector does not acknowledge in time writes its roles/ file itself);
  watch     twice a second (`POLL_S`): the run succeeds when the learner exits 0 and the buffer and actors
            follow (any still running `DRAIN_S` later are stopped, with a warning); another role exiting 0
            before the learner's summary has arrived fails the run; an actor exiting with an error while
            the learner trains is started again, with back-off, up to `actors.max_restarts` times
            (launcher/restarts.py);
  stop      any role exiting with an error (reported with its node and the end of its log), a stop
            signal (Ctrl-C, SIGTERM, SIGHUP, scancel: launcher/stop_signals.py), or `run.max_wall_s`
            passing (counted from the start of the RL roles) stops every role: SIGTERM, SIGKILL after
            `SHUTDOWN_GRACE_S`, reaped within `REAP_S` more. That bound is the local back-end's; the SLURM
            and Ray back-ends add the deadlines of their own commands and RPCs (launcher/slurm.py,
            launcher/ray_cluster.py).

Who produces, who consumes: the roles produce exit codes and output (read through the back-end's `poll`),
metrics and summaries (written by the collector's thread); this loop, the launcher's main thread, consumes
them and starts and stops roles. What blocks: each phase's wait, never without a deadline: the policy's
preparation `run.prepare_timeout_s`, each evaluation `run.eval_timeout_s`, the RL phase `run.max_wall_s`.
On timeout the run fails (`RunFailed`, naming the key to raise) and every role is stopped. Nothing here is
dropped; messages the collector refuses are counted into summary.json (`rejected_messages`, as
`telemetry_<reason>`). Experiment trackers ([telemetry.wandb], [telemetry.mlflow]) run on threads of their own
(launcher/tracker_thread.py): they get the resolved config once the policy is prepared and the summary at the
end, waited for `CLOSE_S` at most; what they sent, dropped or failed on is summary.json's `trackers`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time

from asyncor.configs.loader import dump_resolved
from asyncor.configs.schema import Config
from asyncor.launcher.backend import Backend, Handle, RoleSpec
from asyncor.launcher.placement import check_placement, slot_env
from asyncor.launcher.plan import Plan, PlanError, local_plan, make_plan
from asyncor.launcher.ports import assign_ports
from asyncor.wire.curve import ENV as CURVE_ENV
from asyncor.wire.curve import RunKeys
from asyncor.launcher.auth import resolve_auth
from asyncor.launcher.preflight import PreflightError, check_environment
from asyncor.launcher.restarts import ActorRestarts
from asyncor.launcher.resume import prepare_resumed_dir, save_launch_config
from asyncor.runtime.run_dir import RunDir
from asyncor.launcher.status import StatusView
from asyncor.telemetry.progress import ProgressTail
from asyncor.launcher.stop_signals import StopSignals
from asyncor.launcher.summary import build_summary, first_step_ts, human
from asyncor.launcher.collector import Collector
from asyncor.launcher.tracker_thread import close_trackers, make_trackers

POLL_S = 0.5
SHUTDOWN_GRACE_S = 5.0  # SIGTERM -> SIGKILL
REAP_S = 3.0  # SIGKILL -> reaped
DRAIN_S = 30.0
CLUSTERS = ("local", "slurm", "ray")


class RunFailed(RuntimeError):
    pass


def _fail(handle: Handle, what: str) -> RunFailed:
    return RunFailed(f"{what}: role '{handle.name}' on {handle.node} exited with code {handle.returncode}.\n"
                     f"--- last lines of {handle.log_path} ---\n{handle.tail()}")


def stop_roles(backend: Backend, handles: list[Handle]) -> None:
    stuck = backend.stop(handles, SHUTDOWN_GRACE_S, REAP_S)
    backend.poll(handles)  # the last lines of every log
    if stuck:
        print(f"warning: {', '.join(stuck)} not reaped {REAP_S:.0f}s after SIGKILL (stuck in the kernel?)",
              file=sys.stderr, flush=True)


def run_phase(backend: Backend, spec: RoleSpec, log_dir: str, timeout_s: float, stop: StopSignals,
              deadline_key: str) -> None:
    """One role that must finish (warm start, evaluation), with stop-signal and deadline handling;
    `deadline_key` is the config key that sets `timeout_s` (named when it passes). The phase's `progress` lines
    (telemetry/progress.py), read from its log as it runs, are printed at most every 10 s."""
    stop.check()
    progress = ProgressTail.for_role(log_dir, spec.name)  # before the start: what the phase writes is news
    handle = backend.start(spec, log_dir)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            backend.poll([handle])
            if handle.returncode is not None:
                break
            line = progress.poll()
            if line:
                print(f"  {line}", flush=True)
            stop.check()
            if time.monotonic() > deadline:
                raise RunFailed(f"{spec.name} did not finish within {timeout_s:g} s (raise {deadline_key})")
            time.sleep(0.2)
    finally:
        stop_roles(backend, [handle])
    if handle.returncode != 0:
        raise _fail(handle, spec.name)


def prepare_run_dir(config: Config) -> str:
    run_dir = RunDir(config.run_dir)
    if config.checkpoint.resume_from:  # continuing: keep everything up to the checkpoint
        prepare_resumed_dir(config)
    # `launch.py submit` leaves only its batch script (submit/) there: that is not an old run.
    elif os.path.exists(run_dir.path) and set(os.listdir(run_dir.path)) - {os.path.basename(run_dir.submit)}:
        if not config.run.overwrite:
            raise RunFailed(f"{run_dir.path} exists and run.overwrite = false; pick another run.name")
        # Old outputs would mix with the new ones (metrics.jsonl is appended to; --resume reads checkpoints/).
        # (trackers.json too: a new run is a new W&B / MLflow run, not a continuation of the old one.)
        for old in (run_dir.logs, run_dir.roles, run_dir.final, run_dir.checkpoints, run_dir.tensorboard,
                    run_dir.wandb, *glob.glob(run_dir.logs + ".*")):
            shutil.rmtree(old, ignore_errors=True)
        for old in (run_dir.metrics, run_dir.summary, run_dir.plan, run_dir.launch_config, run_dir.trackers):
            if os.path.exists(old):
                os.remove(old)
    os.makedirs(run_dir.logs, exist_ok=True)
    return run_dir.path


def supervise(config: Config, backend: Backend, roles: list[Handle], learner: Handle, view: StatusView,
              collector: Collector, stop: StopSignals, actor_specs: dict[str, RoleSpec], restarts: ActorRestarts,
              log_dir: str) -> None:
    """Watch the roles until the run ends; a failed actor is restarted (launcher/restarts.py) while the learner
    trains. `roles` is updated in place (a restarted actor's new handle replaces the old one)."""
    started = time.monotonic()
    learner_done_at = None
    while True:
        stop.check()
        backend.poll(roles)
        view.poll()
        for r in list(roles):
            if r.returncode in (None, 0):
                continue
            if r.name in actor_specs and learner.returncode is None and not backend.ended():
                delay = restarts.schedule(r.name, r.returncode)
                if delay is not None:
                    print(f"{r.name} on {r.node} exited with code {r.returncode}; restarting it in {delay:.0f} s "
                          f"(restart {restarts.count[r.name]} of actors.max_restarts = {restarts.max_restarts})\n"
                          f"--- last lines of {r.log_path} ---\n{r.tail(8)}", file=sys.stderr, flush=True)
                    stop_roles(backend, [r])  # whatever it left behind (its engine, its verifier processes)
                    roles.remove(r)
                    continue
            ended = backend.ended()
            raise RunFailed(f"{ended}: every role was stopped") if ended else _fail(r, "run failed")
        if learner.returncode is None:
            for name in restarts.ready():
                roles.append(backend.start(actor_specs[name], log_dir))
        if learner.returncode == 0:
            learner_done_at = learner_done_at or time.monotonic()
            if all(r.returncode == 0 for r in roles):
                return
            if time.monotonic() - learner_done_at > DRAIN_S:
                late = [r.name for r in roles if r.returncode is None]
                print(f"warning: {late} did not exit {DRAIN_S:.0f}s after the learner finished; stopping them")
                return
        elif not collector.has_summary("learner") and any(r.returncode == 0 for r in roles if r is not learner):
            early = next(r for r in roles if r is not learner and r.returncode == 0)
            raise _fail(early, "a role exited before the learner finished")
        if time.monotonic() - started > config.run.max_wall_s:
            raise RunFailed(f"run.max_wall_s = {config.run.max_wall_s:.0f}s passed before the learner finished")
        time.sleep(POLL_S)


def open_backend(cluster: str, config: Config, address: str | None = None, gpus_per_node: int | None = None):
    if cluster == "local":
        from asyncor.launcher.local import LocalBackend

        return LocalBackend(config.net.host)
    if cluster == "slurm":
        from asyncor.launcher.slurm import SlurmBackend

        return SlurmBackend(gpus_per_node)
    if cluster == "ray":
        from asyncor.launcher.ray_cluster import RayBackend

        return RayBackend(address, gpus_per_node)
    raise RunFailed(f"--cluster {cluster!r}: choose one of {', '.join(CLUSTERS)}")


def run(config: Config, cluster: str = "local", address: str | None = None,
        gpus_per_node: int | None = None) -> dict:
    """Raises RunFailed, or launcher.stop_signals.Interrupted after a stop signal (every role stopped)."""
    launched_at = time.time()  # bring-up cost is measured from here (summary: time_to_first_step_s)
    with StopSignals() as stop:
        try:
            backend = open_backend(cluster, config, address, gpus_per_node)
        except (RuntimeError, ValueError) as exc:
            raise RunFailed(str(exc)) from None
        try:
            return _run(config, stop, backend, launched_at)
        finally:
            backend.close()


def make_layout(config: Config, backend: Backend) -> Plan:
    """The plan for this back-end's nodes, and the addresses every role uses (set in config.net)."""
    try:
        if backend.kind == "local":
            check_placement(config, list(backend.nodes[0].device_ids))
            plan = local_plan(config, len(backend.nodes[0].device_ids))
        else:
            plan = make_plan(config, len(backend.nodes), min(len(n.device_ids) for n in backend.nodes))
    except (PlanError, ValueError) as err:
        raise RunFailed(str(err)) from None
    net = config.net
    if backend.kind != "local":  # on one host everyone uses net.host
        buffer_node = next(s.node for s in plan.slots if s.role == "buffer")
        net.buffer_host = net.buffer_host or backend.nodes[buffer_node].address
        net.learner_host = net.learner_host or backend.nodes[0].address
    net.launcher_host = backend.launcher_address
    return plan


def write_plan(run_dir: str, plan: Plan, backend: Backend, config: Config) -> None:
    net = config.net
    doc = {**plan.to_json(), "cluster": backend.kind,
           "node_addresses": [n.address for n in backend.nodes], "node_labels": [n.label for n in backend.nodes],
           "addresses": {"buffer": net.buffer_address, "learner": net.learner_address,
                         "launcher": net.launcher_host, "bind": net.bind_host or "(each role's advertised address)"},
           "ports": {k: getattr(net, k) for k in ("buffer_actor_port", "buffer_learner_port", "sync_port",
                                                   "store_port", "learner_port", "telemetry_port")}}
    with open(RunDir(run_dir).plan, "w") as f:
        json.dump(doc, f, indent=2)


def _run(config: Config, stop: StopSignals, backend: Backend, launched_at: float) -> dict:
    wall_start = time.monotonic()
    given = config.model_copy(deep=True)  # before addresses, ports and the policy path are filled in
    plan = make_layout(config, backend)
    try:
        check_environment(config, local=backend.kind == "local", gpus=len(backend.nodes[0].device_ids))
    except PreflightError as exc:
        raise RunFailed(str(exc)) from None
    run_dir = prepare_run_dir(config)
    if not config.checkpoint.resume_from:
        save_launch_config(given, run_dir)  # what `launch.py run --resume` continues with
    logs, cfg_path = RunDir(run_dir).logs, RunDir(run_dir).config
    assign_ports(config)
    try:
        keys = resolve_auth(config, run_dir)  # net.auth: CURVE keys, a pair per role, or None
    except ValueError as exc:
        raise RunFailed(str(exc)) from None
    dump_resolved(config, cfg_path)
    write_plan(run_dir, plan, backend, config)
    if backend.kind != "local":
        print(plan.table(), flush=True)
    print(f"run dir: {run_dir}   (logs in {logs})", flush=True)
    net = config.net
    collector = Collector(run_dir, net.bind_address(net.launcher_host), net.telemetry_port,
                          keys.issue("launcher") if keys else None,
                          tensorboard=config.telemetry.tensorboard, actors=config.actors.count,
                          trackers=make_trackers(config)).start()  # W&B / MLflow, each on a thread of its own
    try:
        return _run_roles(config, stop, backend, plan, collector, cfg_path, wall_start, launched_at, keys)
    finally:
        collector.stop()


def _result(collector: Collector, role: str) -> dict:
    result = collector.result(role)
    if result is None:
        raise RunFailed(f"{role} exited 0 without reporting its result (logs/{role}.out)")
    return result


def _spec(plan: Plan, backend: Backend, config: Config, role: str, index: int, name: str, module: str,
          args: list[str], keys: RunKeys | None) -> RoleSpec:
    """Role `name` in the plan's slot (`role`, `index`); with CURVE it gets its own keys only (wire/curve.py)."""
    slot = next(s for s in plan.slots if s.role == role and s.index == index)
    env = slot_env(plan, slot, list(backend.nodes[slot.node].device_ids), config.net.learner_address,
                   config.net.learner_port)
    return RoleSpec(name, module, args, slot.node, {**env, **(keys.issue(name).to_env() if keys else {})})


def _run_roles(config: Config, stop: StopSignals, backend: Backend, plan: Plan, collector: Collector,
               cfg_path: str, wall_start: float, launched_at: float, keys: RunKeys | None) -> dict:
    run_dir = RunDir(config.run_dir)
    logs = run_dir.logs
    resumed = config.checkpoint.resume_from
    if resumed:  # the policy was prepared and evaluated before the checkpoint was written
        print(f"resuming from {resumed}", flush=True)
    else:
        print("preparing the policy (tiny model + warm start, cached) ...", flush=True)
        prepare = _spec(plan, backend, config, "learner", 0, "prepare", "asyncor.prepare", ["--config", cfg_path],
                        keys)
        prepare = RoleSpec(prepare.name, prepare.module, prepare.args, prepare.node,  # one process, no group
                           {k: v for k, v in prepare.env.items() if k in ("CUDA_VISIBLE_DEVICES", CURVE_ENV)})
        run_phase(backend, prepare, logs, config.run.prepare_timeout_s, stop, "run.prepare_timeout_s")
        config.model.path = _result(collector, "prepare")["model_dir"]
        dump_resolved(config, cfg_path)  # the fully resolved config: ports and the policy actually used
    for tracker in collector.trackers:  # config.json's tree, now final
        tracker.set_config(config.model_dump(mode="json"))

    def evaluation(tag: str, model: str, version: int) -> None:
        # Before and after RL no engine runs: evaluation takes actor 0's node and GPUs.
        spec = _spec(plan, backend, config, "actor", 0, tag, "asyncor.actors.evaluate",
                     ["--config", cfg_path, "--model", model, "--tag", tag, "--version", str(version)], keys)
        run_phase(backend, spec, logs, config.run.eval_timeout_s, stop, "run.eval_timeout_s")

    if config.eval.before_and_after and not resumed:
        print("evaluating the starting policy on the held-out split ...", flush=True)
        evaluation("eval_before", config.model.path, 0)
        print(f"  accuracy before RL: {_result(collector, 'eval_before')['accuracy']:.3f}")

    print(f"starting buffer, learner and {config.actors.count} actor(s) ...", flush=True)
    rl_start = time.monotonic()
    roles: list[Handle] = []
    view = None
    restarts = ActorRestarts(config.actors.max_restarts, config.actors.restart_backoff_s)
    try:  # a failure part-way through starting the roles still stops the ones already started
        roles.append(backend.start(_spec(plan, backend, config, "buffer", 0, "buffer", "asyncor.buffer",
                                         ["--config", cfg_path], keys), logs))
        learner_ranks = [backend.start(_spec(plan, backend, config, "learner", rank,
                                             "learner" if rank == 0 else f"learner{rank}", "asyncor.learner",
                                             ["--config", cfg_path], keys), logs)
                         for rank in range(config.learner.ranks)]
        roles.extend(learner_ranks)
        learner = learner_ranks[0]  # rank 0 talks to the buffer and the actors; its exit ends the run
        actor_specs = {f"actor{i}": _spec(plan, backend, config, "actor", i, f"actor{i}", "asyncor.actors",
                                          ["--config", cfg_path, "--actor-id", str(i)], keys)
                       for i in range(config.actors.count)}
        for spec in actor_specs.values():
            roles.append(backend.start(spec, logs))
        view = StatusView(run_dir.path, config.learner.steps)
        supervise(config, backend, roles, learner, view, collector, stop, actor_specs, restarts, logs)
    finally:
        if view is not None:
            view.close()
        stop_roles(backend, roles)
    rl_wall = time.monotonic() - rl_start

    if config.eval.before_and_after:
        print("evaluating the trained policy ...", flush=True)
        evaluation("eval_after", run_dir.final, config.learner.steps)
    summary = build_summary(run_dir.path, config.actors.count, rl_wall)
    summary["cluster"] = {"kind": backend.kind, "nodes": len(backend.nodes),
                          "roles_by_node": {backend.nodes[n].label: [s.role if s.role == "buffer" else
                                                                     f"{s.role}{s.index}" for s in plan.on_node(n)]
                                            for n in range(plan.nodes)}}
    if collector.refused:
        summary["rejected_messages"] = {**summary["rejected_messages"],
                                        **{f"telemetry_{k}": v for k, v in collector.refused.items()}}
    if collector.tensorboard_errors:  # records metrics.jsonl has and the event files could not take
        summary["tensorboard_errors"] = collector.tensorboard_errors
    summary["actor_restarts"] = restarts.summary()
    summary["total_wall_s"] = time.monotonic() - wall_start
    if resumed:
        summary["resumed_from"] = resumed
    first = first_step_ts(run_dir.path, since=launched_at)
    summary["time_to_first_step_s"] = first - launched_at if first is not None else None
    if collector.trackers:  # they get the summary, then it gets their figures (records sent, dropped, failures)
        summary["trackers"] = close_trackers(collector.trackers, dict(summary))  # a copy: an abandoned one reads on
    with open(run_dir.summary, "w") as f:
        json.dump(summary, f, indent=2)
    print(human(summary))
    print(f"\nsummary: {run_dir.summary}")
    return summary
