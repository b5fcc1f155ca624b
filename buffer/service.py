"""The buffer role: owns the prompt stream, the staleness budget and the replay store.

Two listeners, one loop, no threads. Actors (`actor<i>` and `actor<i>/groups` sockets) send `actor_hello`,
`grant_request`, `group`, `grant_return` and `bye`; the learner (socket `learner`) sends `learner_hello`,
`version` (at start, then after every step, once that step's broadcast if any went out), `batch_request`,
`checkpoint` and `done`. Every message is decoded and checked before use; one that is refused is counted by
reason (`buffer/rejected_<reason>`), logged and answered `refused`, never fatal. Decoding and parsing raise
nothing but `ProtocolError` whatever a field holds (wire/envelope.py), so the loop catches that one type: any
other exception is a bug of the buffer's own, not a message to count.

The loop only moves bytes: the logic lives in four parts, each a module, around `BufferService`:
  buffer/admission.py  grants, held requests, returns, restarts, stages   (actors' requests)
  buffer/ingest.py     a group checked against its grant, then stored or dropped   (actors' groups)
  buffer/batches.py    long-polled batch requests, stale groups dropped or kept   (the learner's requests)
  buffer/state.py      counts, the ledger, checkpoint state, the final summary
`on_actor` / `on_learner` take a decoded message and return the answer (or None: answered later), and
`owed` returns the answers due now (held grants, a pending batch), so the logic runs without any transport
(tests/unit/test_buffer_logic.py drives it in-process).

Producers: the actors (grant requests, groups) and the learner (versions, batch and checkpoint requests).
Consumers: the actors (grants) and the learner (batches, the buffer's state). Blocking: the loop waits at
most 0.05 s on its two listeners and nothing else; its sends never block (a reply to a peer that is gone or
not reading is dropped, and that peer's own request deadline covers it). Data dropped, always counted: refused
messages (by reason), resent groups already answered (`duplicate`), groups too stale to train
(`buffer/dropped_stale`, when a batch is taken, under `buffer.stale_policy` "drop") and all-equal groups
(rejection sampling); a full store answers `full` and evicts nothing. Timeouts: a held grant request is
answered `wait` when its `hold_s` ends, a batch request `wait` after `LONG_POLL_S` (buffer/batches.py), and
both peers ask again.

After `done`, actors asking for work are told to `stop`; the buffer exits once every actor said `bye` (or
`net.request_timeout_s` has passed), or on SIGTERM, and sends its final figures to the launcher
(roles/buffer.json; written there by the buffer itself when no launcher acknowledges them).
"""

from __future__ import annotations

import signal
import time

from asyncor.buffer import state
from asyncor.buffer.admission import Admission
from asyncor.buffer.batches import Batches
from asyncor.buffer.ingest import Ingest
from asyncor.buffer.online_filter import OnlineFilter
from asyncor.buffer.prompts import PromptStream
from asyncor.buffer.rejection import GroupTally
from asyncor.buffer.replay import ReplayStore
from asyncor.buffer.staleness import StalenessBudget
from asyncor.configs.schema import Config
from asyncor.configs.stages import groups_through, max_over_stages, stage_at
from asyncor.runtime.names import actor_of_socket, learner_name
from asyncor.runtime.role_summary import write_role_summary
from asyncor.runtime.run_dir import RunDir
from asyncor.tasks.codec import TextCodec
from asyncor.tasks.task import Task, make_task
from asyncor.telemetry import log as tlog
from asyncor.telemetry.metrics import MetricsWriter
from asyncor.wire.curve import role_keys
from asyncor.wire.envelope import Message, ProtocolError, decode, require
from asyncor.wire.messages import (Ack, ActorHello, BatchRequest, BufferState, Bye, CheckpointRequest, Done,
                                   GrantRequest, GrantReturn, LearnerHello, Refused, TRAJECTORY_GROUP, VersionUpdate,
                                   parse, plain)
from asyncor.wire.rpc import Server
from asyncor.wire.transport import Transport, endpoint

ACTOR_MESSAGES = {m.TYPE: m for m in (ActorHello, GrantRequest, GrantReturn, Bye)}
LEARNER_MESSAGES = {m.TYPE: m for m in (LearnerHello, VersionUpdate, BatchRequest, CheckpointRequest, Done)}
LEARNER_SOCKET = learner_name(0).encode()


def sender_of(peer: bytes, actor_id: int) -> int:
    """The actor a message claims to come from must be the socket that sent it (a peer acts only for itself). With
    CURVE that socket's identity was checked against the key it came from: only actor i's key speaks as
    `actor<i>` (wire/transport.py); without CURVE an identity is whatever the peer claims."""
    if actor_of_socket(peer) != actor_id:
        raise ProtocolError("bad_value", f"actor_id {actor_id} does not match the sending socket")
    return actor_id


def parse_as(msg: Message, kinds: dict, who: str):
    kind = kinds.get(msg.type)
    if kind is None:
        raise ProtocolError("unknown_type", f"{msg.type!r} is not {who} message")
    return parse(msg, kind)


class BufferService:
    def __init__(self, config: Config, task: Task | None = None, metrics: MetricsWriter | None = None):
        """`task`: where the prompts come from (default: the config's, tasks/task.py)."""
        self.config = config
        self.log = tlog.get("buffer")
        self.metrics = metrics or MetricsWriter(RunDir(config.run_dir).metrics, "buffer", config.net.telemetry_address)
        codec = TextCodec(config.model.path)
        task = task or make_task(config, codec)
        problems = task.training()
        self.log.info("training_data", problems=len(problems),
                      dropped_long_prompts=task.dropped_long_prompts,
                      **{kind: sum(p.kind == kind for p in problems) for kind in sorted({p.kind for p in problems})})
        self.prompts = PromptStream(problems, config.run.seed)
        self.budget = StalenessBudget(config.buffer.max_staleness,
                                      groups_through=lambda steps: groups_through(config, steps))
        self.store = ReplayStore(config.buffer.max_groups)
        self.online_filter = OnlineFilter()
        self.tally = GroupTally()
        self.counts = state.Counts()
        self.admission = Admission(config, self.prompts, self.budget, self.log)
        self.ingest = Ingest(config, self.admission, self.store, self.budget, self.tally, self.online_filter,
                             self.counts, codec.vocab_size, max_over_stages(config, "group_size"))
        self.batches = Batches(config, self.store, self.budget, self.tally, self.counts, self.log, self.metrics)
        self.done_at: float | None = None  # when the learner said `done`
        self.stop_requested = False
        self.impostors_seen = 0  # messages the listeners dropped for their identity (count_impostors)
        if config.checkpoint.resume_from:
            state.load_state(self, config.checkpoint.resume_from)

    # ------------------------------------------------------------------ the logic, message by message

    def on_actor(self, peer: bytes, msg: Message):
        """The answer to an actor's message (None: held, answered by `owed` later); ProtocolError: refused."""
        if msg.type == TRAJECTORY_GROUP:  # parse_group checks the group itself (ingest)
            return self.ingest.group(msg.body, sender_of(peer, require(msg.body, "actor_id", int)))
        m = parse_as(msg, ACTOR_MESSAGES, "an actor")
        actor_id = sender_of(peer, m.actor_id)
        if isinstance(m, ActorHello):
            return self.admission.hello(actor_id, self.store.highest_seq(actor_id))
        if isinstance(m, GrantRequest):
            return self.admission.request(peer, msg, actor_id, m.max_prompts, m.hold_s, self.done_at is not None)
        if isinstance(m, GrantReturn):
            return self.admission.give_back(actor_id, m.prompt_ids)
        return self.admission.bye(actor_id, plain(m.stats))  # kept for the summary: JSON-able values only

    def on_learner(self, peer: bytes, msg: Message):
        """The answer to the learner's message (None: a batch request, answered by `owed`)."""
        if peer != LEARNER_SOCKET:
            raise ProtocolError("bad_value", "learner messages come from the learner's socket only")
        m = parse_as(msg, LEARNER_MESSAGES, "a learner")
        if isinstance(m, VersionUpdate):
            self.new_version(m.version)
        elif isinstance(m, BatchRequest):
            if m.n_groups > self.config.buffer.max_groups:
                raise ProtocolError("bad_value", f"n_groups {m.n_groups} is not in [1, buffer.max_groups]")
            self.batches.request(peer, msg, m.n_groups)
            return None
        elif isinstance(m, CheckpointRequest):  # the learner saves this with its checkpoint of the current version
            return BufferState(state=state.state_dict(self))
        elif isinstance(m, Done):
            self.done_at = time.monotonic()
            self.log.info("learner_done", actors=len(self.admission.actors_seen))
        return Ack()

    def new_version(self, version: int) -> None:
        if not self.budget.version <= version <= self.config.learner.steps:
            raise ProtocolError("bad_value", f"version {version} is not in [{self.budget.version}, learner.steps]")
        before, after = stage_at(self.config, self.budget.version), stage_at(self.config, version)
        self.budget.on_version(version)
        if after.index != before.index:
            self.counts.online_filtered += self.admission.enter_stage(after, self.online_filter)
            self.metrics.log({"buffer/stage": after.index, "buffer/online_filtered": self.counts.online_filtered,
                              "buffer/prompt_pool": self.prompts.remaining}, step=version)

    def owed(self) -> tuple[list, list]:
        """Answers due now: (to actors, to the learner), each [(peer, request, answer)]."""
        batch = self.batches.serve()
        return self.admission.serve_held(self.done_at is not None), [batch] if batch else []

    def receive(self, handle, peer: bytes, raw: bytes) -> tuple[Message | None, object]:
        """The loop's work on one message from `peer` for `handle` (`on_actor` / `on_learner`): (the request,
        once its envelope decoded, else None; its answer: None when held, `refused` when refused, counted)."""
        msg = None
        try:
            msg = decode(raw, self.config.buffer.max_message_bytes)
            return msg, handle(peer, msg)
        except ProtocolError as exc:  # answered with the request's id once the envelope decoded
            return msg, self.refuse(exc)

    def refuse(self, exc: ProtocolError) -> Refused:
        self.counts.rejected[exc.reason] += 1
        self.log.warning("message_rejected", reason=exc.reason, detail=exc.detail)
        self.metrics.log({f"buffer/rejected_{exc.reason}": self.counts.rejected[exc.reason]})
        return Refused(reason=exc.reason, detail=exc.detail)

    def count_impostors(self, dropped: int) -> None:
        """The listeners have dropped `dropped` messages so far because their identity was not issued to their key
        (CURVE, wire/transport.py): the new ones are refused like the rest, counted as `impostor` (they never
        reach `on_actor`, and get no answer)."""
        new, self.impostors_seen = dropped - self.impostors_seen, dropped
        if new <= 0:
            return
        self.counts.rejected["impostor"] = self.counts.rejected.get("impostor", 0) + new
        self.log.warning("message_rejected", reason="impostor", detail=f"{new} message(s) under an identity "
                         "that is not their key's")
        self.metrics.log({"buffer/rejected_impostor": self.counts.rejected["impostor"]})

    def finished(self) -> bool:
        """After `done`: every actor said bye, or they had `net.request_timeout_s` to."""
        if self.done_at is None:
            return False
        a = self.admission
        all_said_bye = a.actors_seen and a.actors_seen <= a.actors_done
        return bool(all_said_bye) or time.monotonic() - self.done_at > self.config.net.request_timeout_s

    # ------------------------------------------------------------------ the loop

    def run(self, transport: Transport | None = None) -> dict:
        """Serve until the run is over (or SIGTERM: `stop_requested`); returns the final summary."""
        from asyncor.wire.zeromq import ZmqTransport

        cfg = self.config
        transport = transport or ZmqTransport.private()
        bind = cfg.net.bind_address(cfg.net.buffer_address)
        keys = role_keys(cfg.net.auth)
        actors = Server(transport.listen(endpoint(bind, cfg.net.buffer_actor_port), keys))
        learner = Server(transport.listen(endpoint(bind, cfg.net.buffer_learner_port), keys))
        self.log.info("listening", actor_port=cfg.net.buffer_actor_port, learner_port=cfg.net.buffer_learner_port)
        try:
            while not self.stop_requested:
                ready_listeners = transport.wait([actors.listener, learner.listener], 0.05)
                self.count_impostors(actors.listener.impostors + learner.listener.impostors)
                for ready in ready_listeners:
                    server, handle = (actors, self.on_actor) if ready is actors.listener else (learner, self.on_learner)
                    peer, raw = server.recv()
                    msg, answer = self.receive(handle, peer, raw)
                    if answer is not None:
                        server.answer(peer, msg, answer)
                to_actors, to_learner = self.owed()
                for server, answers in ((actors, to_actors), (learner, to_learner)):
                    for peer, request, answer in answers:
                        server.answer(peer, request, answer)
                if self.finished():
                    break
        finally:
            actors.close()
            learner.close()
            transport.close()
        return state.summary(self)


def main(config: Config) -> None:
    service = BufferService(config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(service, "stop_requested", True))
    summary = service.run()
    write_role_summary(config, "buffer", summary)
    tlog.get("buffer").info("exit", **summary["staleness"])
