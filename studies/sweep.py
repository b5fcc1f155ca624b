"""`launch.py sweep`: one config, a grid of overrides, N seeds; one run directory each under a sweep directory.

    python launch.py sweep --config configs/tiny.toml --grid buffer.max_staleness=0,2 --grid actors.count=1,2 \
        --seeds 3 --name eta-actors

(`--grid K1+K2=A1+B1,A2+B2` links keys that must change together.)

runs the product of the grid (in the order given, seeds innermost) one after another, each as its own
`launch.py run` (a child process, `python -m asyncor.launch run`: locally, or through `--cluster slurm|ray`),
in `<output dir>/<name>/<run>/` (`--output-dir`, default `run.output_dir`; `--name`, default
`<run.name>-sweep`) where `<run>` spells its overrides (`buffer.max_staleness-2__actors.count-1__seed-1`).
Names are unique and stable: where the spelling loses something (a character run.name does not allow, a `__`
inside a key or value, more than 120 characters), a short hash of the exact values follows it
(`task.operations-_____-64ff939a__seed-0` for `["+"]`, `task.operations-_____-ebba6ca0__seed-0` for `["*"]`).
The sweep is resumable: a run whose summary.json exists and whose launch_config.json holds this grid point's
values is skipped ("done before"); any other run in its place (one that stopped part-way, or a finished one of
other values) is started again from scratch; `sweep.json` lists every run with its overrides and status. With
an experiment tracker on ([telemetry.wandb], [telemetry.mlflow]) and no group set, the sweep's name is every
run's group (`tracker_groups`), so W&B and MLflow show the sweep as one group. Every
combination is validated before the first run starts, so a typo in a key fails at once. A progress line per
run says what it reached, how many runs are left and the ETA: the runs left over the rate of the runs run by
this invocation (a moving average of their wall times; runs done before count as done, not into the rate),
also logged as a `progress` event (telemetry/progress.py; a bar on an interactive terminal);
`launch.py report runs/<name>` turns the sweep into tables and plots.

Who produces, who consumes: each run's child writes its run directory and its launcher output
(`<name>/<run>.launch.log`); the sweep reads the exit code and summary.json, and rewrites sweep.json
(temp + rename) after each run. What blocks: waiting for the child, one at a time and with no deadline of
the sweep's own: the child's deadlines bound it (`run.prepare_timeout_s`, `run.eval_timeout_s`,
`run.max_wall_s`). Nothing is dropped: a failed run is recorded and the sweep goes on (exit 1 at the end);
a run stopped by a signal (exit 129, 130 or 143) stops the sweep with that code, and running the same
command again continues from it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from asyncor.runtime.run_dir import RunDir
from asyncor.telemetry import log as tlog
from asyncor.telemetry.progress import Progress, duration

MANIFEST = "sweep.json"
MAX_SLUG = 120  # characters of a run name's spelled overrides (a file name holds 255 bytes)


class SweepError(ValueError):
    pass


@dataclass
class SweepRun:
    name: str  # the run directory's name: its grid values and seed
    overrides: list[str]  # KEY=VALUE, as `--set` takes them (grid values and run.seed)
    grid: dict[str, str]  # the grid values alone (the report groups seeds by them)
    seed: int


def parse_grid(items: list[str]) -> list[tuple[tuple[str, ...], list[tuple[str, ...]]]]:
    """`KEY=V1,V2,...` each -> [((key,), [(v1,), (v2,), ...])]; errors name the item.

    `KEY1+KEY2=A1+B1,A2+B2` is one linked axis: the keys move together (A1 with B1, A2 with B2), for settings
    that are only valid in pairs (e.g. `algo.correction+algo.off_policy.old_logprobs=
    none+behaviour,mis+recompute`)."""
    axes: list[tuple[tuple[str, ...], list[tuple[str, ...]]]] = []
    seen: set[str] = set()
    for item in items:
        key, sep, values = item.partition("=")
        keys = tuple(k.strip() for k in key.split("+"))
        if not sep or not all(keys) or not values.strip():
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. buffer.max_staleness=0,2) or "
                             "KEY1+KEY2=A1+B1,A2+B2")
        for k in keys:
            if k in ("run.seed", "run.name", "run.output_dir"):
                raise SweepError(f"--grid {item!r}: {k} is set by the sweep (use --seeds, --name, --output-dir)")
            if k in seen:
                raise SweepError(f"--grid {k} is given twice")
            seen.add(k)
        parts = [v.strip() for v in values.split(",")]
        if any(not v for v in parts) or len(set(parts)) != len(parts):
            raise SweepError(f"--grid {item!r}: values must be non-empty and distinct")
        tuples = [tuple(p.strip() for p in v.split("+")) if len(keys) > 1 else (v,) for v in parts]
        bad = [v for v, t in zip(parts, tuples) if len(t) != len(keys) or not all(t)]
        if bad:
            raise SweepError(f"--grid {item!r}: {len(keys)} linked keys need {len(keys)} values joined by '+' "
                             f"in each entry, got {bad}")
        axes.append((keys, tuples))
    return axes


def run_name(grid: dict[str, str], seed: int) -> str:
    """`buffer.max_staleness-2__actors.count-1__seed-0`: the grid values spelled out, then the seed.

    Where the spelling is lossy (characters run.name does not allow become `_`; a `__` inside a key or value
    makes the parts ambiguous; past MAX_SLUG characters it is cut), 8 hex digits of a hash of the exact
    keys and values follow it, so distinct grid points never share a name and a point keeps its name from
    one invocation to the next."""
    spelled = "__".join(f"{k}-{v}" for k, v in grid.items())
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", spelled)
    lossy = slug != spelled or any("__" in k or "__" in v for k, v in grid.items()) or len(slug) > MAX_SLUG
    if lossy:
        digest = hashlib.sha256(json.dumps(list(grid.items())).encode()).hexdigest()[:8]
        slug = f"{slug[:MAX_SLUG]}-{digest}"
    return f"{slug}__seed-{seed}" if slug else f"seed-{seed}"


def expand(grid_items: list[str], seeds: int, base_seed: int) -> list[SweepRun]:
    """The product of the grid (first --grid outermost), each with seeds base_seed .. base_seed + seeds - 1."""
    if seeds < 1:
        raise SweepError(f"--seeds {seeds}: need at least 1")
    axes = parse_grid(grid_items)
    runs = []
    for values in itertools.product(*[vals for _, vals in axes]):
        grid = {k: v for (keys, _), vs in zip(axes, values) for k, v in zip(keys, vs)}
        for seed in range(base_seed, base_seed + seeds):
            overrides = [f"{k}={v}" for k, v in grid.items()] + [f"run.seed={seed}"]
            runs.append(SweepRun(run_name(grid, seed), overrides, grid, seed))
    names: dict[str, SweepRun] = {}
    for r in runs:  # cannot happen short of a hash collision; a shared name would skip a point as done before
        if r.name in names:
            raise SweepError(f"grid points {names[r.name].overrides} and {r.overrides} would share the run name "
                             f"{r.name!r}; change a value")
        names[r.name] = r
    return runs


def tracker_groups(base, sweep_name: str) -> list[str]:
    """`--set` overrides making `sweep_name` the group of the enabled trackers that have none set."""
    return [f"telemetry.{t}.group={json.dumps(sweep_name)}" for t in ("wandb", "mlflow")  # quoted: a TOML string
            if getattr(base.telemetry, t).enabled and getattr(base.telemetry, t).group is None]


def finished(run_dir: str) -> bool:
    return os.path.exists(RunDir(run_dir).summary)


def value_at(tree: dict, key: str) -> Any:
    """The value of dotted `key` in a config tree (`KeyError` if it is not there)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict):
            raise KeyError(key)
        node = node[part]
    return node


def grid_point(resolved: dict, keys: list[str]) -> dict[str, Any]:
    """`keys`' values in a validated config (`Config.model_dump(mode="json")`), as its config.json will hold them."""
    try:
        return {k: value_at(resolved, k) for k in keys}
    except KeyError as exc:
        raise SweepError(f"--grid {exc.args[0]}: not a setting of the resolved config (`launch.py config` lists "
                         "every key)") from None


def done_before(run_dir: str, point: dict[str, Any]) -> bool:
    """True when `run_dir` holds a finished run of this grid point: summary.json exists and the config it was
    launched with (launch_config.json; config.json for a run older than that file) has `point`'s values
    (dotted key -> the value as the validated config holds it, seed included)."""
    if not finished(run_dir):
        return False
    files = RunDir(run_dir)
    try:
        with open(files.launch_config if os.path.exists(files.launch_config) else files.config) as f:
            config = json.load(f)
        return all(value_at(config, k) == v for k, v in point.items())
    except (OSError, ValueError, KeyError):
        return False


def outcome(run_dir: str) -> str:
    """What a finished run reached, in a few words (for the progress line)."""
    with open(RunDir(run_dir).summary) as f:
        s = json.load(f)
    parts = [f"{s['learner']['steps']} steps in {s['wall_s']:.0f} s of RL"]
    if s.get("eval"):
        parts.append(f"held-out {s['eval']['before']:.3f} -> {s['eval']['after']:.3f}")
    parts.append(f"staleness mean {s['staleness']['mean']:.2f}")
    return ", ".join(parts)


def sweep(config_path: str | None, sets: list[str], grid_items: list[str], seeds: int, name: str | None,
          output_dir: str | None, cluster: str, extra: list[str]) -> int:
    from asyncor.configs.loader import ConfigError, load_config

    try:
        base = load_config(config_path, sets)
        runs = expand(grid_items, seeds, base.run.seed)
        sweep_name = name or f"{base.run.name}-sweep"
        sets = [*sets, *tracker_groups(base, sweep_name)]
        root = os.path.join(output_dir or base.run.output_dir, sweep_name)
        points = []  # each run's grid values and seed as its validated config holds them
        for r in runs:  # every combination must be a valid config before anything runs
            resolved = load_config(config_path, [*sets, *r.overrides, f"run.name={r.name}"]).model_dump(mode="json")
            points.append(grid_point(resolved, [*r.grid, "run.seed"]))
    except (ConfigError, SweepError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(root, exist_ok=True)
    manifest = {"config": os.path.abspath(config_path) if config_path else None, "set": sets,
                "grid": grid_items, "seeds": seeds,
                "cluster": cluster, "runs": [{**asdict(r), "status": "pending"} for r in runs]}
    _write_manifest(root, manifest)
    print(f"sweep {sweep_name}: {len(runs)} runs in {root}", flush=True)
    failed = 0
    # Runs done before cost nothing (`skip`): the ETA is the runs left over the rate of the runs run here.
    progress = Progress("sweep", len(runs), log=tlog.get("sweep"), unit="runs", every_s=1.0, sweep=sweep_name)
    for i, (r, point, entry) in enumerate(zip(runs, points, manifest["runs"]), start=1):
        run_dir = os.path.join(root, r.name)
        tag = f"[{i}/{len(runs)}] {r.name}"
        if done_before(run_dir, point):
            entry["status"] = "done"
            progress.skip()
            print(f"{tag}: done before ({outcome(run_dir)})", flush=True)
            continue
        if finished(run_dir):
            print(f"{tag}: {run_dir} holds a finished run of other values; running this grid point again",
                  flush=True)
        args = [sys.executable, "-m", "asyncor.launch", "run", "--cluster", cluster, *extra]
        if config_path:
            args += ["--config", config_path]
        for item in [*sets, *r.overrides, f"run.output_dir={root}", f"run.name={r.name}", "run.overwrite=true"]:
            args += ["--set", item]
        start = time.monotonic()
        print(f"{tag}: running ...", flush=True)
        with open(os.path.join(root, f"{r.name}.launch.log"), "w") as log:
            code = _run_child(args, log)
        seconds = time.monotonic() - start
        progress.update()  # a failed run took its time too: it counts into the rate
        left = f"; {len(runs) - i} left, ETA {duration(progress.eta_s())}" if i < len(runs) else ""
        if code == 0 and finished(run_dir):
            entry["status"] = "done"
            print(f"{tag}: done in {seconds:.0f} s ({outcome(run_dir)}){left}", flush=True)
        elif code in (130, 143, 129):  # stopped by a signal: so is the sweep (run it again to continue)
            entry["status"] = "interrupted"
            progress.close(stopped=True)
            _write_manifest(root, manifest)
            print(f"{tag}: interrupted; `launch.py sweep` with the same arguments continues from here",
                  file=sys.stderr, flush=True)
            return code
        else:
            failed += 1
            entry["status"] = f"failed (exit {code})"
            print(f"{tag}: failed (exit {code}) after {seconds:.0f} s; see {root}/{r.name}.launch.log{left}",
                  flush=True)
        _write_manifest(root, manifest)
    progress.close()
    _write_manifest(root, manifest)
    done = sum(e["status"] == "done" for e in manifest["runs"])
    print(f"sweep {sweep_name}: {done}/{len(runs)} runs done{f', {failed} failed' if failed else ''}. "
          f"Report: python launch.py report {root}", flush=True)
    return 1 if failed else 0


def _run_child(args: list[str], log) -> int:
    """One `launch.py run`; Ctrl-C reaches it from the terminal (it stops its roles and exits 130) while the
    sweep, ignoring SIGINT meanwhile, waits for that; SIGTERM / SIGHUP to the sweep are passed on to it (a
    SIGINT sent to the sweep's process alone is not)."""
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    forward = lambda sig, _frame: proc.send_signal(sig)  # noqa: E731
    old = {sig: signal.signal(sig, handler) for sig, handler in
           ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, forward), (signal.SIGHUP, forward))}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _write_manifest(root: str, manifest: dict) -> None:
    path = os.path.join(root, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(path + ".tmp", path)


def command(args) -> int:
    """`launch.py sweep` (its options: launch.py)."""
    return sweep(args.config, args.set, args.grid, args.seeds, args.name, args.output_dir, args.cluster,
                 ["--address", args.address] if args.address else [])
