"""`python -m asyncor.learner --config RUN_DIR/config.json`: one learner rank (learner/trainer.py); the rank and
world size come from the torch.distributed environment (RANK, WORLD_SIZE, ...) the launcher sets."""

import os

from asyncor.learner.trainer import main
from asyncor.runtime.entry import run_role

if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    run_role(main, "learner" if rank == 0 else f"learner{rank}")
