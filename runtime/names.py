"""One spelling of every role's name, and of the socket identities made from an actor's.

    buffer, learner (rank r > 0: learner<r>), actor<i>, prepare, eval_before, eval_after

A role's name is its log file (`logs/<name>.jsonl`), its output (`logs/<name>.out`), its final figures
(`roles/<name>.json`), the `role` of its metrics records and its TensorBoard directory. An actor's sockets
are `actor<i>` (grants), `actor<i>/groups` (its outbox) and `actor<i>/weights` (its weight receiver): the
buffer and the learner check that a message naming actor i comes from one of actor i's sockets.
"""

from __future__ import annotations

import re

ACTOR_SOCKET = re.compile(r"^actor(\d{1,6})(/groups|/weights)?$")


def actor_name(actor_id: int) -> str:
    return f"actor{actor_id}"


def learner_name(rank: int) -> str:
    return "learner" if rank == 0 else f"learner{rank}"


def actor_socket(actor_id: int, channel: str = "") -> str:
    """The identity of one of actor `actor_id`'s sockets: "" (grants), "groups" or "weights"."""
    return actor_name(actor_id) + (f"/{channel}" if channel else "")


def actor_of_socket(identity: bytes) -> int | None:
    """The actor whose socket `identity` is, or None."""
    m = ACTOR_SOCKET.match(identity.decode(errors="replace"))
    return int(m.group(1)) if m else None


def kind(role: str) -> str:
    """`actor3` -> actor, `learner1` -> learner, `buffer` -> buffer: the prefix of the role's metric names."""
    return role.rstrip("0123456789")
