"""Staleness bound: admission (grants) and consumption (drops)."""

import numpy as np

from asyncor.wire.trajectory import Response, TrajectoryGroup
from asyncor.buffer.replay import ReplayStore
from asyncor.buffer.staleness import StalenessBudget


def group(seq: int, version: int) -> TrajectoryGroup:
    r = Response(np.array([1], np.int32), np.array([-0.1], np.float32), version, "stop", 1.0)
    return TrajectoryGroup(seq, np.array([1], np.int32), [r], actor_id=0, seq=seq, gen_time_s=0.0)


def test_admission_follows_areal_rule():
    b = StalenessBudget(max_staleness=2, groups_per_step=4)
    assert b.capacity() == (2 + 0 + 1) * 4
    assert b.grant(100) == 12 and b.capacity() == 0
    assert b.grant(1) == 0
    for _ in range(5):
        b.on_group_accepted()
    assert (b.accepted, b.in_flight, b.capacity()) == (5, 7, 0)
    b.on_version(1)  # learner consumed one batch and published v1
    assert b.capacity() == 4


def test_eta_zero_is_synchronous():
    b = StalenessBudget(max_staleness=0, groups_per_step=3)
    assert b.grant(10) == 3 and b.min_version_for_grant() == 0
    for _ in range(3):
        b.on_group_accepted()
    assert b.grant(10) == 0  # nothing more until the learner steps
    b.on_version(1)
    assert b.grant(10) == 3 and b.min_version_for_grant() == 1


def test_min_version_for_grant_lags_by_eta():
    b = StalenessBudget(max_staleness=2, groups_per_step=1)
    b.on_version(5)
    assert b.min_version_for_grant() == 3


def test_returned_grants_free_capacity():
    b = StalenessBudget(max_staleness=0, groups_per_step=2)
    b.grant(2)
    b.on_returned(2)
    assert b.capacity() == 2


def test_consumption_drops_stale_groups_and_gives_back_their_slots():
    b = StalenessBudget(max_staleness=1, groups_per_step=2)
    store = ReplayStore(max_groups=10)
    b.grant(4)
    for seq, version in enumerate([0, 0, 1, 1]):
        store.add(group(seq, version))
        b.on_group_accepted()
    b.on_version(2)
    stale = store.drop_stale(b)
    assert [g.seq for g in stale] == [0, 1]
    b.on_dropped(len(stale))
    assert b.capacity() == (1 + 2 + 1) * 2 - 2
    batch = store.take(2)
    assert [b.staleness(g.min_version) for g in batch] == [1, 1]


def test_fresh_boundary_is_inclusive():
    b = StalenessBudget(max_staleness=2, groups_per_step=1)
    b.on_version(4)
    assert b.is_fresh(2) and not b.is_fresh(1)


def test_store_never_hands_partial_batches_and_dedupes():
    store = ReplayStore(max_groups=2)
    store.add(group(0, 0))
    assert store.take(2) == []
    assert store.is_duplicate(group(0, 0))
    store.add(group(1, 0))
    assert store.is_full()
    assert [g.seq for g in store.take(2)] == [0, 1]


def test_duplicate_detection_stays_bounded_over_a_long_run():
    """Issue 14 soak: the set of answered (actor, seq) pairs grew by one entry per group for ever (about 3000
    groups/s in benchmarks/buffer_soak.py). Now each actor keeps a window; older sequence numbers fold into a
    floor and still count as seen."""
    from asyncor.buffer.replay import SeenSequences

    seen = SeenSequences(window=100)
    for seq in range(100_000):
        seen.add((3, seq))
        seen.add((7, seq * 2))
    assert len(seen) <= 2 * 100
    assert (3, 5) in seen and (3, 99_999) in seen and (3, 100_000) not in seen
    assert (7, 199_998) in seen and (7, 199_997 + 2) not in seen and (7, 199_999) not in seen  # odd: never sent
    assert (5, 0) not in seen  # another actor
    # Out of order inside the window is exact.
    fresh = SeenSequences(window=100)
    for seq in (5, 3, 9):
        fresh.add((0, seq))
    assert [(0, q) in fresh for q in range(10)] == [q in (3, 5, 9) for q in range(10)]
