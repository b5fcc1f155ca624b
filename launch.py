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
    python launch.py eval --model runs/calculator/final --config configs/calculator.toml   # a multi-turn task
    python launch.py export runs/tiny-lora --out exported/   # newest checkpoint (a LoRA adapter merged) -> HF dir
    python launch.py filter --model DIR --data IN.parquet --out OUT.parquet --samples 16  # difficulty filter
    python launch.py plan --config configs/skywork_or1_7b.toml --nodes 2 --gpus-per-node 8   # who runs where
    python launch.py run --cluster slurm --config configs/skywork_or1_7b.toml     # inside salloc / sbatch
    python launch.py submit --cluster slurm --nodes 2 --config configs/skywork_or1_7b.toml -- --time=24:00:00
    python launch.py run --cluster ray --address auto --config configs/skywork_or1_7b.toml

(Installed, `asyncor` is the same command: `asyncor run ...`.) Each subcommand is a row of `COMMANDS`: its
options, and the function that runs it, imported only when it runs, so `--help` and config errors are
instant. The supervisor's commands live in launcher/cli.py, the studies' in studies/.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: Callable[[argparse.ArgumentParser], None]
    target: str  # "module:function"; the function takes the parsed arguments and returns the exit code


def _config_options(p: argparse.ArgumentParser, set_help: str = "override one key") -> None:
    p.add_argument("--config", default=None, help="TOML run file (default: configs/tiny.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def _cluster_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--cluster", default="local", choices=["local", "slurm", "ray"], help=help)
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else 'auto')")


def run_options(p: argparse.ArgumentParser) -> None:
    _config_options(p, "override one key, e.g. --set buffer.max_staleness=0 (repeatable)")
    _cluster_option(p, "where roles run: this machine (default), the nodes of the SLURM allocation this runs in "
                       "(salloc / sbatch), or an existing Ray cluster")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue a run from its newest checkpoint (or from the checkpoint directory given), with the "
                        "config it was launched with; --set still applies (e.g. a larger learner.steps)")
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="GPUs the plan uses per node (default: what SLURM or Ray reports)")


def submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="slurm", choices=["slurm"], help="the scheduler (slurm)")
    _config_options(p)
    p.add_argument("--nodes", type=int, default=1, help="nodes to allocate (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs to allocate per node (--gpus-per-node)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end (sbatch --wait); exit with its status")
    p.add_argument("sbatch_args", nargs="*", metavar="-- SBATCH_OPTION",
                   help="further sbatch options after `--`, e.g. -- --partition=gpu --time=24:00:00")


def sweep_options(p: argparse.ArgumentParser) -> None:
    _config_options(p, "override one key in every run (repeatable)")
    p.add_argument("--grid", action="append", default=[], required=True, metavar="KEY=V1,V2,...",
                   help="one axis of the grid (repeatable; the product of all axes runs). KEY1+KEY2=A1+B1,A2+B2 links "
                        "keys that change together")
    p.add_argument("--seeds", type=int, default=1, help="runs per grid point: run.seed, run.seed + 1, ...")
    p.add_argument("--name", default=None, help="sweep directory name (default: <run.name>-sweep)")
    p.add_argument("--output-dir", default=None, help="where the sweep directory goes (default: run.output_dir)")
    _cluster_option(p, "where each run's roles run (as `launch.py run --cluster`)")


def report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or sweep directories")
    p.add_argument("--out", default=None, help="where report.md and the plots go (default: the one DIR given, else "
                                               "./report)")


def advise_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML run file the advice is for (default: the --from run's config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_runs", nargs="+", default=None, metavar="RUN_DIR",
                        help="read the rates from these finished runs (e.g. one at eta 0 and one above)")
    source.add_argument("--calibrate", action="store_true", help="measure them with a short run of the config first")
    p.add_argument("--calibration-steps", type=int, default=40, help="learner steps of --calibrate (40)")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the cluster to plan for (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="devices per node (default 8)")
    p.add_argument("--sim-steps", type=int, default=40, help="learner steps each split is simulated for (40)")
    p.add_argument("--learner-efficiency", type=float, default=1.0,
                   help="learner rate per doubling of its ranks relative to linear (1.0 = linear; e.g. 0.9)")
    p.add_argument("--check", nargs="*", default=[], metavar="RUN_DIR",
                   help="finished runs (or sweeps) to set predicted against measured")
    p.add_argument("--out", default=None, help="where advice.md goes (default: in the first --from run, or the "
                                               "calibration run)")


def plan_options(p: argparse.ArgumentParser) -> None:
    _config_options(p)
    p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node (0: CPU nodes)")
    p.add_argument("--out", default=None, help="also write the plan as JSON to this file")


def _sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face model directory (e.g. runs/<name>/final), or a LoRA "
                                                   "adapter (peft directory, LoRA checkpoint or run): merged first")
    p.add_argument("--base", default=None, help="with a LoRA adapter as --model: its base model directory (default: "
                                                "the adapter's base_model_name_or_path)")
    p.add_argument("--data", required=True, nargs="+", help="data files: verl or plain layout, .jsonl or .parquet")
    _episode_options(p)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--max-tokens", type=int, default=1024, help="response length limit (default 1024)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts are dropped (counted)")
    p.add_argument("--workers", type=int, default=2, help="verifier processes (default 2)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--format", default="auto", choices=["auto", "verl", "plain"], help="data layout")


def _episode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="a run's TOML file: its [task.env] runs multi-turn episodes (a "
                                                  "tool, an environment server); without --data (eval), its task's "
                                                  "held-out split is evaluated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --config, e.g. --set task.env.tool_enabled=false")


def eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=4, help="samples per problem (default 4)")
    p.add_argument("--out", default=None, help="output directory (default: <model>/eval)")
    _sampling_options(p)
    for action in p._actions:  # eval: --data may be left out when --config names a task with a held-out split
        if action.dest == "data":
            action.required, action.nargs, action.default = False, "*", []


def export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a run directory (its newest checkpoint), a checkpoint, or a LoRA adapter directory")
    p.add_argument("--out", required=True, help="the Hugging Face model directory to write")
    p.add_argument("--base", default=None, help="a LoRA adapter's base model (default: its base_model_name_or_path)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype of the export (default: the base's, or the checkpoint's float32)")


def filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="kept rows, same layout (.jsonl or .parquet)")
    p.add_argument("--samples", type=int, default=16, help="N samples per problem (paper: 16 math, 8 code)")
    _sampling_options(p)


COMMANDS = (
    Command("run", "run buffer + learner + actors (this machine, a SLURM allocation or Ray)", run_options,
            "asyncor.launcher.cli:run_command"),
    Command("submit", "write and submit a batch script that runs `launch.py run --cluster slurm`", submit_options,
            "asyncor.launcher.cli:submit_command"),
    Command("sweep", "run a grid of overrides x seeds, one run directory each (resumable)", sweep_options,
            "asyncor.studies.sweep:command"),
    Command("report", "report.md + plots (PNG) for runs or sweeps: curves, staleness, time per role, a table with "
                      "mean +- std over seeds", report_options, "asyncor.studies.report:command"),
    Command("advise", "actor:learner split for a cluster, from a run's measured rates and a simulation of the "
                      "pipeline (docs/tuning.md)", advise_options, "asyncor.studies.advisor:command"),
    Command("config", "list every config key with its default and meaning", lambda p: None,
            "asyncor.launcher.cli:config_command"),
    Command("plan", "which role runs on which node and GPU of a cluster (nothing starts)", plan_options,
            "asyncor.launcher.cli:plan_command"),
    Command("eval", "avg@k and pass@k of a saved policy on local data (jsonl / parquet)", eval_options,
            "asyncor.studies.dataset_eval:eval_command"),
    Command("export", "a checkpoint or LoRA adapter as one Hugging Face model directory (adapters merged)",
            export_options, "asyncor.studies.export:command"),
    Command("filter", "offline difficulty filter: keep problems solved by 1..N-1 of N samples", filter_options,
            "asyncor.studies.dataset_eval:filter_command"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for command in COMMANDS:
        command.options(sub.add_parser(command.name, help=command.help))
    args = parser.parse_args(argv)
    if args.command is None:  # `python launch.py`: run the default config
        args = parser.parse_args(["run"])
    target = next(c.target for c in COMMANDS if c.name == args.command)
    module, function = target.split(":")
    # A user's task or reward by import path (task.source, task.reward) imports from where you launch, as in the
    # roles, which start there with `python -m` (docs/custom_tasks.md); appended, so it never shadows a package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        run = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("asyncor"):
            print("error: the asyncor package is not installed in this Python: pip install -e . (README)",
                  file=sys.stderr)
            return 2
        raise
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
