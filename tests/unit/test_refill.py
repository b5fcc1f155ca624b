"""The refill rule (actors/refill.py) on its own: when weights may be loaded, the room for prompts, when to ask,
and the rule a config gives the actor (actors/worker.py `rollout_settings`)."""

import numpy as np
import pytest

from asyncor.actors.refill import RefillRule
from asyncor.configs.loader import load_config

INFLIGHT = RefillRule("inflight", target_sequences=32, prompts_per_chunk=4)
CHUNK = RefillRule("chunk", target_sequences=32, prompts_per_chunk=4)


def test_inflight_loads_between_any_two_steps_chunk_only_once_drained():
    assert INFLIGHT.may_load(0) and INFLIGHT.may_load(17)
    assert CHUNK.may_load(0) and not CHUNK.may_load(1) and not CHUNK.may_load(17)


def test_inflight_room_is_free_slots_under_the_target_in_whole_groups_counting_granted_ones():
    assert INFLIGHT.room(0, 0, 4) == 8
    assert INFLIGHT.room(20, 0, 4) == 3
    assert INFLIGHT.room(20, 4, 4) == 2  # a granted group not yet started holds its slots
    assert INFLIGHT.room(21, 0, 4) == 2  # 11 free slots: two whole groups
    assert INFLIGHT.room(30, 8, 4) == 0  # over the target (a larger grant): no room, never negative
    assert INFLIGHT.room(0, 0, 8) == 4 and INFLIGHT.room(0, 0, 64) == 0  # a group larger than the engine never fits
    assert INFLIGHT.room(0, 0, 4, waiting=True) == 8  # waiting grants or weights do not stop a refill


def test_chunk_room_is_a_whole_chunk_only_when_nothing_runs_or_waits():
    assert CHUNK.room(0, 0, 4) == 4 and CHUNK.room(0, 0, 64) == 4  # prompts_per_chunk, whatever the group size
    assert CHUNK.room(1, 0, 4) == 0  # one sequence still running
    assert CHUNK.room(0, 4, 4) == 0  # a grant not started yet
    assert CHUNK.room(0, 0, 4, waiting=True) == 0  # weights to load first: the next chunk starts on them


def test_inflight_refills_in_batches_of_about_a_quarter_of_the_target():
    # 32 sequences of groups of 4: 8 prompts, asked for 2 at a time while the engine runs.
    assert INFLIGHT.refill_batch(4) == 2
    assert not INFLIGHT.should_ask(1, running=28, group_size=4)
    assert INFLIGHT.should_ask(2, running=24, group_size=4)
    assert INFLIGHT.should_ask(1, running=0, group_size=4)  # an empty engine asks for any room at all
    assert not INFLIGHT.should_ask(0, running=0, group_size=4)
    # A small engine still asks one prompt at a time; a large one waits for a quarter.
    assert INFLIGHT.refill_batch(16) == 1 and INFLIGHT.should_ask(1, running=16, group_size=16)
    big = RefillRule("inflight", target_sequences=256)
    assert big.refill_batch(8) == 8
    assert not big.should_ask(7, running=200, group_size=8) and big.should_ask(8, running=192, group_size=8)


def test_chunk_asks_whenever_it_has_room():
    assert CHUNK.should_ask(CHUNK.room(0, 0, 4), running=0, group_size=4)
    assert not CHUNK.should_ask(CHUNK.room(8, 0, 4), running=8, group_size=4)
    assert CHUNK.should_ask(1, running=0, group_size=4)  # no quarter threshold in chunk mode


def test_prompts_at_once():
    assert INFLIGHT.prompts_at_once(4) == 8 and INFLIGHT.prompts_at_once(64) == 0
    assert CHUNK.prompts_at_once(4) == 4


@pytest.mark.parametrize("kw", [dict(update_mode="stream"), dict(target_sequences=0), dict(prompts_per_chunk=0)])
def test_a_bad_rule_is_refused(kw):
    with pytest.raises(ValueError):
        RefillRule(**kw)


@pytest.mark.parametrize("sets, target", [
    ([], 32 * 8),  # the tiny default: prompts_per_chunk x group_size
    (["actors.inflight_sequences=24"], 24),
    (["algo.stages=[{start_step=3, group_size=16}]"], 32 * 16),  # room for a later stage's larger groups
    (["actors.update_mode='chunk'", "actors.prompts_per_chunk=5"], 5 * 8),
])
def test_from_config_sizes_the_engine_from_the_actors_section_and_the_largest_group(sets, target):
    from asyncor.configs.stages import max_over_stages

    config = load_config(None, sets)
    a = config.actors
    rule = RefillRule.from_config(a, max_over_stages(config, "group_size"))
    assert rule == RefillRule(a.update_mode, target, a.prompts_per_chunk)


def test_the_actor_runs_the_rule_of_its_config():
    from asyncor.actors.worker import rollout_settings

    class Codec:
        eos_id = 2

        def encode_prompt(self, text):
            return np.array([1], np.int32)

    config = load_config(None, ["actors.update_mode='chunk'", "algo.stages=[{start_step=3, group_size=16}]"])
    assert rollout_settings(config, Codec()).refill == RefillRule("chunk", 32 * 16, 32)
