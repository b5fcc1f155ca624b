"""The supervisor's subcommands of launch.py: `run`, `submit`, `plan` and `config`.

Each takes the parsed command line (launch.py's table says which options) and returns the process's exit
code: 0, 1 for a run that failed, 2 for a command line or config that cannot be used (the message names
the key or option), 128 + the signal's number for a run stopped by a signal.
"""

from __future__ import annotations

import json
import sys

from asyncor.configs.loader import ConfigError, load_config


def run_command(args) -> int:
    """`launch.py run`: a new run, or one continued from its checkpoint (`--resume`)."""
    try:
        if args.resume:
            if args.config:
                raise ConfigError("--resume continues a run with the config it was launched with; "
                                  "drop --config (change keys with --set)")
            from asyncor.launcher.resume import resume_config

            config = resume_config(args.resume, args.set)
        else:
            config = load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from asyncor.launcher.run import RunFailed, run
    from asyncor.launcher.stop_signals import Interrupted

    try:
        run(config, args.cluster, args.address, args.gpus_per_node)
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


def submit_command(args) -> int:
    """`launch.py submit`: a SLURM batch script that runs `launch.py run --cluster slurm`, submitted."""
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


def plan_command(args) -> int:
    """`launch.py plan`: which role would run on which node and GPU (nothing starts)."""
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


def config_command(args) -> int:
    """`launch.py config`: every key, its default, its choices (for a fixed set) and its docstring."""
    import typing

    from asyncor.configs.schema import Config

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if hasattr(ann, "model_fields"):
                walk(ann, f"{prefix}{name}.")
            else:
                default = field.get_default(call_default_factory=True)
                choices = typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else ()
                one_of = f"   (one of: {', '.join(map(str, choices))})" if choices else ""
                print(f"{prefix}{name} = {default!r}{one_of}\n    {field.description or ''}")

    walk(Config)
    return 0
