"""The actor's side of the buffer conversation: hello, grants, grants given back.

One request/reply each, with the `net.request_timeout_s` deadline. A grant
becomes `GrantedPrompt`s plus the sampling of the current stage (group size,
length limit) and the oldest policy version allowed to generate them.
Groups travel on their own socket, from the outbox thread (actors/outbox.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.sequences import GrantedPrompt


@dataclass
class Grant:
    prompts: list[GrantedPrompt]
    min_version: int  # generate with this version or newer
    n: int  # samples per prompt (the stage's group size)
    max_tokens: int  # the stage's response length limit


@dataclass
class Wait:
    retry_s: float  # no capacity now (staleness bound or prompts exhausted): ask again after this


@dataclass
class Welcome:
    """The buffer's answer to hello."""
    version: int  # the learner's version now
    restarted: bool  # this actor id said hello before: an earlier incarnation died; its grants were given back
    seq_start: int  # number this incarnation's groups from here (after every number the buffer has seen)


class Stop:
    """The learner is done: finish up and say bye."""


class BufferLink:
    def __init__(self, client, actor_id: int, timeout_s: float, default_n: int, default_max_tokens: int):
        self.client = client
        self.actor_id = actor_id
        self.timeout_s = timeout_s
        self.default_n, self.default_max_tokens = default_n, default_max_tokens

    def hello(self, timeout_s: float | None = None) -> Welcome:
        from buffer.protocol import ProtocolError, require

        reply = self.client.request("hello", {"actor_id": self.actor_id}, timeout_s or self.timeout_s)
        body = reply.body
        try:
            welcome = Welcome(require(body, "version", int), require(body, "restarted", bool),
                              require(body, "seq_start", int))
        except ProtocolError as exc:
            raise RuntimeError(f"the buffer's answer to hello is not a welcome ({reply.type}): {exc}") from None
        if welcome.version < 0 or welcome.seq_start < 0:
            raise RuntimeError(f"the buffer's welcome is out of range: {welcome}")
        return welcome

    def ask(self, max_prompts: int, version: int, hold_s: float = 0.0) -> Grant | Wait | Stop:
        """`hold_s` > 0: the buffer may keep the request that long when it has nothing to grant, answering the
        moment it has (an idle actor's way of waiting for the next version without polling)."""
        from buffer.protocol import unpack_array

        reply = self.client.request("grant_request", {"actor_id": self.actor_id, "version": version,
                                                      "max_prompts": max_prompts, "hold_s": hold_s},
                                    self.timeout_s + hold_s)
        if reply.type == "stop":
            return Stop()
        if reply.type == "wait":
            return Wait(float(reply.body.get("retry_s", 0.05)))
        sampling = reply.body.get("sampling", {})
        prompts = [GrantedPrompt(p["prompt_id"], unpack_array(p["token_ids"], "token_ids", "<i4"),
                                 p.get("kind", "arithmetic"), p.get("reference", p["answer"]))
                   for p in reply.body["prompts"]]
        return Grant(prompts, reply.body["min_version"], sampling.get("n", self.default_n),
                     sampling.get("max_tokens", self.default_max_tokens))

    def give_back(self, prompt_ids: list[int]) -> None:
        self.client.request("grant_return", {"actor_id": self.actor_id, "prompt_ids": prompt_ids}, self.timeout_s)
