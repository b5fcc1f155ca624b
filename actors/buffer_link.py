"""The actor's side of the buffer conversation: hello, grants, grants given back.

One request/reply each (`actor_hello` -> `welcome`, `grant_request` -> `grant`, `wait` or `stop`,
`grant_return` -> `ack`), with the `net.request_timeout_s` deadline (a held grant request: plus its
`hold_s`; the hello: the deadline its caller gives). A missing reply raises TimeoutError (a reply that does
not decode is skipped and counted by the client, wire/rpc.py, as if it had not come); a hello or grant request
answered with another kind, or with a body that does not parse (parsing raises only ProtocolError, whatever
the body holds), raises RuntimeError naming it (the answer to `grant_return` is not read). A grant
becomes `Prompt`s plus the sampling of the current stage (group size,
length limit) and the oldest policy version allowed to generate them.
Groups travel on their own socket, from the outbox thread (actors/outbox.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncor.actors.sequences import Prompt
from asyncor.wire import messages as wire


@dataclass
class Grant:
    prompts: list[Prompt]
    min_version: int  # generate with this version or newer
    n: int  # samples per prompt (the stage's group size)
    max_tokens: int  # the stage's response length limit


class BufferLink:
    def __init__(self, client, actor_id: int, timeout_s: float):
        self.client = client
        self.actor_id = actor_id
        self.timeout_s = timeout_s

    def hello(self, timeout_s: float | None = None) -> wire.Welcome:
        """The buffer's welcome: the learner's version, whether this actor id is a restart, where to number from."""
        return self._expect(self.client.call(wire.ActorHello(actor_id=self.actor_id), timeout_s or self.timeout_s),
                            wire.Welcome)

    def ask(self, max_prompts: int, version: int, hold_s: float = 0.0) -> Grant | wire.WaitReply | wire.Stop:
        """`hold_s` > 0: the buffer may keep the request that long when it has nothing to grant, answering the
        moment it has (an idle actor's way of waiting for the next version without polling)."""
        from asyncor.wire.arrays import unpack_array

        reply = self.client.call(wire.GrantRequest(actor_id=self.actor_id, version=version, max_prompts=max_prompts,
                                                   hold_s=hold_s), self.timeout_s + hold_s)
        if reply.type == wire.Stop.TYPE:  # the learner is done: finish up and say bye
            return self._expect(reply, wire.Stop)
        if reply.type == wire.WaitReply.TYPE:  # no room now (staleness bound, prompts in flight): ask again later
            return self._expect(reply, wire.WaitReply)
        grant = self._expect(reply, wire.GrantReply)
        try:
            prompts = [Prompt(p.prompt_id, unpack_array(p.token_ids, "token_ids", "<i4"), p.kind, p.reference)
                       for p in grant.prompts]
        except wire.ProtocolError as exc:
            raise RuntimeError(f"the buffer's grant is malformed: {exc}") from None
        return Grant(prompts, grant.min_version, grant.sampling.n, grant.sampling.max_tokens)

    def give_back(self, prompt_ids: list[int]) -> None:
        self.client.call(wire.GrantReturn(actor_id=self.actor_id, prompt_ids=prompt_ids), self.timeout_s)

    @staticmethod
    def _expect(reply, kind):
        """The reply as `kind`; anything else from the buffer is an error naming what came instead."""
        try:
            return wire.parse(reply, kind)
        except wire.ProtocolError as exc:
            raise RuntimeError(f"the buffer answered {reply.type!r} where {kind.__name__} was expected: "
                               f"{exc}") from None
