#!/usr/bin/env python3
"""asyncor: asynchronous actor-learner RL for reasoning LLMs.

    python launch.py run                                   # the tiny default (configs/tiny.toml)
    python launch.py run --config configs/tiny.toml --set buffer.max_staleness=0 --set actors.count=2
    python launch.py config                                # print every key, its default and docstring

The config is parsed and validated before anything heavy is imported, so
`--help` and config errors are instant.
"""

from __future__ import annotations

import argparse
import sys


def _print_config_reference() -> None:
    from configs.schema import Config

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if hasattr(ann, "model_fields"):
                walk(ann, f"{prefix}{name}.")
            else:
                default = field.get_default(call_default_factory=True)
                print(f"{prefix}{name} = {default!r}\n    {field.description or ''}")

    walk(Config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="run buffer + learner + actors on this machine")
    run_p.add_argument("--config", default=None, help="TOML run file (default: configs/tiny.toml)")
    run_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key, e.g. --set buffer.max_staleness=0 (repeatable)")
    sub.add_parser("config", help="list every config key with its default and meaning")
    args = parser.parse_args(argv)

    if args.command == "config":
        _print_config_reference()
        return 0
    if args.command in (None, "run"):
        from configs.loader import ConfigError, load_config

        try:
            config = load_config(getattr(args, "config", None), getattr(args, "set", []))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from launcher.run import RunFailed, run

        try:
            run(config)
        except RunFailed as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: every role was stopped.", file=sys.stderr)
            return 130
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
