"""buffer.stale_policy and the length bias of dropping stale groups (issue 27 item 4), in-process (buffer/batches.py,
buffer/state.py): "drop" drops groups older than η before a batch is taken, "train" hands them to the learner with
their staleness as it is; the lengths of the responses trained and dropped are counted per length, logged with every
batch, summarised under "length_bias", and kept in the checkpoint (an older state without them still loads)."""

import json

import numpy as np
import pytest
from asyncor.buffer import state
from asyncor.buffer.service import BufferService
from asyncor.configs.schema import Config
from asyncor.runtime.run_dir import BUFFER_STATE
from asyncor.wire import messages as wire
from asyncor.wire.arrays import unpack_array
from asyncor.wire.envelope import Message, decode, encode
from asyncor.wire.messages import encode_message
from asyncor.wire.trajectory import Response, TrajectoryGroup, parse_batch

from tests.conftest import write_tokenizer_dir

ACTOR, GROUPS, LEARNER = b"actor0", b"actor0/groups", b"learner"


class Metrics:
    """Stands in for the MetricsWriter: keeps what the buffer logs."""

    def __init__(self):
        self.logged: list[dict] = []

    def log(self, values: dict, step: int | None = None) -> None:
        self.logged.append(values)

    def batches(self) -> list[dict]:
        return [m for m in self.logged if "buffer/staleness_hist" in m]


@pytest.fixture
def make_service(tmp_path):
    """A buffer with η = 0, groups of 2, 2 groups per step, under `policy`, resumed from `resume_from` if given."""
    model = write_tokenizer_dir(tmp_path / "tok")

    def make(policy: str = "drop", resume_from: str = "") -> BufferService:
        config = Config.model_validate({
            "run": {"output_dir": str(tmp_path), "name": "stale"}, "model": {"path": str(model)},
            "task": {"train_size": 10}, "actors": {"group_size": 2},
            "buffer": {"max_staleness": 0, "stale_policy": policy},
            "learner": {"prompts_per_step": 2, "steps": 20}, "checkpoint": {"resume_from": resume_from}})
        return BufferService(config, metrics=Metrics())

    return make


def msg(message: wire.Body) -> Message:
    return decode(encode(message.TYPE, {**wire.body(message), "rid": 1}), 1 << 20)


def group(prompt: wire.GrantedPrompt, seq: int, version: int, lengths: tuple[int, int]) -> Message:
    """A group answering `prompt` by policy `version`, its two responses `lengths` tokens long (rewards differ)."""
    ids = unpack_array(prompt.token_ids, "token_ids", "<i4")
    responses = [Response(np.full(n, 5, np.int32), np.full(n, -0.1, np.float32), version, "stop", r)
                 for n, r in zip(lengths, (0.0, 1.0))]
    g = TrajectoryGroup(prompt.prompt_id, ids, responses, actor_id=0, seq=seq, gen_time_s=0.1)
    return decode(encode(wire.TRAJECTORY_GROUP, g.to_wire()), 1 << 20)


def generate(service: BufferService, seq: int, lengths: list[tuple[int, int]]) -> None:
    """Grants one group per entry of `lengths` and answers each at the buffer's version."""
    reply = service.on_actor(ACTOR, msg(wire.GrantRequest(actor_id=0, max_prompts=len(lengths))))
    assert isinstance(reply, wire.GrantReply) and len(reply.prompts) == len(lengths)
    for i, (p, n) in enumerate(zip(reply.prompts, lengths)):
        assert service.on_actor(GROUPS, group(p, seq + i, service.budget.version, n)).status == "accepted"


def stale_step(service: BufferService) -> None:
    """Two groups (lengths 2 and 8, 3 and 3) generated at version 0, then the learner moves to version 1 without
    training on them: with η = 0 both are stale."""
    service.on_actor(ACTOR, msg(wire.ActorHello(actor_id=0)))
    service.on_learner(LEARNER, msg(wire.VersionUpdate(version=0)))
    generate(service, 0, [(2, 8), (3, 3)])
    service.on_learner(LEARNER, msg(wire.VersionUpdate(version=1)))
    service.on_learner(LEARNER, msg(wire.BatchRequest(version=1, n_groups=2)))


def test_drop_drops_stale_groups_and_counts_their_lengths(make_service):
    service = make_service("drop")
    stale_step(service)
    assert service.owed()[1] == []  # both dropped: nothing to train on
    assert service.counts.dropped_stale == 2 and len(service.store) == 0
    assert service.budget.capacity() == 4  # their slots went back: two steps' worth at η = 0, version 1
    generate(service, 2, [(1, 1), (4, 4)])  # fresh at version 1
    (_, _, batch), = service.owed()[1]
    assert isinstance(batch, wire.BatchReply) and batch.staleness == [0, 0]
    logged, = service.metrics.batches()
    assert logged["buffer/trained_len_mean"] == 2.5  # 1, 1, 4, 4
    assert logged["buffer/dropped_len_mean"] == 4.0  # 2, 8, 3, 3
    assert logged["buffer/dropped_stale_responses"] == 4 and logged["buffer/dropped_stale"] == 2
    assert logged["buffer/staleness_hist"] == [2]

    bias = state.summary(service)["length_bias"]
    assert bias["trained"] == {"responses": 4, "mean": 2.5, "p50": 1, "p90": 4, "max": 4, "hist": [0, 2, 0, 0, 2]}
    assert bias["dropped"] == {"responses": 4, "mean": 4.0, "p50": 3, "p90": 8, "max": 8,
                               "hist": [0, 0, 1, 2, 0, 0, 0, 0, 1]}
    # All eight: 1 1 2 3 3 4 4 8, p90 = 8. Long (>= 8): the one dropped; short: 3 dropped of 7.
    assert bias["long_from"] == 8 and bias["long_drop_rate"] == 1.0 and bias["short_drop_rate"] == pytest.approx(3 / 7)
    assert json.loads(json.dumps(bias)) == bias  # roles/buffer.json: JSON values only


def test_train_hands_stale_groups_to_the_learner_with_their_staleness(make_service):
    service = make_service("train")
    stale_step(service)
    capacity = service.budget.capacity()
    assert capacity == 2  # admission unchanged: (η + v + 1) · 2 - 2 accepted
    (_, _, batch), = service.owed()[1]
    assert isinstance(batch, wire.BatchReply) and batch.staleness == [1, 1]  # above η = 0, as it is
    assert service.counts.dropped_stale == 0 and service.budget.capacity() == capacity
    logged, = service.metrics.batches()
    assert logged["buffer/staleness_hist"] == [0, 2] and logged["buffer/staleness_max"] == 1
    assert logged["buffer/trained_len_mean"] == 4.0 and logged["buffer/dropped_stale_responses"] == 0
    assert "buffer/dropped_len_mean" not in logged  # nothing dropped yet
    # The learner's bound under "train" (learner/trainer.py staleness_bound: its version) takes the batch.
    reply = decode(encode_message(batch), 1 << 20)
    groups, staleness, _ = parse_batch(reply, max_staleness=1)
    assert staleness == [1, 1] and len(groups) == 2
    summary = state.summary(service)
    assert summary["staleness"]["hist"] == [0, 2] and summary["staleness"]["max"] == 1
    bias = summary["length_bias"]
    assert bias["dropped"]["responses"] == 0 and bias["dropped"]["hist"] == []
    assert bias["trained"]["hist"] == [0, 0, 1, 2, 0, 0, 0, 0, 1] and bias["trained"]["p90"] == 8
    assert bias["long_drop_rate"] == 0.0 and bias["short_drop_rate"] == 0.0
    assert summary["ledger"]["unaccounted"] == 0 and summary["ledger"]["trained"] == 2


def test_length_stats_and_bias_on_a_hand_made_example():
    assert state.length_stats([]) == {"responses": 0, "mean": 0.0, "p50": 0, "p90": 0, "max": 0, "hist": []}
    ten = [0] + [1] * 10  # one response of each length 1..10: p90 is 9 (0.9 · 10 in floats is above 9)
    assert state.length_stats(ten) == {"responses": 10, "mean": 5.5, "p50": 5, "p90": 9, "max": 10, "hist": ten}
    counts = state.Counts()
    assert state.length_bias(counts)["long_drop_rate"] is None  # nothing counted
    counts.len_hist = {"trained": [0, 0, 6, 0, 3], "dropped": [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2]}
    bias = state.length_bias(counts)
    # All 12: six of 2, four of 4, two of 10; p90 (11th of 12) = 10. Long: 2 dropped of 2; short: 1 of 10.
    assert bias["long_from"] == 10 and bias["long_drop_rate"] == 1.0 and bias["short_drop_rate"] == 0.1
    assert bias["dropped"]["mean"] == 8.0 and bias["trained"]["mean"] == pytest.approx(8 / 3)


def test_counts_count_every_response_by_length():
    counts = state.Counts()
    short = TrajectoryGroup(0, np.array([1], np.int32), [
        Response(np.zeros(n, np.int32), np.zeros(n, np.float32), 0, "stop", 0.0) for n in (0, 3)], 0, 0, 0.0)
    counts.lengths("trained", [short, short])
    counts.lengths("dropped", [short])
    assert counts.len_hist == {"trained": [2, 0, 0, 2], "dropped": [1, 0, 0, 1]}


def test_length_histograms_survive_a_checkpoint_and_old_states_load(make_service, tmp_path):
    service = make_service("drop")
    stale_step(service)
    service.owed()
    generate(service, 2, [(1, 1), (4, 4)])
    service.owed()
    saved = service.on_learner(LEARNER, msg(wire.CheckpointRequest())).state
    assert saved["trained_len_hist"] == [0, 2, 0, 0, 2] and saved["dropped_len_hist"] == [0, 0, 1, 2, 0, 0, 0, 0, 1]
    before = state.summary(service)["length_bias"]

    new = tmp_path / "new"
    new.mkdir()
    (new / BUFFER_STATE).write_text(json.dumps(saved))
    resumed = make_service("drop", resume_from=str(new))
    assert resumed.counts.len_hist == service.counts.len_hist
    assert state.summary(resumed)["length_bias"] == before

    old = tmp_path / "old"  # a state written before the length histograms existed
    old.mkdir()
    (old / BUFFER_STATE).write_text(json.dumps({k: v for k, v in saved.items() if not k.endswith("_len_hist")}))
    resumed_old = make_service("drop", resume_from=str(old))
    assert resumed_old.counts.len_hist == {"trained": [], "dropped": []}
    assert resumed_old.counts.dropped_stale == 2
    assert state.summary(resumed_old)["length_bias"]["trained"]["responses"] == 0

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / BUFFER_STATE).write_text(json.dumps({**saved, "dropped_len_hist": [1, -2]}))
    with pytest.raises(RuntimeError, match="dropped_len_hist"):
        make_service("drop", resume_from=str(bad))
