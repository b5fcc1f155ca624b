"""The buffer role: owns the prompt stream, the staleness budget and the replay store.

Two ROUTER sockets, one event loop, no threads:

* actors (DEALER) send `hello`, `grant_request`, `group`, `grant_return`, `bye`.
  A grant carries prompts and the oldest policy version they may be generated
  with; with no capacity the actor is told to `wait`, at once or, if its
  request says `hold_s`, when that much time has passed without room (a held
  request is granted the moment room appears: an idle actor hears of a new
  version without polling). Every `group` is acked:
  accepted, duplicate (already stored: at-least-once delivery), full (retry
  later) or rejected with the protocol reason (counted, logged, never fatal).
* the learner (DEALER) sends `batch_request` (long-polled: answered as soon as
  enough fresh groups exist, or `wait` after `poll_s`), `version` after it
  publishes weights, `checkpoint` (answered with `state_dict`, which the
  learner saves in its checkpoint; a resumed buffer starts from it) and `done`
  at the end.

After `done`, actors asking for work are told to `stop`; the buffer exits once
every actor said `bye` (or `net.request_timeout_s` has passed), writing its
final figures to `roles/buffer.json`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass

import numpy as np

from asyncor.wire.curve import role_keys
from asyncor.buffer.online_filter import OnlineFilter
from asyncor.buffer.prompts import PromptStream
from asyncor.wire.messages import (Ack, ActorHello, BatchReply, BatchRequest, Bye, CheckpointAck, GrantedPrompt, GrantReply,
                           GrantRequest, GrantReturn, Sampling, Stop, VersionUpdate, WaitReply, Welcome, parse)
from asyncor.wire.arrays import pack_array, unpack_array
from asyncor.wire.envelope import REJECT_REASONS, Message, ProtocolError, decode, require
from asyncor.wire.trajectory import parse_group
from asyncor.buffer.rejection import GroupTally, uniform_kind
from asyncor.buffer.replay import ReplayStore
from asyncor.buffer.staleness import StalenessBudget
from asyncor.wire.rpc import Server
from asyncor.wire.transport import endpoint
from asyncor.wire.zeromq import ZmqTransport
from asyncor.configs.schema import Config
from asyncor.configs.stages import groups_through, max_over_stages, stage_at
from asyncor.tasks.builtin import make_splits
from asyncor.tasks.codec import TextCodec
from asyncor.telemetry import log as tlog
from asyncor.runtime.role_summary import write_role_summary
from asyncor.telemetry.metrics import MetricsWriter
from asyncor.runtime.run_dir import BUFFER_STATE, RunDir

LONG_POLL_S = 1.0
OK = Ack(status="ok")  # the plain acknowledgement
ACTOR_MESSAGES = {"hello": ActorHello, "grant_request": GrantRequest, "grant_return": GrantReturn, "bye": Bye}
SEQ_GAP = 1 << 16  # a restarted actor numbers its groups this far past its last incarnation's highest seen
PEER = re.compile(r"^actor-(\d{1,6})(-groups)?$")  # the identities actors/worker.py gives its two sockets


@dataclass
class PromptGrant:
    """What an actor was granted for one prompt: its group must match it."""

    actor_id: int
    problem: object
    token_ids: np.ndarray
    group_size: int
    max_tokens: int


def sender_of(ident: bytes, actor_id: int) -> int:
    """The actor a message claims to come from must be the socket that sent it (a peer acts only for itself)."""
    m = PEER.match(ident.decode(errors="replace"))
    if m is None or int(m.group(1)) != actor_id:
        raise ProtocolError("bad_value", f"actor_id {actor_id} does not match the sending socket")
    return actor_id


class BufferService:
    def __init__(self, config: Config):
        self.config = config
        self.log = tlog.get("buffer")
        self.metrics = MetricsWriter(RunDir(config.run_dir).metrics, "buffer", config.net.telemetry_address)
        self.codec = TextCodec(config.model.path)
        self.prompt_ids: dict[int, np.ndarray] = {}  # pre-rendered prompts (task.kind = "files")
        self.prompts = PromptStream(self.training_problems(), config.run.seed)
        self.budget = StalenessBudget(config.buffer.max_staleness,
                                      groups_through=lambda steps: groups_through(config, steps))
        self.max_group_size = max_over_stages(config, "group_size")
        self.online_filter = OnlineFilter()
        self.online_filtered = 0
        self.store = ReplayStore(config.buffer.max_groups)
        self.granted: dict[int, PromptGrant] = {}  # prompt id -> what was granted, until its group arrives
        self.rejected = {r: 0 for r in REJECT_REASONS}
        self.dropped_stale = 0
        self.tally = GroupTally()
        self.rejected_uniform = {"solve_all": 0, "solve_none": 0}
        self.duplicates = 0
        self.accepted = 0  # groups accepted; each ends trained, dropped stale, dropped uniform or still stored
        self.max_stored = 0  # the most groups the store held at once (bounded by buffer.max_groups)
        self.requeued = 0  # groups stored at the checkpoint a run resumed from: given back, generated again
        self.staleness_trained: list[int] = []
        self.actors_seen: set[int] = set()
        self.actors_done: set[int] = set()
        self.actor_stats: dict[int, dict] = {}
        self.actor_restarts: dict[int, int] = {}  # actor id -> hellos after its first (restarts)
        self.pending_batch: tuple[bytes, Message, int] | None = None  # (learner, request, n_groups)
        self.held_grants: dict[bytes, tuple[Message, int, int, float]] = {}  # ident -> (request, actor, wanted, until)
        self.pending_since = 0.0
        self.done_at: float | None = None
        self.stop_requested = False
        if config.checkpoint.resume_from:
            self.load_state(config.checkpoint.resume_from)

    # ------------------------------------------------------------------ actors

    def on_actor(self, server: Server, ident: bytes, msg: Message) -> None:
        if msg.type == "group":  # parse_group checks the group itself (ingest)
            sender = sender_of(ident, require(msg.body, "actor_id", int))
            server.reply(ident, msg, "ack", self.ingest(msg.body, sender))
            return
        kind = ACTOR_MESSAGES.get(msg.type)
        if kind is None:
            raise ProtocolError("unknown_type", f"{msg.type!r} is not an actor message")
        m = parse(msg, kind)
        actor_id = sender_of(ident, m.actor_id)
        if isinstance(m, ActorHello):
            restarted = actor_id in self.actors_seen
            if restarted:  # its earlier incarnation died: what it held goes back to the stream, served first
                self.restart(actor_id)
            self.actors_seen.add(actor_id)
            server.answer(ident, msg, Welcome(version=self.budget.version, restarted=restarted,
                                              seq_start=self.store.next_seq(actor_id, SEQ_GAP) if restarted else 0))
        elif isinstance(m, GrantRequest):
            if m.max_prompts > self.config.buffer.max_groups:
                raise ProtocolError("bad_value", f"max_prompts {m.max_prompts} is not in [0, buffer.max_groups]")
            self.actors_seen.add(actor_id)
            if self.done_at is not None:
                server.answer(ident, msg, Stop())
                return
            if self.try_grant(server, ident, msg, actor_id, m.max_prompts):
                return
            if m.max_prompts and m.hold_s:
                # Nothing to grant now: answer the moment there is (a new version, a slot given back), or `wait`
                # when the hold ends. One held request per actor socket.
                self.held_grants[ident] = (msg, actor_id, m.max_prompts, time.monotonic() + m.hold_s)
            else:
                server.answer(ident, msg, WaitReply())
        elif isinstance(m, GrantReturn):
            if len(m.prompt_ids) > len(self.granted):
                raise ProtocolError("bad_value", "prompt_ids names more prompts than are granted")
            if any(i in self.granted and self.granted[i].actor_id != actor_id for i in m.prompt_ids):
                raise ProtocolError("bad_value", "grant_return names prompts granted to another actor")
            self.return_grants(m.prompt_ids)  # ids no longer granted (answered, returned already) are ignored
            server.answer(ident, msg, OK)
        elif isinstance(m, Bye):
            self.actors_done.add(actor_id)
            self.actor_stats[actor_id] = m.stats
            self.return_grants([i for i, g in self.granted.items() if g.actor_id == actor_id])
            server.answer(ident, msg, OK)

    def restart(self, actor_id: int) -> None:
        """An actor said hello again: give back its earlier incarnation's grants and forget its held request."""
        held = [i for i, g in self.granted.items() if g.actor_id == actor_id]
        self.return_grants(held)
        for ident, (_, holder, _, _) in list(self.held_grants.items()):
            if holder == actor_id:
                del self.held_grants[ident]
        self.actor_restarts[actor_id] = self.actor_restarts.get(actor_id, 0) + 1
        self.log.info("actor_restarted", actor=actor_id, grants_returned=len(held), version=self.budget.version)

    def try_grant(self, server: Server, ident: bytes, msg: Message, actor_id: int, wanted: int) -> bool:
        """PromptGrant up to `wanted` prompts if the staleness budget has room; True if a grant was sent."""
        n = self.budget.grant(wanted)
        if n == 0:
            return False
        problems = self.prompts.take(n, busy=self.granted.keys())
        if len(problems) < n:  # every other prompt is in flight: the slots not used go back
            self.budget.on_returned(n - len(problems))
            if not problems:
                return False
        stage = stage_at(self.config, self.budget.version)
        entries = [self.grant_entry(p) for p in problems]
        for p, entry in zip(problems, entries):
            self.granted[p.id] = PromptGrant(actor_id, p, unpack_array(entry.token_ids, "token_ids", "<i4"),
                                       stage.group_size, stage.max_response_tokens)
        # The current stage's sampling: actors switch length and group size without restarting.
        sampling = Sampling(n=stage.group_size, max_tokens=stage.max_response_tokens, stage=stage.index)
        server.answer(ident, msg, GrantReply(min_version=self.budget.min_version_for_grant(), prompts=entries,
                                             sampling=sampling))
        return True

    def serve_held_grants(self, server: Server) -> None:
        """Answer held grant requests: a grant as soon as there is room, `stop` once the learner is done,
        `wait` when the hold ends."""
        now = time.monotonic()
        for ident, (msg, actor_id, wanted, deadline) in list(self.held_grants.items()):
            if self.done_at is not None:
                server.answer(ident, msg, Stop())
            elif self.try_grant(server, ident, msg, actor_id, wanted):
                pass
            elif now >= deadline:
                server.answer(ident, msg, WaitReply())
            else:
                continue
            del self.held_grants[ident]

    def training_problems(self) -> list:
        if self.config.task.kind != "files":
            train, _ = make_splits(self.config.task, self.config.run.seed)
            return train
        from asyncor.tasks.dataset import load_problems

        task = self.config.task
        problems, ids, dropped = load_problems(task.train_files, self.codec, self.config.model.path,
                                               self.config.actors.max_prompt_tokens, task.format)
        self.prompt_ids = {p.id: t for p, t in zip(problems, ids)}
        self.log.info("training_data", problems=len(problems), dropped_long_prompts=dropped,
                      math=sum(p.kind == "math" for p in problems), code=sum(p.kind == "code" for p in problems))
        return problems

    def grant_entry(self, problem) -> GrantedPrompt:
        """One granted prompt: its token ids and what the actor needs to score it."""
        if self.config.task.kind != "files":  # built-in task: exact-answer scoring
            return GrantedPrompt(prompt_id=problem.id, token_ids=pack_array(self.codec.encode_prompt(problem.prompt)),
                                 answer=problem.answer, kind="arithmetic")
        return GrantedPrompt(prompt_id=problem.id, token_ids=pack_array(self.prompt_ids[problem.id]),
                             answer=problem.answer, kind=problem.kind, reference=problem.reference)

    def return_grants(self, prompt_ids: list) -> None:
        """Unused grants: free their admission slots and serve their prompts again first."""
        ids = [i for i in prompt_ids if i in self.granted]
        self.budget.on_returned(len(ids))
        self.prompts.give_back([self.granted.pop(i).problem for i in ids])

    def check_against_grant(self, group, sender: int) -> None:
        """A group must answer a grant its sender holds: that prompt, the granted group size and length
        limit, tokens the model can embed."""
        grant = self.granted.get(group.prompt_id)
        if grant is None:
            raise ProtocolError("bad_value", f"prompt {group.prompt_id} was not granted (or already answered)")
        if group.actor_id != sender or grant.actor_id != sender:
            raise ProtocolError("bad_value", f"prompt {group.prompt_id} was granted to actor {grant.actor_id}")
        if not np.array_equal(group.prompt_ids, grant.token_ids):
            raise ProtocolError("bad_value", f"prompt {group.prompt_id}: the tokens differ from the granted prompt")
        if len(group.responses) != grant.group_size:
            raise ProtocolError("bad_value", f"{len(group.responses)} responses, granted {grant.group_size}")
        vocab = self.codec.vocab_size
        for r in group.responses:
            newest = int(r.versions.max()) if r.versions is not None and len(r.versions) else r.min_version
            if newest > self.budget.version:  # no policy that new exists yet (its staleness would be negative)
                raise ProtocolError("bad_value", f"version {newest} is newer than the learner's {self.budget.version}")
            if len(r.token_ids) > grant.max_tokens:
                raise ProtocolError("bad_value", f"a response of {len(r.token_ids)} tokens, limit {grant.max_tokens}")
            if len(r.token_ids) and (int(r.token_ids.min()) < 0 or int(r.token_ids.max()) >= vocab):
                raise ProtocolError("bad_value", f"a token id outside the model's vocabulary [0, {vocab})")

    def ingest(self, body: dict, sender: int) -> dict:
        group = None
        try:
            group = parse_group(body, max_group_size=self.max_group_size)
            if self.store.is_duplicate(group):
                self.duplicates += 1
                return {"status": "duplicate", "seq": group.seq}
            self.check_against_grant(group, sender)
        except ProtocolError as exc:
            self.release_bad_answer(group, sender)
            return self.reject(exc)
        if self.store.is_full():
            return {"status": "full", "seq": group.seq}
        self.granted.pop(group.prompt_id)
        self.accepted += 1
        self.budget.on_group_accepted()
        self.tally.on_arrival(group)
        self.online_filter.observe(group.prompt_id, group.rewards)
        rejection = self.config.algo.rejection
        kind = uniform_kind(group) if rejection.enabled and rejection.refill else None
        if kind:
            # Refill mode: an all-equal group never enters the store; its admission slot goes back,
            # so actors make a replacement and batches stay full.
            self.store.mark_seen(group)
            self.budget.on_dropped(1)
            self.count_uniform(kind)
            return {"status": "accepted", "seq": group.seq}
        self.store.add(group)
        self.max_stored = max(self.max_stored, len(self.store))
        return {"status": "accepted", "seq": group.seq}

    def release_bad_answer(self, group, sender: int) -> None:
        """A refused answer to a grant its sender holds frees the grant: the actor never sends a refused group
        again, so the admission slot would otherwise stay taken until the actor says bye (or restarts), and
        enough of them would stall the run. The prompt is served again first. A peer's grant is untouched."""
        grant = self.granted.get(group.prompt_id) if group is not None else None
        if grant is not None and grant.actor_id == sender == group.actor_id:
            self.return_grants([group.prompt_id])

    def count_uniform(self, kind: str) -> None:
        self.tally.on_rejected(kind)
        self.rejected_uniform[kind] += 1

    def reject(self, exc: ProtocolError) -> dict:
        self.rejected[exc.reason] += 1
        self.log.warning("message_rejected", reason=exc.reason, detail=exc.detail)
        self.metrics.log({f"buffer/rejected_{exc.reason}": self.rejected[exc.reason]})
        return {"status": "rejected", "reason": exc.reason, "detail": exc.detail}

    # ------------------------------------------------------------------ learner

    def on_learner(self, server: Server, ident: bytes, msg: Message) -> None:
        if ident != b"learner":  # the identity learner/trainer.py gives its socket
            raise ProtocolError("bad_value", "learner messages come from the learner's socket only")
        if msg.type == "hello":
            server.answer(ident, msg, OK)
        elif msg.type == "version":
            version = parse(msg, VersionUpdate).version
            if not self.budget.version <= version <= self.config.learner.steps:
                raise ProtocolError("bad_value", f"version {version} is not in [{self.budget.version}, learner.steps]")
            before, after = stage_at(self.config, self.budget.version), stage_at(self.config, version)
            self.budget.on_version(version)
            if after.index != before.index:
                self.enter_stage(after)
            server.answer(ident, msg, OK)
        elif msg.type == "batch_request":
            # Checked here, inside the handler's error path: serve_batch runs outside it.
            request = parse(msg, BatchRequest)
            if request.n_groups > self.config.buffer.max_groups:
                raise ProtocolError("bad_value", f"n_groups {request.n_groups} is not in [1, buffer.max_groups]")
            self.pending_batch = (ident, msg, request.n_groups)
            self.pending_since = time.monotonic()
        elif msg.type == "checkpoint":  # the learner saves this with its checkpoint of the current version
            server.answer(ident, msg, CheckpointAck(status="ok", state=self.state_dict()))
        elif msg.type == "done":
            self.done_at = time.monotonic()
            server.answer(ident, msg, OK)
            self.log.info("learner_done", actors=len(self.actors_seen))
        else:
            raise ProtocolError("unknown_type", f"{msg.type!r} is not a learner message")

    def enter_stage(self, stage) -> None:
        solved = self.online_filter.end_stage()
        removed = self.prompts.remove(solved) if self.config.algo.online_filter else 0
        self.online_filtered += removed
        self.log.info("stage", index=stage.index, start_step=stage.start_step, max_tokens=stage.max_response_tokens,
                      group_size=stage.group_size, prompts_per_step=stage.prompts_per_step,
                      solved_every_time=len(solved), removed=removed, pool=self.prompts.remaining)
        self.metrics.log({"buffer/stage": stage.index, "buffer/online_filtered": self.online_filtered,
                          "buffer/prompt_pool": self.prompts.remaining}, step=self.budget.version)

    def serve_batch(self, server: Server) -> None:
        if self.pending_batch is None:
            return
        ident, msg, n_groups = self.pending_batch
        stale = self.store.drop_stale(self.budget)
        if stale:
            self.dropped_stale += len(stale)
            self.budget.on_dropped(len(stale))
            self.log.info("dropped_stale", n=len(stale), version=self.budget.version)
        groups = self.store.take(n_groups)
        rejection = self.config.algo.rejection
        if groups and rejection.enabled and not rejection.refill:
            # Shrink mode (the original code): drop all-equal groups from the batch taken; they were
            # consumed by this step. A step left with nothing is skipped: their slots go back.
            kinds = [uniform_kind(g) for g in groups]
            for kind in filter(None, kinds):
                self.count_uniform(kind)
            kept = [g for g, kind in zip(groups, kinds) if kind is None]
            if not kept:
                self.budget.on_dropped(len(groups))
                self.log.info("step_skipped_all_uniform", n=len(groups))
            groups = kept
        if groups:
            ages = [self.budget.staleness(g.min_version) for g in groups]
            self.staleness_trained.extend(ages)
            server.answer(ident, msg, BatchReply(version=self.budget.version, staleness=ages,
                                                 groups=[g.to_wire() for g in groups],
                                                 groups_report=self.tally.report()))
            self.pending_batch = None
            self.metrics.log({
                "buffer/size": len(self.store),
                "buffer/in_flight": self.budget.in_flight,
                "buffer/capacity": self.budget.capacity(),
                "buffer/dropped_stale": self.dropped_stale,
                "buffer/staleness_mean": float(np.mean(ages)),
                "buffer/staleness_max": int(max(ages)),
                "buffer/staleness_hist": np.bincount(ages, minlength=self.budget.max_staleness + 1).tolist(),
            }, step=self.budget.version)
        elif time.monotonic() - self.pending_since > LONG_POLL_S:
            server.answer(ident, msg, WaitReply(size=len(self.store)))
            self.pending_batch = None

    # ------------------------------------------------------------------ loop

    def run(self) -> dict:
        cfg = self.config
        transport = ZmqTransport.private()
        bind = cfg.net.bind_address(cfg.net.buffer_address)
        keys = role_keys(cfg.net.auth)
        actors = Server(transport.listen(endpoint(bind, cfg.net.buffer_actor_port), keys))
        learner = Server(transport.listen(endpoint(bind, cfg.net.buffer_learner_port), keys))
        self.log.info("listening", actor_port=cfg.net.buffer_actor_port, learner_port=cfg.net.buffer_learner_port)
        try:
            while not self.stop_requested:
                for ready in transport.wait([actors.listener, learner.listener], 0.05):
                    server, handler = (actors, self.on_actor) if ready is actors.listener else (learner, self.on_learner)
                    ident, raw = server.recv()
                    msg = None
                    try:
                        msg = decode(raw, cfg.buffer.max_message_bytes)
                        handler(server, ident, msg)
                    except ProtocolError as exc:  # answered with the request's id once the envelope decoded
                        server.reply(ident, msg, "ack", self.reject(exc))
                self.serve_batch(learner)
                self.serve_held_grants(actors)
                if self.done_at is not None:
                    all_said_bye = self.actors_seen and self.actors_seen <= self.actors_done
                    if all_said_bye or time.monotonic() - self.done_at > cfg.net.request_timeout_s:
                        break
        finally:
            actors.close()
            learner.close()
            transport.close()
        return self.summary()

    def ledger(self) -> dict:
        """Where every accepted group went; `unaccounted` is 0 unless a group was lost or counted twice.
        Retried duplicates were never accepted (`duplicates`)."""
        ends = {"trained": len(self.staleness_trained), "dropped_stale": self.dropped_stale,
                "dropped_uniform": sum(self.rejected_uniform.values()), "still_buffered": len(self.store),
                "requeued_at_resume": self.requeued}
        return {"accepted": self.accepted, **ends, "unaccounted": self.accepted - sum(ends.values()),
                "duplicates_discarded": self.duplicates}

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict:
        """What a run resumed at this version needs from the buffer (saved in the learner's checkpoint as
        buffer_state.json). Groups not trained yet, stored or still being generated, are not kept: their
        prompts go back to the front of the stream, to be generated again by the resumed policy."""
        prompts = self.prompts.state_dict()
        prompts["returned"] = self.store.prompt_ids() + list(self.granted) + prompts["returned"]
        ages = self.staleness_trained
        return {
            "version": self.budget.version,
            "budget_accepted": self.budget.accepted - len(self.store),  # groups consumed by the steps so far
            "prompts": prompts,
            "online_filter": self.online_filter.state_dict(),
            "online_filtered": self.online_filtered,
            "accepted": self.accepted, "dropped_stale": self.dropped_stale, "duplicates": self.duplicates,
            "requeued": self.requeued + len(self.store),
            "rejected_uniform": dict(self.rejected_uniform),
            "rejected": dict(self.rejected),
            "trained_staleness_hist": np.bincount(ages).tolist() if ages else [],
        }

    def load_state(self, checkpoint: str) -> None:
        """Continue from `<checkpoint>/buffer_state.json` (written by `state_dict`)."""
        path = os.path.join(checkpoint, BUFFER_STATE)
        try:
            with open(path) as f:
                state = json.load(f)
            self.prompts.load_state_dict(state["prompts"])
            self.budget.on_version(int(state["version"]))
            self.budget.accepted = int(state["budget_accepted"])
            self.online_filter.load_state_dict(state["online_filter"])
            self.online_filtered = int(state["online_filtered"])
            self.accepted, self.dropped_stale = int(state["accepted"]), int(state["dropped_stale"])
            self.duplicates, self.requeued = int(state["duplicates"]), int(state["requeued"])
            self.rejected_uniform.update({k: int(state["rejected_uniform"][k]) for k in self.rejected_uniform})
            self.rejected.update({k: int(v) for k, v in state["rejected"].items() if k in self.rejected})
            self.staleness_trained = [age for age, n in enumerate(state["trained_staleness_hist"]) for _ in range(int(n))]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"cannot resume the buffer from {path}: {exc!r}") from None
        self.log.info("resumed", version=self.budget.version, requeued=len(state["prompts"]["returned"]),
                      epoch=self.prompts.epoch, trained=len(self.staleness_trained))

    def summary(self) -> dict:
        ages = self.staleness_trained
        return {
            "staleness": {
                "max_allowed": self.config.buffer.max_staleness,
                "mean": float(np.mean(ages)) if ages else 0.0,
                "max": int(max(ages)) if ages else 0,
                "dropped": self.dropped_stale,
                "hist": np.bincount(ages, minlength=self.config.buffer.max_staleness + 1).tolist() if ages else [],
            },
            "rejected": {k: v for k, v in self.rejected.items() if v},
            "rejection_sampling": dict(self.rejected_uniform),
            "online_filtered": self.online_filtered,
            "duplicates": self.duplicates,
            "groups_trained": len(ages),
            "max_stored": self.max_stored,
            "ledger": self.ledger(),
            "actors": self.actor_stats,
            "actor_restarts": {str(a): n for a, n in sorted(self.actor_restarts.items())},
        }


def main(config: Config) -> None:
    service = BufferService(config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(service, "stop_requested", True))
    summary = service.run()
    write_role_summary(config, "buffer", summary)
    tlog.get("buffer").info("exit", **summary["staleness"])

