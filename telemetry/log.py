"""Structured logging: every role writes JSON lines to its log file (`runs/<name>/logs/<role>.jsonl`).

On a cluster (ASYNCOR_LOG_TO_STDOUT=1, set by the SLURM and Ray back-ends) the lines go to stdout
instead, which the back-end gathers into `logs/<role>.out` on the launcher's host, whichever node the
role runs on.

`setup(role, path)` configures structlog once per process (runtime/entry.py calls it); `get(role)` returns
a logger bound to `role` (without a role, an unbound one). Lines carry `timestamp` (ISO 8601, UTC), `role`,
`level`, `event` and key/values.
"""

from __future__ import annotations

import os
import sys

import structlog


def setup(role: str, path: str | None) -> structlog.BoundLogger:
    """Log to the file `path` (line-buffered, appended to); to stdout instead when ASYNCOR_LOG_TO_STDOUT=1;
    to stderr without a path."""
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]
    if path is None:
        stream = sys.stderr
    elif os.environ.get("ASYNCOR_LOG_TO_STDOUT") == "1":
        stream = sys.stdout
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        stream = open(path, "a", buffering=1)
    structlog.configure(processors=processors, logger_factory=structlog.PrintLoggerFactory(stream),
                        cache_logger_on_first_use=True)
    return structlog.get_logger().bind(role=role)


def get(role: str | None = None) -> structlog.BoundLogger:
    logger = structlog.get_logger()
    return logger.bind(role=role) if role else logger
