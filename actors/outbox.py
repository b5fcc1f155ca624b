"""Score finished groups and send them to the buffer, beside generation.

The rollout loop hands every completed group to `Outbox.put` and goes back to
decoding; this thread scores what has queued up (inline for arithmetic, in the
verifier pool for math / code, all queued groups in one call so the pool's
workers run side by side) and sends them on its own socket, all at once, then
collects the buffer's acks (one round trip's latency for the lot, not one per
group). The queue is bounded (`capacity` groups): when the buffer is
slower than generation, `put` blocks and the loop's time shows up as
"waiting_for_outbox"; past `put`'s `timeout_s` it raises TimeoutError.

Producer: the rollout loop (`put`). Consumer: this thread, which sends to the
buffer on the actor's `actor<i>/groups` socket. Blocking: the loop only in a
full `put`; the thread in each send, which waits at most `request_timeout_s`
for the buffer's answers, and in the pauses after `full`.

Delivery is at-least-once: a group whose `group_ack` does not arrive is sent
again, one by one, with the same (actor_id, seq), which the buffer dedupes
(`duplicate`). `full` is backpressure, not an error: it is retried with a
growing pause (up to `FULL_PAUSE_MAX_S`) for as long as the buffer keeps
answering, and once the queue fills the time shows as "waiting_for_outbox" in
the loop; `refused` is logged and counted (a bug on this side, never silently
dropped), and the group is not sent again. A group still unanswered after the
batched send and `SEND_ATTEMPTS` more stops the thread; the loop re-raises the
error on its next `put` or `drain`. Dropped at `stop`: the groups still queued,
and a group the buffer answers `full` while stopping.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from asyncor.actors.sequences import Group
from asyncor.runtime.names import actor_name
from asyncor.telemetry.time_budget import TimeBudget
from asyncor.wire import messages as wire

SEND_ATTEMPTS = 3  # sends without any answer before the buffer counts as gone
FULL_PAUSE_MAX_S = 2.0


def to_trajectory(group: Group, rewards: list[float], actor_id: int, seq: int, version: int = 0):
    """A completed group as the wire's TrajectoryGroup. Per-token versions travel only when a response's policy
    tokens span more than one version (an in-flight update); otherwise `min_version` says it all. An episode's
    response carries its loss mask (environment tokens: version -1); `version` stands for a response without
    policy tokens (an episode whose environment failed before the first turn)."""
    from asyncor.wire.trajectory import Response, TrajectoryGroup

    responses = []
    for s, reward in zip(group.sequences, rewards):
        versions = np.asarray(s.versions, dtype=np.int32)
        mask = np.asarray(s.mask, dtype=np.uint8) if s.multi_turn else None
        policy = versions if mask is None else versions[mask == 1]
        mixed = len(policy) > 0 and policy.min() != policy.max()
        responses.append(Response(np.asarray(s.tokens, dtype=np.int32), np.asarray(s.logprobs, dtype=np.float32),
                                  int(policy.min()) if len(policy) else version, s.finish_reason, reward,
                                  versions if mixed else None, mask))
    details = {}
    if group.sequences and group.sequences[0].multi_turn:
        turns = [s.turns for s in group.sequences]
        details = {"turns_mean": float(np.mean(turns)), "turns_max": int(max(turns)),
                   "env_s": float(sum(s.env_s for s in group.sequences)),
                   "env_tokens": int(sum(len(s.mask) - sum(s.mask) for s in group.sequences)),
                   "env_failures": int(sum(s.end_reason not in ("answered", "length", "turn_limit")
                                           for s in group.sequences))}
    return TrajectoryGroup(group.prompt.prompt_id, group.prompt.token_ids, responses, actor_id, seq, group.gen_s,
                           details)


def score_groups(scorer, codec, groups: list[Group]) -> list[float]:
    """Every sequence's reward, in order: an episode's environment reward if it gave one, else the task's
    verifier on the response (an episode: on its last policy turn); a response cut at the limit scores 0."""
    from asyncor.tasks.scoring import Sample

    sequences = [s for g in groups for s in g.sequences]
    rewards = [s.reward if s.multi_turn and s.reward is not None else None for s in sequences]
    todo = [i for i, r in enumerate(rewards) if r is None]
    samples, prompts = [], {}  # a prompt's text, decoded once per group (only a user reward reads it)
    for i in todo:
        s = sequences[i]
        samples.append(Sample(s.prompt.kind, codec.decode(s.last_turn if s.multi_turn else s.tokens),
                              s.prompt.reference, s.finish_reason == "length",
                              prompts.setdefault(s.prompt.prompt_id, codec.decode(s.prompt.token_ids))
                              if scorer.reward else "", s.prompt.prompt_id))
    for i, reward in zip(todo, scorer.score(samples) if samples else []):
        rewards[i] = reward
    return [float(r) for r in rewards]


class Outbox(threading.Thread):
    def __init__(self, actor_id: int, scorer, codec, client, request_timeout_s: float, metrics, log,
                 capacity: int = 64):
        super().__init__(name=f"{actor_name(actor_id)}/outbox", daemon=True)
        self.actor_id = actor_id
        self.scorer, self.codec, self.client = scorer, codec, client
        self.request_timeout_s = request_timeout_s
        self.metrics, self.log = metrics, log
        self._queue: queue.Queue[Group] = queue.Queue(maxsize=capacity)
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.seq = 0
        self.budget = TimeBudget()  # scoring / sending, concurrent with the loop's own budget
        self.sent = {"groups": 0, "tokens": 0, "rejected": 0}
        self.response_lengths: dict[int, int] = {}  # response length -> samples sent (the ratio advisor's lengths)

    # ------------------------------------------------------------------ the loop's side

    def put(self, group: Group, timeout_s: float) -> None:
        self.check()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(group, timeout=0.2)
                return
            except queue.Full:
                self.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"outbox full for {timeout_s:.0f}s: the buffer is not taking groups") from None

    def drain(self, timeout_s: float) -> None:
        """Wait until every group put so far is sent (or failed)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and self.error is None:  # put() counts up, task_done() down
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._queue.unfinished_tasks} groups not sent within {timeout_s:.0f}s")
            time.sleep(0.02)
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"outbox failed: {self.error!r}") from self.error

    def stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    first = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                groups = [first]
                while True:
                    try:
                        groups.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._score_and_send(groups)
                for _ in groups:
                    self._queue.task_done()
        except BaseException as exc:  # surfaced to the loop on its next put / drain
            self.error = exc
            self.log.error("outbox_failed", error=repr(exc))

    def _score_and_send(self, groups: list[Group]) -> None:
        start = time.perf_counter()
        with self.budget.measure("scoring"):
            rewards = score_groups(self.scorer, self.codec, groups)
        verify_s = time.perf_counter() - start
        at, trajectories = 0, []
        for g in groups:
            trajectories.append(to_trajectory(g, rewards[at:at + len(g.sequences)], self.actor_id, self.seq,
                                              max(max(s.versions, default=0) for s in g.sequences)))
            at += len(g.sequences)
            self.seq += 1
        with self.budget.measure("sending"):
            self._send_all(trajectories)
        self.sent["groups"] += len(trajectories)
        for g in groups:
            for s in g.sequences:
                self.response_lengths[len(s.tokens)] = self.response_lengths.get(len(s.tokens), 0) + 1
        self.sent["tokens"] += sum(t.num_tokens for t in trajectories)
        failures = self.scorer.failures  # a user reward's (task.reward) samples scored 0, by reason
        self.metrics.log({"actor/reward_mean": float(np.mean(rewards)), "actor/verify_s": verify_s,
                          "actor/verify_timeouts": self.scorer.timeouts, "actor/groups_sent": self.sent["groups"],
                          **({"actor/reward_failures": sum(failures.values()),
                              **{f"actor/reward_failures_{k}": v for k, v in failures.items()}} if failures else {}),
                          **{f"actor/reward_detail/{k}": v for k, v in self.scorer.detail_means.items()}},
                         step=max(max(s.versions, default=0) for g in groups for s in g.sequences))

    def _send_all(self, groups: list) -> None:
        """All at once (one round trip's latency); a group without a clear answer goes the one-by-one way."""
        replies = self.client.request_many(wire.TRAJECTORY_GROUP, [g.to_wire() for g in groups],
                                           self.request_timeout_s)
        for group, reply in zip(groups, replies):
            answer = self._answer(reply)
            if isinstance(answer, wire.Refused):
                self._rejected(group, answer)
            elif answer is None or answer.status == "full":
                if reply is None:
                    self.log.warning("group_ack_timeout", seq=group.seq, attempt="batch")
                self._send(group)  # no answer (lost, or late) or `full`: again, with the same seq

    def _answer(self, reply) -> wire.GroupAck | wire.Refused | None:
        """The buffer's answer to a group, checked; None for no answer or one that is neither (sent again)."""
        if reply is None:
            return None
        try:
            return wire.parse(reply, wire.Refused if reply.type == wire.Refused.TYPE else wire.GroupAck)
        except wire.ProtocolError as exc:
            self.log.warning("group_ack_malformed", error=str(exc))
            return None

    def _rejected(self, group, refused: wire.Refused) -> None:
        self.sent["rejected"] += 1
        self.log.error("group_rejected", seq=group.seq, reason=refused.reason, detail=refused.detail)

    def _send(self, group) -> None:
        body = group.to_wire()
        unanswered, pause = 0, 0.05
        while unanswered < SEND_ATTEMPTS:
            try:
                answer = self._answer(self.client.request(wire.TRAJECTORY_GROUP, body, self.request_timeout_s))
            except TimeoutError:
                unanswered += 1
                self.log.warning("group_ack_timeout", seq=group.seq, attempt=unanswered)
                continue
            if answer is None:  # not an answer to a group: as if unanswered
                unanswered += 1
            elif isinstance(answer, wire.Refused):
                self._rejected(group, answer)
                return
            elif answer.status != "full":  # accepted, or a duplicate of one accepted before
                return
            elif self._stopping.is_set():
                return
            else:  # full: the learner has not caught up: wait, as long as the buffer answers
                time.sleep(pause)
                pause = min(2 * pause, FULL_PAUSE_MAX_S)
        raise RuntimeError(f"group seq={group.seq} not acknowledged after {SEND_ATTEMPTS} sends without an answer")
