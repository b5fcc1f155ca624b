"""The outbox thread (actors/outbox.py): scores finished groups and delivers them at least once."""

import numpy as np
import pytest

from asyncor.actors.outbox import Outbox
from asyncor.actors.sequences import Prompt, InFlight
from asyncor.wire.envelope import Message
from asyncor.wire.trajectory import parse_group


class Codec:
    def decode(self, ids):
        return "".join(str(i) for i in ids)


class Scorer:
    timeouts = 0
    reward = None  # no task.reward: the task's own scoring
    failures: dict = {}
    detail_means: dict = {}

    def __init__(self):
        self.calls = []

    def score(self, samples):
        self.calls.append(len(samples))
        return [1.0 if s.text == s.reference else 0.0 for s in samples]


class Client:
    """Answers each `group` with the next scripted reply (an ack status, or 'timeout')."""

    def __init__(self, script=()):
        self.script = list(script)
        self.sent = []
        self.batches = []  # sizes of request_many calls

    def request(self, type_, body, timeout_s):
        assert type_ == "group"
        self.sent.append(parse_group(body))
        status = self.script.pop(0) if self.script else "accepted"
        if status == "timeout":
            raise TimeoutError("no reply")
        if status == "rejected":
            return Message("refused", {"reason": "bad_value", "detail": "scripted"})
        return Message("group_ack", {"status": status, "seq": self.sent[-1].seq})

    def request_many(self, type_, bodies, timeout_s):
        self.batches.append(len(bodies))
        replies = []
        for body in bodies:
            try:
                replies.append(self.request(type_, body, timeout_s))
            except TimeoutError:
                replies.append(None)
        return replies


class Log:
    def __init__(self):
        self.events = []

    def warning(self, event, **kw):
        self.events.append(event)

    error = info = warning


class Metrics:
    def __init__(self):
        self.records = []

    def log(self, values, step=None):
        self.records.append((step, values))


def finished_group(prompt_id, answers):
    flight = InFlight()
    prompt = Prompt(prompt_id, np.array([1, 2], np.int32), "arithmetic", "56")
    seqs = flight.start(prompt, len(answers), 8)
    group = None
    for seq, tokens in zip(seqs, answers):
        group = flight.record(seq.request_id, tokens, [-0.5] * len(tokens), 3, "stop")
    return group


def outbox_with(client):
    box = Outbox(0, Scorer(), Codec(), client, 1.0, Metrics(), Log())
    box.start()
    return box


def test_groups_are_scored_and_sent_in_order_with_their_sequence_numbers():
    client = Client()
    box = outbox_with(client)
    for i in range(5):
        box.put(finished_group(i, [[5, 6], [5, 7]]), timeout_s=5)
    box.drain(timeout_s=5)
    assert sum(client.batches) == 5  # sent in as many request_many batches as the thread found queued
    box.stop()
    assert [g.prompt_id for g in client.sent] == [0, 1, 2, 3, 4]
    assert [g.seq for g in client.sent] == [0, 1, 2, 3, 4]
    assert all(list(g.rewards) == [1.0, 0.0] for g in client.sent)
    assert all(g.min_version == 3 for g in client.sent)
    assert box.sent == {"groups": 5, "tokens": 20, "rejected": 0}
    assert box.metrics.records and box.metrics.records[-1][1]["actor/groups_sent"] == 5


def test_a_lost_ack_is_resent_with_the_same_seq_and_a_full_buffer_is_retried():
    client = Client(["timeout", "full", "accepted"])
    box = outbox_with(client)
    box.put(finished_group(7, [[5, 6]]), timeout_s=5)
    box.drain(timeout_s=10)
    box.stop()
    assert [g.seq for g in client.sent] == [0, 0, 0]  # the buffer dedupes on (actor_id, seq)
    assert client.batches == [1]  # the batch send got no ack; the one-by-one path got `full`, then accepted
    assert box.sent["groups"] == 1 and "group_ack_timeout" in box.log.events


def test_a_full_buffer_is_backpressure_not_a_failure():
    """Issue 14: three quick `full` answers used to stop the actor (and the run) while the learner caught up."""
    client = Client(["full"] * 8 + ["accepted"])
    box = outbox_with(client)
    box.put(finished_group(3, [[5]]), timeout_s=5)
    box.drain(timeout_s=20)
    box.check()  # no error
    box.stop()
    assert box.sent["groups"] == 1 and [g.seq for g in client.sent] == [0] * 9


def test_a_rejected_group_is_counted_not_retried():
    client = Client(["rejected"])
    box = outbox_with(client)
    box.put(finished_group(1, [[5]]), timeout_s=5)
    box.drain(timeout_s=5)
    box.stop()
    assert len(client.sent) == 1 and box.sent["rejected"] == 1 and "group_rejected" in box.log.events


def test_a_group_that_cannot_be_delivered_stops_the_outbox_and_the_loop_hears_it():
    client = Client(["timeout"] * 4)  # the batch send, then the 3 one-by-one attempts
    box = outbox_with(client)
    box.put(finished_group(1, [[5]]), timeout_s=5)
    with pytest.raises(RuntimeError, match="outbox failed"):
        box.drain(timeout_s=10)
    with pytest.raises(RuntimeError, match="not acknowledged"):
        box.put(finished_group(2, [[5]]), timeout_s=1)
