"""`python -m asyncor.buffer --config RUN_DIR/config.json`: the buffer role (buffer/service.py)."""

from asyncor.buffer.service import main
from asyncor.runtime.entry import run_role

if __name__ == "__main__":
    run_role(main, "buffer")
