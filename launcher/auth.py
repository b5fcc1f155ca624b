"""Which runs use ZeroMQ CURVE, and their keys (`net.auth`, wire/curve.py, docs/security.md).

`net.auth = "auto"` (the default) turns CURVE on when any ZeroMQ server of the run (buffer, learner
announcements, the launcher's collector) binds an address other than loopback: every cluster run, and a
one-host run with `net.bind_host` set. Loopback-only runs keep it off (and every listener, the
torch.distributed stores included, then binds loopback: sync/group.py). `"off"` on an exposed address is the
explicit opt-out, and it is warned about. The resolved value is written into the roles' config.json; the
keys themselves never are (they reach the roles through the environment, each role only its own secret).
"""

from __future__ import annotations

import sys

from asyncor.configs.schema import Config
from asyncor.launcher.placement import is_loopback
from asyncor.runtime.names import actor_name, learner_name
from asyncor.runtime.run_dir import RunDir
from asyncor.wire import curve
from asyncor.wire.zeromq import generate_keys, load_server_pair

ONE_OFF_ROLES = ("launcher", "prepare", "eval_before", "eval_after")  # besides the buffer, learners and actors
SERVERS = {"buffer", learner_name(0), "launcher"}  # they listen (learner rank 0: its weight announcements)


def exposed_binds(config: Config) -> list[str]:
    """The non-loopback addresses the run's servers bind ("*": every interface)."""
    net = config.net
    advertised = {net.buffer_address, net.learner_address, net.launcher_host or net.host}
    binds = {net.bind_address(a) for a in advertised}
    return sorted(b for b in binds if b == "*" or not is_loopback(b))


def run_roles(config: Config) -> list[str]:
    """Every role the launcher may start in this run (each gets a key pair of its own), and the launcher."""
    return [*ONE_OFF_ROLES, "buffer", *(learner_name(r) for r in range(config.learner.ranks)),
            *(actor_name(i) for i in range(config.actors.count))]


def resolve_auth(config: Config, run_dir: str) -> curve.RunKeys | None:
    """Set `config.net.auth` to "curve" or "off"; with curve, the run's keys (the server pair generated, or read
    from `net.curve_keys`; a new pair for every role), the public ones and the server pair saved under
    `<run_dir>/keys/`."""
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
    server_pair = load_server_pair(net.curve_keys) if net.curve_keys else None  # ValueError names the file
    keys = generate_keys(run_roles(config), SERVERS, server_pair)
    curve.save_keys(keys, RunDir(run_dir).keys)
    return keys
