"""`python -m asyncor.actors --config RUN_DIR/config.json --actor-id I`: actor I (actors/worker.py)."""

from asyncor.actors.worker import main
from asyncor.runtime.entry import Option, run_role
from asyncor.runtime.names import actor_name

if __name__ == "__main__":  # not when a spawned verifier process re-imports this module
    run_role(main, lambda args: actor_name(args.actor_id),
             [Option("--actor-id", "actor_id", {"type": int, "required": True, "help": "which actor (0-based)"})])
