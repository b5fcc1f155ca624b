"""How every role process starts: `python -m asyncor.<role> --config RUN_DIR/config.json [its options]`.

Each role package's `__main__.py` is one call:

    run_role(main, "buffer")                                    # main(config)
    run_role(main, lambda args: f"actor{args.actor_id}", [ACTOR_ID])   # main(config, actor_id=...)

`run_role` parses the command line (`--config`, the resolved config.json the launcher wrote, plus the
role's own options), validates the config, sets up the role's structured log (`logs/<name>.jsonl`, or
stdout on a cluster: telemetry/log.py) and calls `main(config, **options)`. The launcher starts roles by
these module names and imports none of them (launcher/run.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from asyncor.configs.loader import load_resolved
from asyncor.runtime.run_dir import RunDir
from asyncor.telemetry import log as tlog


@dataclass(frozen=True)
class Option:
    """One command-line option of a role, passed to its `main` as the keyword `dest`."""
    flag: str
    dest: str
    kwargs: dict = field(default_factory=dict)


def run_role(main: Callable, name: str | Callable[[argparse.Namespace], str], options: Sequence[Option] = (),
             argv: list[str] | None = None) -> None:
    """Start the role: `name` is its log name (or computes it from the parsed options)."""
    parser = argparse.ArgumentParser(description=f"asyncor role {main.__module__}")
    parser.add_argument("--config", required=True, help="the resolved config.json written by launch.py")
    for option in options:
        parser.add_argument(option.flag, dest=option.dest, **option.kwargs)
    args = parser.parse_args(argv)
    config = load_resolved(args.config)
    role = name(args) if callable(name) else name
    tlog.setup(role, RunDir(config.run_dir).log(role))
    main(config, **{option.dest: getattr(args, option.dest) for option in options})
