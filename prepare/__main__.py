"""`python -m asyncor.prepare --config RUN_DIR/config.json`: build (or find cached) the policy RL starts from
(prepare/warm_start.py)."""

from asyncor.prepare.warm_start import main
from asyncor.runtime.entry import run_role

if __name__ == "__main__":
    run_role(main, "prepare")
