"""Which runs use ZeroMQ CURVE, and their keys (`net.auth`, wire/curve.py, docs/security.md).

`net.auth = "auto"` (the default) turns CURVE on when any ZeroMQ server of the run (buffer, learner
announcements, the launcher's collector) binds an address other than loopback: every cluster run, and a
one-host run with `net.bind_host` set. Loopback-only runs keep it off. `"off"` on an exposed address is the
explicit opt-out, and it is warned about. The resolved value is written into the roles' config.json; the
keys themselves never are (they reach the roles through the environment).
"""

from __future__ import annotations

import sys

from asyncor.wire import curve
from asyncor.wire.zeromq import generate_keys, load_keys
from asyncor.configs.schema import Config
from asyncor.launcher.placement import is_loopback
from asyncor.runtime.run_dir import RunDir


def exposed_binds(config: Config) -> list[str]:
    """The non-loopback addresses the run's servers bind ("*": every interface)."""
    net = config.net
    advertised = {net.buffer_address, net.learner_address, net.launcher_host or net.host}
    binds = {net.bind_address(a) for a in advertised}
    return sorted(b for b in binds if b == "*" or not is_loopback(b))


def resolve_auth(config: Config, run_dir: str) -> curve.CurveKeys | None:
    """Set `config.net.auth` to "curve" or "off"; with curve, the run's keys (generated, or read from
    `net.curve_keys`), saved under `<run_dir>/keys/`."""
    net = config.net
    exposed = exposed_binds(config)
    if net.auth == "auto":
        net.auth = "curve" if exposed else "off"
    if net.auth == "off":
        if exposed:
            print(f"warning: net.auth = off and the run's servers bind {', '.join(exposed)}, not a loopback "
                  "address: anything that can reach their ports can connect (every message is still checked "
                  "and bad ones refused). Remove net.auth = off to use CURVE.", file=sys.stderr, flush=True)
        return None
    keys = load_keys(net.curve_keys) if net.curve_keys else generate_keys()  # ValueError names the file
    curve.save_keys(keys, RunDir(run_dir).keys)
    return keys
