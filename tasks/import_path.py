"""A user's code named by import path, "package.module:name" (task.source, task.reward): imported in the process
that needs it, with an error that names the config field and why."""

from __future__ import annotations

import importlib
from collections.abc import Callable


class ImportPathError(ValueError):
    """`field` names nothing callable; the message says what was found."""


def load_callable(path: str, field: str, form: str = "package.module:name") -> Callable:
    """The callable at `path` (written as `form`); ImportPathError naming `field` otherwise (any exception of
    the user's import is reported, never raised as is)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportPathError(f"{field} = {path!r}: expected \"{form}\"")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure importing user code is the user's to read
        raise ImportPathError(f"{field} = {path!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") \
            from None
    found = getattr(module, attr, None)
    if not callable(found):
        raise ImportPathError(f"{field} = {path!r}: {module_name} has no callable {attr!r}")
    return found
