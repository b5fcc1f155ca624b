"""The run's CURVE keys (`net.auth = "curve"`, docs/security.md): what they are, where they live, how roles
get them. The transport makes and reads them, and secures every listener and connection with them
(wire/zeromq.py `generate_keys`, `load_server_pair`).

A run has one **server pair**, shared by the roles that listen (buffer, learner rank 0 for its weight
announcements, the launcher's collector), and one **key pair per role** (`actor3`, `learner`, `learner1`,
`buffer`, `prepare`, `eval_before`, ...; runtime/names.py). A server lets in only connections that prove
they hold the secret key of one of the run's roles, and ZeroMQ tags every message with that role's name
(the ZAP `User-Id`). A role may then speak only under its own name: a socket identity `ROLE` or
`ROLE/<channel>` is accepted only from ROLE's key (wire/zeromq.py drops and counts the rest). A connection
with an identity travels as `<identity>#<tag>`, the tag (`routing_tag`) known only to the role and the
servers, so no other key holder can take over a live connection's name (ZeroMQ's ROUTER handover), while
the role's own restarted process, which has the same tag, takes over its predecessor's at once.

Each role receives only what it needs, in the `ASYNCOR_CURVE_KEYS` environment variable (JSON): its own pair
and routing tag, the servers' public key, and, for the roles that listen, the server secret key and every
role's public key (who may connect, and as whom). Nothing is on a command line, so other users of a node
never see the keys in `ps`. The launcher writes the server pair and every role's public key under
`<run_dir>/keys/` (launcher/auth.py; the directory 0700, the secret-key file 0600); no role's secret key is
written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field

ENV = "ASYNCOR_CURVE_KEYS"
KEY_CHARS = 40  # a Z85-encoded CURVE key


def routing_tag(server_secret: bytes, role: str) -> str:
    """The suffix of `role`'s socket identities: computable only with the server secret key, so a key holder
    cannot guess another role's (it would need it to take over that role's connection)."""
    return hmac.new(server_secret, role.encode(), hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class CurveKeys:
    """What one role holds (the launcher's collector is the role `launcher`)."""

    server_public: bytes
    """The servers' public key: every connection checks the server it reaches holds the server secret."""
    server_secret: bytes
    """The server secret key; b"" for roles that only connect."""
    client_public: bytes
    """This role's own public key: servers know the role by it."""
    client_secret: bytes
    """This role's own secret key: proves it is the role."""
    role: str = ""
    """The role the pair was issued to: its name at every server (the ZAP User-Id)."""
    tag: str = ""
    """This role's routing tag (`routing_tag`): appended to its sockets' identities."""
    peers: dict[str, bytes] = field(default_factory=dict)
    """Listening roles only: every role's name -> its public key (who may connect, and as whom)."""

    def to_env(self) -> dict[str, str]:
        doc = {"role": self.role, "tag": self.tag, "server_public": self.server_public.decode(),
               "server_secret": self.server_secret.decode(), "public": self.client_public.decode(),
               "secret": self.client_secret.decode(), "peers": {r: k.decode() for r, k in self.peers.items()}}
        return {ENV: json.dumps(doc, separators=(",", ":"))}


@dataclass(frozen=True)
class RunKeys:
    """The launcher's view: the server pair and every role's pair. Roles get theirs with `issue`."""

    server_public: bytes
    server_secret: bytes
    roles: dict[str, tuple[bytes, bytes]]
    """Role name -> (public, secret)."""
    servers: frozenset[str]
    """The roles that listen: they get the server secret and every role's public key."""

    def issue(self, role: str) -> CurveKeys:
        """The keys `role` is started with; ValueError for a role the run's keys were not made for."""
        if role not in self.roles:
            raise ValueError(f"no CURVE keys were made for role {role!r} (known: {', '.join(sorted(self.roles))})")
        public, secret = self.roles[role]
        serves = role in self.servers
        return CurveKeys(self.server_public, self.server_secret if serves else b"", public, secret, role,
                         routing_tag(self.server_secret, role),
                         {r: pair[0] for r, pair in self.roles.items()} if serves else {})


def save_keys(keys: RunKeys, directory: str) -> None:
    """Key files in ZeroMQ's certificate format (zmq.auth.load_certificate reads them): the server pair
    (`server.key_secret`, 0600; `net.curve_keys` can point at it again) and each role's public key
    (`<role>.key`). Roles' secret keys stay in their environments only."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files = [("server.key", keys.server_public, None), ("server.key_secret", keys.server_public, keys.server_secret)]
    files += [(f"{role}.key", public, None) for role, (public, _) in sorted(keys.roles.items())]
    for name, public, secret in files:
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
            if secret:
                f.write(f'    secret-key = "{secret.decode()}"\n')


def _key(doc: dict, name: str, may_be_empty: bool = False) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str) or not (len(value) == KEY_CHARS or (may_be_empty and value == "")):
        raise ValueError(f"{name!r} is not a {KEY_CHARS}-character Z85 key")
    return value.encode()


def from_env(environ=os.environ) -> CurveKeys:
    """The keys the launcher gave this role; a clear error if it gave none (or something else)."""
    try:
        doc = json.loads(environ.get(ENV, ""))
        if not isinstance(doc, dict) or not isinstance(doc.get("role"), str) or not isinstance(doc.get("tag"), str):
            raise ValueError("not an object with 'role' and 'tag'")
        peers = doc.get("peers", {})
        if not isinstance(peers, dict):
            raise ValueError("'peers' is not an object")
        return CurveKeys(_key(doc, "server_public"), _key(doc, "server_secret", True), _key(doc, "public"),
                         _key(doc, "secret"), doc["role"], doc["tag"],
                         {str(role): _key(peers, role) for role in peers})
    except ValueError as exc:  # json.JSONDecodeError is one
        raise RuntimeError(f'net.auth = "curve" but {ENV} does not hold this role\'s keys ({exc}): start roles '
                           "with launch.py, which generates them") from None


def role_keys(auth: str) -> CurveKeys | None:
    """The keys a role uses for its sockets: None unless the (resolved) config says curve."""
    return from_env() if auth == "curve" else None
