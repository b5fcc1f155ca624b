"""Structured logging: every role writes JSON lines to `runs/<name>/logs/<role>.jsonl`.

`setup(role, run_dir)` configures structlog once per process; `get()` returns
the bound logger. Lines carry `ts`, `role`, `level`, `event` and key/values.
"""

from __future__ import annotations

import os
import sys

import structlog


def setup(role: str, run_dir: str | None) -> structlog.BoundLogger:
    """Log to `<run_dir>/logs/<role>.jsonl` (line-buffered), or stderr without a run dir."""
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]
    if run_dir is None:
        stream = sys.stderr
    else:
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        stream = open(os.path.join(run_dir, "logs", f"{role}.jsonl"), "a", buffering=1)
    structlog.configure(processors=processors, logger_factory=structlog.PrintLoggerFactory(stream),
                        cache_logger_on_first_use=True)
    return structlog.get_logger().bind(role=role)


def get(role: str | None = None) -> structlog.BoundLogger:
    logger = structlog.get_logger()
    return logger.bind(role=role) if role else logger
