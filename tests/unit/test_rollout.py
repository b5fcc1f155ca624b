"""The actor's decode loop (actors/rollout.py) driven with a fake engine, buffer link, weights and outbox.

The fake engine samples one token per running sequence per step; its log-prob is -w where w is the
"weight" last loaded, so every recorded log-prob tells which weights produced it. A sequence stops after
the number of tokens its prompt's first id asks for (continuation tokens are 9, so a restarted sequence
still knows how far it got). Like vLLM, a streamed sequence reports every step's token, any other only once,
at its end, with the version of each token.
"""

import numpy as np
import pytest

from asyncor.actors.buffer_link import Grant
from asyncor.wire.messages import Stop, WaitReply
from asyncor.actors.outbox import to_trajectory
from asyncor.actors.refill import RefillRule
from asyncor.actors.rollout import Rollout, RolloutSettings
from asyncor.actors.sequences import Prompt, InFlight
from asyncor.wire.trajectory import parse_group

TOKEN = 9


class FakeEngine:
    def __init__(self):
        self.w, self.version = 0.5, 0
        self.requests = {}  # sequence id -> [prompt, max_tokens, generated, stream, tokens, logprobs, versions, request]
        self.held = {}  # request of n -> its finished sequences' deltas, reported when the last one ends
        self.added, self.aborted = [], []
        self.seeds = {}  # request id -> the sampling seed it was added with
        self.step_count = 0
        self.batch_sizes = []

    def add(self, request_id, prompt, max_tokens, temperature, top_p, stop_token_id, salt, stream=False, n=1, seed=None):
        assert not (stream and n > 1)
        ids = [request_id] if n == 1 else [f"{request_id}/{k}" for k in range(n)]
        for sid in ids:
            assert sid not in self.requests
            self.requests[sid] = [np.asarray(prompt), max_tokens, 0, stream, [], [], [], request_id]
        if n > 1:
            self.held[request_id] = []
        self.added.append((request_id, list(np.asarray(prompt)), max_tokens, salt))
        self.seeds[request_id] = seed

    def step(self):
        from asyncor.actors.engine import Delta

        self.step_count += 1
        self.batch_sizes.append(len(self.requests))
        out = []
        for sid, (prompt, max_tokens, done, stream, tokens, logprobs, versions, rid) in list(self.requests.items()):
            done += 1
            self.requests[sid][2] = done
            so_far = int(np.sum(prompt == TOKEN)) + done
            reason = "stop" if so_far >= prompt[0] else ("length" if done >= max_tokens else None)
            if reason:
                del self.requests[sid]
            tokens.append(TOKEN), logprobs.append(-self.w), versions.append(self.version)
            if stream:
                out.append(Delta(sid, np.array([TOKEN], np.int32), np.array([-self.w], np.float32), reason))
            elif reason:
                delta = Delta(sid, np.array(tokens, np.int32), np.array(logprobs, np.float32), reason,
                              np.array(versions, np.int32))
                if rid in self.held:
                    self.held[rid].append(delta)
                    if not any(r[7] == rid for r in self.requests.values()):
                        out.extend(self.held.pop(rid))
                else:
                    out.append(delta)
        return out

    def abort(self, ids):
        for rid in ids:
            for sid in [s for s, r in self.requests.items() if r[7] == rid]:
                del self.requests[sid]
            self.held.pop(rid, None)
        self.aborted.extend(ids)

    def running(self):
        return len(self.requests)

    def load_weights(self, tensors, version):
        [(_, w)] = tensors
        self.w, self.version = w, version


class Staged:
    def __init__(self, version, w):
        self.version, self.tensors, self.recv_s = version, [("w", w)], 0.0


class FakeWeights:
    """Weights that 'arrive' once the engine has made a given number of steps."""

    def __init__(self, engine, schedule):
        self.engine = engine
        self.schedule = sorted(schedule)  # [(after_step, version)]

    def take(self):
        if self.schedule and self.engine.step_count >= self.schedule[0][0]:
            _, v = self.schedule.pop(0)
            return Staged(v, 0.5 + v)
        return None

    def wait_for(self, version, timeout_s):
        staged = self.take()
        if staged is None and self.schedule:  # time passes while nobody steps the engine
            self.engine.step_count = self.schedule[0][0]
            staged = self.take()
        return staged


class FakeLink:
    def __init__(self, lengths, n=2, max_tokens=50, min_version=0):
        self.prompts = [Prompt(i, np.array([length, 1, 2], np.int32), "arithmetic", "x")
                        for i, length in enumerate(lengths)]
        self.n, self.max_tokens, self.min_version = n, max_tokens, min_version
        self.asked, self.returned, self.holds = [], [], []
        self.outstanding = 0

    def ask(self, max_prompts, version, hold_s=0.0):
        self.asked.append((max_prompts, version))
        self.holds.append(hold_s)
        if not self.prompts:
            return Stop() if self.outstanding == 0 else WaitReply(retry_s=0.0)
        take, self.prompts = self.prompts[:max_prompts], self.prompts[max_prompts:]
        self.outstanding += len(take)
        return Grant(take, self.min_version, self.n, self.max_tokens)

    def give_back(self, ids):
        self.returned.extend(ids)


class FakeOutbox:
    def __init__(self, engine, link):
        self.engine, self.link = engine, link
        self.groups = []  # (engine step when put, group)

    def put(self, group, timeout_s):
        self.groups.append((self.engine.step_count, group))
        self.link.outstanding -= 1


def make(lengths, schedule=(), n=2, target=8, **settings):
    engine = FakeEngine()
    link = FakeLink(lengths, n=n, min_version=settings.pop("min_version", 0))
    outbox = FakeOutbox(engine, link)
    weights = FakeWeights(engine, list(schedule))
    settings = {"grant_wait_s": 60.0, **settings}
    refill = RefillRule(settings.pop("update_mode", "inflight"), target_sequences=target, prompts_per_chunk=target // n)
    s = RolloutSettings(refill=refill, group_size=n, metrics_every_s=1e9, **settings)
    return Rollout(engine, link, weights, outbox, s, log=_Log()), engine, link, outbox


class _Log:
    def warning(self, *a, **k):
        pass

    info = error = warning


def finished(outbox):
    return {g.prompt.prompt_id: (step, g) for step, g in outbox.groups}


@pytest.mark.parametrize("mode", ["inflight", "chunk"])
def test_a_short_group_is_handed_on_before_a_long_group_of_the_same_grant_finishes(mode):
    rollout, engine, link, outbox = make([30, 3, 4, 5], update_mode=mode)
    rollout.run()
    done = finished(outbox)
    assert set(done) == {0, 1, 2, 3}
    assert done[1][0] < done[0][0]  # prompt 1 (3 tokens) left while prompt 0 (30 tokens) was still running
    assert [len(s.tokens) for s in done[0][1].sequences] == [30, 30]


def test_inflight_keeps_the_engine_full_where_chunks_leave_it_empty():
    lengths = [2, 20, 3, 17, 4, 25, 2, 3, 19, 5, 2, 22, 3, 4, 18, 2] * 2
    occupancy = {}
    for mode in ("chunk", "inflight"):
        rollout, engine, _, outbox = make(lengths, n=2, target=8, update_mode=mode)
        rollout.run()
        assert len(outbox.groups) == len(lengths)
        occupancy[mode] = np.mean(engine.batch_sizes) / 8
    assert occupancy["inflight"] > 0.8
    assert occupancy["inflight"] > 1.5 * occupancy["chunk"], occupancy


def test_inflight_keep_switches_between_steps_and_tags_every_token_with_its_version():
    rollout, engine, _, outbox = make([12, 12], schedule=[(5, 1), (9, 2)], update_mode="inflight", inflight_kv="keep")
    rollout.run()
    for _, g in outbox.groups:
        for s in g.sequences:
            assert s.versions == [0] * 5 + [1] * 4 + [2] * 3
            np.testing.assert_allclose(s.logprobs, [-(0.5 + v) for v in s.versions])
    assert not engine.aborted  # nothing restarted: KV kept
    wire = to_trajectory(outbox.groups[0][1], [1.0, 0.0], actor_id=0, seq=0)
    back = parse_group(wire.to_wire())
    assert back.min_version == 0
    np.testing.assert_array_equal(back.responses[0].versions, [0] * 5 + [1] * 4 + [2] * 3)


def test_inflight_recompute_restarts_running_sequences_from_prompt_plus_tokens_on_the_new_version():
    rollout, engine, _, outbox = make([10], schedule=[(4, 1)], n=2, update_mode="inflight", inflight_kv="recompute")
    rollout.run()
    [(_, g)] = outbox.groups
    for s in g.sequences:
        assert s.versions == [0] * 4 + [1] * 6
        assert len(s.tokens) == 10
    restarts = [a for a in engine.added if a[3] == "v1"]
    assert len(restarts) == 2 and len(engine.aborted) == 2
    for _, prompt, max_tokens, _ in restarts:
        assert prompt == [10, 1, 2] + [TOKEN] * 4 and max_tokens == 50 - 4
    assert rollout.stats["restarted"] == 2


def test_chunk_mode_loads_new_weights_only_after_the_chunk_drains():
    rollout, engine, link, outbox = make([10, 3, 3, 3, 3, 3, 3, 3], schedule=[(2, 1)], n=2, target=8,
                                         update_mode="chunk")
    rollout.run()
    first = [g for _, g in outbox.groups if g.prompt.prompt_id < 4]
    assert all(s.versions == [0] * len(s.versions) for g in first for s in g.sequences)
    later = [g for _, g in outbox.groups if g.prompt.prompt_id >= 4]
    assert later and all(set(s.versions) == {1} for g in later for s in g.sequences)
    assert link.asked[0] == (4, 0) and link.asked[1] == (4, 1)  # the second grant waited for the chunk (and the load)


def test_a_grant_waits_for_the_weights_it_requires():
    rollout, engine, link, outbox = make([3, 3], schedule=[(7, 1)], min_version=1)
    rollout.run()
    assert outbox.groups and all(set(s.versions) == {1} for _, g in outbox.groups for s in g.sequences)
    assert rollout.budget.seconds["waiting_for_weights"] > 0  # the engine was empty meanwhile: measured as such
    assert not link.returned


def test_a_grant_whose_weights_never_come_goes_back_to_the_buffer():
    rollout, engine, link, outbox = make([3, 3], schedule=[], min_version=5, grant_wait_s=0.0)
    rollout.tick()
    rollout.tick()
    assert link.returned == [0, 1] and not outbox.groups and rollout.stats["returned"] == 2


def test_stop_aborts_what_is_still_running():
    rollout, engine, link, outbox = make([40, 40])
    for _ in range(3):
        rollout.tick()
    assert engine.running() == 4
    rollout.stopped = True
    rollout.run()
    assert engine.running() == 0 and len(engine.aborted) == 2 and not outbox.groups  # 2 requests of n = 2


def test_a_full_engine_still_hears_stop_and_aborts_its_sequences():
    rollout, engine, link, outbox = make([40, 40], target=4, heartbeat_s=0.0)
    rollout.tick()  # granted: 4 sequences of 40 tokens, no room asked for after that
    link.prompts, link.outstanding = [], 0  # the learner is done: the next ask hears `stop`
    rollout.run()
    assert engine.step_count < 40 and not outbox.groups and len(engine.aborted) == 2
    assert link.asked[-1][0] == 0  # a heartbeat asks for nothing
    assert link.holds[0] > 0 and link.holds[-1] == 0  # only an idle engine lets the buffer hold its request


def test_in_flight_bookkeeping_ignores_outputs_of_a_restarted_request():
    flight = InFlight()
    prompt = Prompt(7, np.array([1, 2], np.int32), "arithmetic", "3")
    [a, b] = flight.start(prompt, 2, 8)
    old = flight.restart(a)
    assert flight.record(old, [5], [-0.1], 0, None) is None and a.tokens == []  # late output of the aborted request
    assert flight.record(a.request_id, [5], [-0.1], 1, "stop") is None
    group = flight.record(b.request_id, [6, 2], [-0.2, -0.3], 1, "stop")
    assert group is not None and group.num_tokens == 3 and len(flight) == 0
    together = flight.start(prompt, 2, 8, together=True)
    assert [s.request_id for s in together] == [f"{together[0].engine_request}/0", f"{together[0].engine_request}/1"]
    with pytest.raises(ValueError, match="already in flight"):
        flight.start(prompt, 2, 8)
    with pytest.raises(ValueError, match="cannot restart alone"):
        flight.restart(together[0])
    assert flight.drop_all() == [together[0].engine_request]  # one engine request to abort for the group


@pytest.mark.parametrize("kv", ["keep", "recompute"])
def test_seeded_requests_draw_from_what_they_are_not_when_they_run(kv):
    """actors.seeded_requests: a request's seed depends on the prompt, the sample, the version (and, restarted,
    the tokens it has), never on request ids or timing, so a resumed run samples what the uninterrupted one did."""
    from asyncor.actors.rollout import request_seed

    def seeds(lengths, seed, target=8):
        rollout, engine, _, _ = make(lengths, schedule=[(3, 1)], n=2, target=target, update_mode="inflight",
                                     inflight_kv=kv, seed=seed)
        rollout.run()
        return engine, sorted(v for v in engine.seeds.values() if v is not None)

    # Other lengths and a smaller engine: the requests finish, start and restart in another order.
    engine, forward = seeds([6, 7, 8], seed=5)
    _, other = seeds([8, 7, 6], seed=5, target=6)
    assert forward == other and len(set(forward)) == len(forward)
    assert request_seed(5, 0, 0) in forward and request_seed(5, 0, 0) != request_seed(6, 0, 0)
    assert request_seed(5, 0, 0) != request_seed(5, 0, 1) != request_seed(5, 1, 0)
    if kv == "recompute":  # restarted on version 1 with the tokens so far
        assert any(v == request_seed(5, 0, 1, sample, 3) for v in forward for sample in (0, 1))
    _, unseeded = seeds([6, 7, 8], seed=None)
    assert unseeded == []  # off: the engine's own stream
