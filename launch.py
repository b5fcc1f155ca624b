#!/usr/bin/env python3
"""asyncor: asynchronous actor-learner RL for reasoning LLMs.

    python launch.py run                                   # the tiny default (configs/tiny.toml)
    python launch.py run --config configs/tiny.toml --set buffer.max_staleness=0 --set actors.count=2
    python launch.py run --resume runs/tiny                # continue from its newest checkpoint
    python launch.py run --resume runs/tiny --set learner.steps=300   # train a finished run further
    python launch.py sweep --grid buffer.max_staleness=0,2 --grid actors.count=1,2 --seeds 3 --name eta-actors
    python launch.py report runs/eta-actors                # report.md + plots for a sweep (or runs)
    python launch.py advise --from runs/tiny --nodes 4 --gpus-per-node 8   # actor:learner split, simulated
    python launch.py config                                # print every key, its default and docstring
    python launch.py eval --model runs/tiny/final --data tests/data/math.jsonl --k 4   # avg@k / pass@k
    python launch.py filter --model DIR --data IN.parquet --out OUT.parquet --samples 16  # difficulty filter
    python launch.py plan --config configs/skywork_or1_7b.toml --nodes 2 --gpus-per-node 8   # who runs where
    python launch.py run --cluster slurm --config configs/skywork_or1_7b.toml     # inside salloc / sbatch
    python launch.py submit --cluster slurm --nodes 2 --config configs/skywork_or1_7b.toml -- --time=24:00:00
    python launch.py run --cluster ray --address auto --config configs/skywork_or1_7b.toml

The config is parsed and validated before anything heavy is imported, so
`--help` and config errors are instant.
"""

from __future__ import annotations

import argparse
import sys


def _print_config_reference() -> None:
    from asyncor.configs.schema import Config

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if hasattr(ann, "model_fields"):
                walk(ann, f"{prefix}{name}.")
            else:
                default = field.get_default(call_default_factory=True)
                print(f"{prefix}{name} = {default!r}\n    {field.description or ''}")

    walk(Config)


def _sample_command(args) -> int:
    """`eval` and `filter`: sample a saved policy on data files and score the samples."""
    import os

    from asyncor.tasks.dataset import DataError

    if not os.path.isfile(os.path.join(args.model, "config.json")):
        print(f"error: --model {args.model}: not a model directory (no config.json)", file=sys.stderr)
        return 2
    missing = [path for path in args.data if not os.path.isfile(path)]
    if missing:
        print(f"error: --data {' '.join(missing)}: no such file", file=sys.stderr)
        return 2
    k = args.k if args.command == "eval" else args.samples
    if k < 1 or args.temperature < 0 or args.max_tokens < 1:
        print("error: --k / --samples and --max-tokens must be >= 1 and --temperature >= 0", file=sys.stderr)
        return 2
    from asyncor.studies.dataset_eval import EvalSettings, evaluate_files, filter_files
    from asyncor.actors.engine import cpu_environment

    cache = os.path.abspath(os.path.join(".cache", "asyncor", "vllm"))
    for key, value in cpu_environment(1.0, f"0-{(os.cpu_count() or 1) - 1}", cache).items():
        os.environ.setdefault(key, value)
    settings = EvalSettings(k=k, temperature=args.temperature, max_tokens=args.max_tokens,
                            max_prompt_tokens=args.max_prompt_tokens, seed=args.seed, workers=args.workers,
                            data_format=args.format)
    try:
        if args.command == "filter":
            result = filter_files(args.model, args.data, args.out, settings)
            print(f"kept {result['kept']} of {result['problems']} problems (never solved {result['never_solved']}, "
                  f"always solved {result['always_solved']}, of {k} samples each)")
            print(f"kept rows: {result['out']}; pass counts: {result['pass_counts']}")
            return 0
        out = args.out or os.path.join(args.model, "eval")
        summary = evaluate_files(args.model, args.data, out, settings)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k = summary["k"]
    print(f"{'data source':<28} {'n':>5} {f'avg@{k}':>8} {f'pass@{k}':>8}")
    for source, row in [*summary["by_source"].items(), ("overall", summary["overall"])]:
        print(f"{source:<28} {row['n']:>5} {row[f'avg@{k}']:>8.3f} {row[f'pass@{k}']:>8.3f}")
    print(f"per-problem results: {os.path.join(out, 'problems.jsonl')}; summary: {os.path.join(out, 'summary.json')}")
    return 0


def _plan_command(args) -> int:
    import json

    from asyncor.configs.loader import ConfigError, load_config
    from asyncor.launcher.plan import PlanError, make_plan

    try:
        # The data may live on the cluster only: its paths are not checked here.
        plan = make_plan(load_config(args.config, args.set, check_files=False), args.nodes, args.gpus_per_node)
    except (ConfigError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plan.table())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(plan.to_json(), f, indent=2)
    return 0


def _submit_command(args) -> int:
    from asyncor.configs.loader import ConfigError, load_config
    from asyncor.launcher.slurm import SubmitError, submit

    try:
        config = load_config(args.config, args.set)
        job = submit(config, args.config, args.set, args.nodes, args.gpus_per_node, args.sbatch_args, args.wait)
    except (ConfigError, SubmitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job.job_id}: script {job.script}, output {job.output}")
    if args.wait:
        print(f"job {job.job_id} ended with exit code {job.exit_code}")
        return 0 if job.exit_code == 0 else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="run buffer + learner + actors (this machine, a SLURM allocation or Ray)")
    run_p.add_argument("--config", default=None, help="TOML run file (default: configs/tiny.toml)")
    run_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key, e.g. --set buffer.max_staleness=0 (repeatable)")
    run_p.add_argument("--cluster", default="local", choices=["local", "slurm", "ray"],
                       help="where roles run: this machine (default), the nodes of the SLURM allocation this "
                            "runs in (salloc / sbatch), or an existing Ray cluster")
    run_p.add_argument("--resume", default=None, metavar="RUN_DIR",
                       help="continue a run from its newest checkpoint (or from the checkpoint directory given), "
                            "with the config it was launched with; --set still applies (e.g. a larger "
                            "learner.steps)")
    run_p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else 'auto')")
    run_p.add_argument("--gpus-per-node", type=int, default=None,
                       help="GPUs the plan uses per node (default: what SLURM or Ray reports)")
    submit_p = sub.add_parser("submit", help="write and submit a batch script that runs `launch.py run --cluster slurm`")
    submit_p.add_argument("--cluster", default="slurm", choices=["slurm"], help="the scheduler (slurm)")
    submit_p.add_argument("--config", default=None, help="TOML run file (default: configs/tiny.toml)")
    submit_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    submit_p.add_argument("--nodes", type=int, default=1, help="nodes to allocate (default 1)")
    submit_p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs to allocate per node (--gpus-per-node)")
    submit_p.add_argument("--wait", action="store_true", help="wait for the job to end (sbatch --wait); exit with its status")
    submit_p.add_argument("sbatch_args", nargs="*", metavar="-- SBATCH_OPTION",
                          help="further sbatch options after `--`, e.g. -- --partition=gpu --time=24:00:00")
    sweep_p = sub.add_parser("sweep", help="run a grid of overrides x seeds, one run directory each (resumable)")
    sweep_p.add_argument("--config", default=None, help="TOML run file (default: configs/tiny.toml)")
    sweep_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one key in every run (repeatable)")
    sweep_p.add_argument("--grid", action="append", default=[], required=True, metavar="KEY=V1,V2,...",
                         help="one axis of the grid (repeatable; the product of all axes runs). "
                              "KEY1+KEY2=A1+B1,A2+B2 links keys that change together")
    sweep_p.add_argument("--seeds", type=int, default=1, help="runs per grid point: run.seed, run.seed + 1, ...")
    sweep_p.add_argument("--name", default=None, help="sweep directory name (default: <run.name>-sweep)")
    sweep_p.add_argument("--output-dir", default=None, help="where the sweep directory goes (default: run.output_dir)")
    sweep_p.add_argument("--cluster", default="local", choices=["local", "slurm", "ray"],
                         help="where each run's roles run (as `launch.py run --cluster`)")
    sweep_p.add_argument("--address", default=None, help="Ray cluster address (--cluster ray)")
    report_p = sub.add_parser("report", help="report.md + plots (PNG) for runs or sweeps: curves, staleness, "
                                             "time per role, a table with mean +- std over seeds")
    report_p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or sweep directories")
    report_p.add_argument("--out", default=None, help="where report.md and the plots go (default: the one DIR "
                                                      "given, else ./report)")
    advise_p = sub.add_parser("advise", help="actor:learner split for a cluster, from a run's measured rates and a "
                                             "simulation of the pipeline (docs/tuning.md)")
    advise_p.add_argument("--config", default=None, help="TOML run file the advice is for (default: the --from "
                                                         "run's config)")
    advise_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    source = advise_p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_runs", nargs="+", default=None, metavar="RUN_DIR",
                        help="read the rates from these finished runs (e.g. one at eta 0 and one above)")
    source.add_argument("--calibrate", action="store_true",
                        help="measure them with a short run of the config first")
    advise_p.add_argument("--calibration-steps", type=int, default=40, help="learner steps of --calibrate (40)")
    advise_p.add_argument("--nodes", type=int, default=1, help="nodes of the cluster to plan for (default 1)")
    advise_p.add_argument("--gpus-per-node", type=int, default=8, help="devices per node (default 8)")
    advise_p.add_argument("--sim-steps", type=int, default=40, help="learner steps each split is simulated for (40)")
    advise_p.add_argument("--learner-efficiency", type=float, default=1.0,
                          help="learner rate per doubling of its ranks relative to linear (1.0 = linear; e.g. 0.9)")
    advise_p.add_argument("--check", nargs="*", default=[], metavar="RUN_DIR",
                          help="finished runs (or sweeps) to set predicted against measured")
    advise_p.add_argument("--out", default=None, help="where advice.md goes (default: in the calibration run)")
    sub.add_parser("config", help="list every config key with its default and meaning")
    plan_p = sub.add_parser("plan", help="which role runs on which node and GPU of a cluster (nothing starts)")
    plan_p.add_argument("--config", default=None, help="TOML run file (default: configs/tiny.toml)")
    plan_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    plan_p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation")
    plan_p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (0: CPU nodes)")
    plan_p.add_argument("--out", default=None, help="also write the plan as JSON to this file")
    eval_p = sub.add_parser("eval", help="avg@k and pass@k of a saved policy on local data (jsonl / parquet)")
    eval_p.add_argument("--k", type=int, default=4, help="samples per problem (default 4)")
    eval_p.add_argument("--out", default=None, help="output directory (default: <model>/eval)")
    filter_p = sub.add_parser("filter", help="offline difficulty filter: keep problems solved by 1..N-1 of N samples")
    filter_p.add_argument("--out", required=True, help="kept rows, same layout (.jsonl or .parquet)")
    filter_p.add_argument("--samples", type=int, default=16, help="N samples per problem (paper: 16 math, 8 code)")
    for p in (eval_p, filter_p):
        p.add_argument("--model", required=True, help="Hugging Face model directory (e.g. runs/<name>/final)")
        p.add_argument("--data", required=True, nargs="+", help="data files: verl or plain layout, .jsonl or .parquet")
        p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
        p.add_argument("--max-tokens", type=int, default=1024, help="response length limit (default 1024)")
        p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts are dropped (counted)")
        p.add_argument("--workers", type=int, default=2, help="verifier processes (default 2)")
        p.add_argument("--seed", type=int, default=1234)
        p.add_argument("--format", default="auto", choices=["auto", "verl", "plain"], help="data layout")
    args = parser.parse_args(argv)

    if args.command in ("eval", "filter"):
        return _sample_command(args)

    if args.command == "config":
        _print_config_reference()
        return 0
    if args.command == "sweep":
        from asyncor.studies.sweep import sweep

        return sweep(args.config, args.set, args.grid, args.seeds, args.name, args.output_dir, args.cluster,
                     ["--address", args.address] if args.address else [])
    if args.command == "report":
        from asyncor.studies.report import ReportError, write_report

        try:
            path = write_report(args.dirs, args.out)
        except ReportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"report: {path}")
        return 0
    if args.command == "advise":
        from asyncor.studies.advisor import advise

        if args.nodes < 1 or args.gpus_per_node < 1 or args.sim_steps < 3 or args.calibration_steps < 3 \
                or not 0 < args.learner_efficiency <= 1:
            print("error: --nodes and --gpus-per-node must be >= 1, --sim-steps and --calibration-steps >= 3, "
                  "--learner-efficiency in (0, 1]", file=sys.stderr)
            return 2
        return advise(args.config, args.set, args.from_runs, args.calibration_steps if args.calibrate else None,
                      args.nodes, args.gpus_per_node, args.sim_steps, args.check, args.out,
                      efficiency=args.learner_efficiency)
    if args.command == "plan":
        return _plan_command(args)
    if args.command == "submit":
        return _submit_command(args)
    if args.command in (None, "run"):
        from asyncor.configs.loader import ConfigError, load_config

        try:
            if getattr(args, "resume", None):
                if args.config:
                    raise ConfigError("--resume continues a run with the config it was launched with; "
                                      "drop --config (change keys with --set)")
                from asyncor.launcher.resume import resume_config

                config = resume_config(args.resume, args.set)
            else:
                config = load_config(getattr(args, "config", None), getattr(args, "set", []))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from asyncor.launcher.run import RunFailed, run
        from asyncor.launcher.stop_signals import Interrupted

        try:
            run(config, getattr(args, "cluster", "local"), getattr(args, "address", None),
                getattr(args, "gpus_per_node", None))
        except RunFailed as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
        except Interrupted as exc:  # Ctrl-C, SIGTERM or SIGHUP while running: exit 128 + the signal's number
            print(f"\ninterrupted ({exc.name}): every role was stopped.", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:  # Ctrl-C in the instant before run() installs its handlers
            print("\ninterrupted before any role started.", file=sys.stderr)
            return 130
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
