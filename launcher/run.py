"""`launch.py run`: prepare the policy, evaluate, run buffer + learner + actors, evaluate, summarise.

The launcher is a supervisor only: every piece of work runs in a child process
(launcher/processes.py) with its own log. It polls the children twice a
second: the run succeeds when the learner exits 0 and the buffer and actors
follow; any role exiting with an error, a stop signal (Ctrl-C, SIGTERM,
SIGHUP: launcher/stop_signals.py), or `run.max_wall_s` passing stops every
child within `SHUTDOWN_GRACE_S` + `REAP_S` seconds and reports which role
failed and the end of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from configs.loader import dump_resolved
from configs.schema import Config
from launcher.placement import check_placement, is_loopback, learner_env, role_env, visible_gpus
from launcher.ports import assign_ports
from launcher.processes import Child, spawn, stop_all
from launcher.status import StatusView
from launcher.stop_signals import StopSignals
from launcher.summary import build_summary, human

POLL_S = 0.5
SHUTDOWN_GRACE_S = 5.0  # SIGTERM -> SIGKILL
REAP_S = 3.0  # SIGKILL -> reaped
DRAIN_S = 30.0


class RunFailed(RuntimeError):
    pass


def _fail(child: Child, what: str) -> RunFailed:
    return RunFailed(f"{what}: role '{child.name}' exited with code {child.returncode}.\n"
                     f"--- last lines of {child.log_path} ---\n{child.tail()}")


def stop_children(children: list[Child]) -> None:
    stuck = stop_all(children, SHUTDOWN_GRACE_S, REAP_S)
    if stuck:
        print(f"warning: {', '.join(stuck)} not reaped {REAP_S:.0f}s after SIGKILL (stuck in the kernel?)",
              file=sys.stderr, flush=True)


def run_phase(name: str, module: str, args: list[str], log_dir: str, timeout_s: float, stop: StopSignals,
              deadline_key: str) -> None:
    """One child that must finish (warm start, evaluation), with stop-signal and deadline handling;
    `deadline_key` is the config key that sets `timeout_s` (named when it passes)."""
    stop.check()
    child = spawn(name, module, args, log_dir)
    deadline = time.monotonic() + timeout_s
    try:
        while child.returncode is None:
            stop.check()
            if time.monotonic() > deadline:
                raise RunFailed(f"{name} did not finish within {timeout_s:g} s (raise {deadline_key})")
            time.sleep(0.2)
    finally:
        stop_children([child])
    if child.returncode != 0:
        raise _fail(child, name)


def prepare_run_dir(config: Config) -> str:
    run_dir = config.run_dir
    if os.path.exists(run_dir):
        if not config.run.overwrite:
            raise RunFailed(f"{run_dir} exists and run.overwrite = false; pick another run.name")
        # Old outputs would mix with the new ones (metrics.jsonl is appended to).
        for old in ("logs", "roles", "final"):
            shutil.rmtree(os.path.join(run_dir, old), ignore_errors=True)
        for old in ("metrics.jsonl", "summary.json", "eval_before.json", "eval_after.json", "policy.json"):
            if os.path.exists(os.path.join(run_dir, old)):
                os.remove(os.path.join(run_dir, old))
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    return run_dir


def learner_finished(config: Config) -> bool:
    """The learner writes its figures just before telling the buffer it is done."""
    return os.path.exists(os.path.join(config.run_dir, "roles", "learner.json"))


def supervise(config: Config, children: list[Child], learner: Child, view: StatusView, stop: StopSignals) -> None:
    started = time.monotonic()
    learner_done_at = None
    while True:
        stop.check()
        view.poll()
        for c in children:
            if c.returncode not in (None, 0):
                raise _fail(c, "run failed")
        if learner.returncode == 0:
            learner_done_at = learner_done_at or time.monotonic()
            if all(c.returncode == 0 for c in children):
                return
            if time.monotonic() - learner_done_at > DRAIN_S:
                late = [c.name for c in children if c.returncode is None]
                print(f"warning: {late} did not exit {DRAIN_S:.0f}s after the learner finished; stopping them")
                return
        elif not learner_finished(config) and any(c.returncode == 0 for c in children if c is not learner):
            early = next(c for c in children if c is not learner and c.returncode == 0)
            raise _fail(early, "a role exited before the learner finished")
        if time.monotonic() - started > config.run.max_wall_s:
            raise RunFailed(f"run.max_wall_s = {config.run.max_wall_s:.0f}s passed before the learner finished")
        time.sleep(POLL_S)


def run(config: Config) -> dict:
    """Raises RunFailed, or launcher.stop_signals.Interrupted after a stop signal (every role stopped)."""
    with StopSignals() as stop:
        return _run(config, stop)


def _run(config: Config, stop: StopSignals) -> dict:
    wall_start = time.monotonic()
    gpus = visible_gpus()
    try:
        check_placement(config, gpus)
    except ValueError as err:
        raise RunFailed(str(err)) from None
    run_dir = prepare_run_dir(config)
    logs = os.path.join(run_dir, "logs")
    cfg_path = os.path.join(run_dir, "config.json")
    assign_ports(config)
    dump_resolved(config, cfg_path)
    print(f"run dir: {run_dir}   (logs in {logs})", flush=True)
    if not is_loopback(config.net.host):
        print(f"warning: net.host = {config.net.host} is not a loopback address: the buffer and learner ports accept "
              "messages from anything that can reach them, with no authentication (every message is still "
              "checked and bad ones refused). Use a private network.", file=sys.stderr, flush=True)

    print("preparing the policy (tiny model + warm start, cached) ...", flush=True)
    policy_json = os.path.join(run_dir, "policy.json")
    run_phase("prepare", "learner.warm_start", ["--config", cfg_path, "--out", policy_json], logs,
              config.run.prepare_timeout_s, stop, "run.prepare_timeout_s")
    with open(policy_json) as f:
        config.model.path = json.load(f)["model_dir"]
    dump_resolved(config, cfg_path)  # the fully resolved config: ports and the policy actually used

    if config.eval.before_and_after:
        print("evaluating the starting policy on the held-out split ...", flush=True)
        run_phase("eval_before", "actors.evaluate", ["--config", cfg_path, "--model", config.model.path,
                                                     "--out", os.path.join(run_dir, "eval_before.json"),
                                                     "--tag", "eval_before", "--version", "0"], logs,
                  config.run.eval_timeout_s, stop, "run.eval_timeout_s")
        print(f"  accuracy before RL: {json.load(open(os.path.join(run_dir, 'eval_before.json')))['accuracy']:.3f}")

    print(f"starting buffer, learner and {config.actors.count} actor(s) ...", flush=True)
    rl_start = time.monotonic()
    children: list[Child] = []
    view = None
    try:  # a failure part-way through starting the roles still stops the ones already started
        children.append(spawn("buffer", "buffer.service", ["--config", cfg_path], logs))
        ranks, net = config.learner.ranks, config.net
        learner_ranks = [spawn("learner" if rank == 0 else f"learner{rank}", "learner.trainer", ["--config", cfg_path],
                               logs, learner_env(rank, ranks, net.host, net.learner_port, gpus))
                         for rank in range(ranks)]
        children.extend(learner_ranks)
        learner = learner_ranks[0]  # rank 0 talks to the buffer and the actors; its exit ends the run
        for i in range(config.actors.count):
            children.append(spawn(f"actor{i}", "actors.worker", ["--config", cfg_path, "--actor-id", str(i)], logs,
                                  role_env("actor", i, gpus, ranks)))
        view = StatusView(run_dir, config.learner.steps)
        supervise(config, children, learner, view, stop)
    finally:
        if view is not None:
            view.close()
        stop_children(children)
    rl_wall = time.monotonic() - rl_start

    if config.eval.before_and_after:
        print("evaluating the trained policy ...", flush=True)
        run_phase("eval_after", "actors.evaluate", ["--config", cfg_path, "--model", os.path.join(run_dir, "final"),
                                                    "--out", os.path.join(run_dir, "eval_after.json"),
                                                    "--tag", "eval_after", "--version", str(config.learner.steps)],
                  logs, config.run.eval_timeout_s, stop, "run.eval_timeout_s")
    summary = build_summary(run_dir, config.actors.count, rl_wall)
    summary["total_wall_s"] = time.monotonic() - wall_start
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(human(summary))
    print(f"\nsummary: {os.path.join(run_dir, 'summary.json')}")
    return summary
