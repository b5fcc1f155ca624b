"""The run's CURVE keys (`net.auth = "curve"`, docs/security.md): what they are, where they live, how roles
get them. The transport makes and reads them, and secures every listener and connection with them
(wire/zeromq.py `generate_keys`, `load_keys`).

A run has two key pairs: one for the servers (buffer, learner announcements, launcher collector) and one for
the clients (actors, learner, every role's telemetry link). A server lets in only connections that prove they
hold the client secret key; a client must know the server's public key and hold the client pair.

The launcher generates the keys (or reads them from `net.curve_keys`), writes them under `<run_dir>/keys/`
(launcher/auth.py; the directory 0700, secret-key files 0600) and hands them to every role in the
`ASYNCOR_CURVE_KEYS` environment variable. They do not appear on a command line, so other users of a node
never see them in `ps`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV = "ASYNCOR_CURVE_KEYS"


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    def to_env(self) -> dict[str, str]:
        # Z85 text has no ','.
        return {ENV: ",".join(k.decode() for k in (self.server_public, self.server_secret, self.client_public,
                                                   self.client_secret))}


def save_keys(keys: CurveKeys, directory: str) -> None:
    """Key files in ZeroMQ's certificate format (zmq.auth.load_certificate reads them); secrets are 0600."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, public, secret in (("server", keys.server_public, keys.server_secret),
                                 ("client", keys.client_public, keys.client_secret)):
        for suffix, with_secret in (("key", False), ("key_secret", True)):
            path = os.path.join(directory, f"{name}.{suffix}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if with_secret else 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
                if with_secret:
                    f.write(f'    secret-key = "{secret.decode()}"\n')


def from_env(environ=os.environ) -> CurveKeys:
    """The keys the launcher gave this role; a clear error if it gave none."""
    parts = environ.get(ENV, "").split(",")
    if len(parts) != 4 or not all(len(p) == 40 for p in parts):
        raise RuntimeError(f'net.auth = "curve" but {ENV} does not hold the run\'s keys: start roles with '
                           "launch.py, which generates them")
    return CurveKeys(*(p.encode() for p in parts))


def role_keys(auth: str) -> CurveKeys | None:
    """The keys a role uses for its sockets: None unless the (resolved) config says curve."""
    return from_env() if auth == "curve" else None
