"""A role's final figures: `runs/<name>/roles/<role>.json`, read by launcher/summary.py.

Under `launch.py` the summary travels to the launcher as an acknowledged
message (telemetry/link.py), so the role may run on any node; started by hand,
or if the launcher does not acknowledge in time, the role writes the file
itself.
"""

from __future__ import annotations

import json
import os

from asyncor.runtime.run_dir import RunDir
from asyncor.telemetry import log as tlog


def write_role_summary(config, name: str, summary: dict) -> None:
    """`name`: the role's name (runtime/names.py: buffer, learner, actor<i>, prepare, eval_before, eval_after).
    Returns once the launcher (or the file) has it."""
    # The form it has on disk: string keys (msgpack maps with int keys are refused), numbers, lists.
    summary = json.loads(json.dumps(summary))
    address = config.net.telemetry_address
    if address:
        from asyncor.telemetry.link import link_to

        if link_to(address).summary(name, summary, config.net.request_timeout_s):
            return
        tlog.get(name).warning("summary_not_acknowledged", launcher=address,
                                           fallback="written to the run directory")
    path = RunDir(config.run_dir).role(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, path)
