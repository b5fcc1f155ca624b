"""The multi-stage schedule, the staleness budget across stages, and online filtering."""

from pathlib import Path

import pytest

from asyncor.buffer.online_filter import OnlineFilter
from asyncor.buffer.prompts import PromptStream
from asyncor.buffer.staleness import StalenessBudget
from asyncor.configs.loader import ConfigError, load_config
from asyncor.configs.stages import groups_through, max_over_stages, stage_at, stages
from asyncor.tasks.arithmetic import TextProblem

TWO_STAGES = ['algo.stages=[{start_step=2, max_response_tokens=4, group_size=6}, {start_step=5, prompts_per_step=32}]']


def test_stages_inherit_and_override():
    cfg = load_config(None, TWO_STAGES + ["learner.prompts_per_step=64", "actors.max_response_tokens=8",
                                          "actors.group_size=8", "learner.steps=10"])
    s0, s1, s2 = stages(cfg)
    assert (s0.start_step, s0.max_response_tokens, s0.prompts_per_step, s0.group_size) == (0, 8, 64, 8)
    assert (s1.start_step, s1.max_response_tokens, s1.prompts_per_step, s1.group_size) == (2, 4, 64, 6)
    assert (s2.start_step, s2.max_response_tokens, s2.prompts_per_step, s2.group_size) == (5, 4, 32, 6)
    assert [stage_at(cfg, k).index for k in range(7)] == [0, 0, 1, 1, 1, 2, 2]
    assert groups_through(cfg, 7) == 5 * 64 + 2 * 32
    assert groups_through(cfg, 1) == 64
    assert max_over_stages(cfg, "max_response_tokens") == 8 and max_over_stages(cfg, "group_size") == 8


def test_bad_schedules_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="strictly increasing"):
        load_config(None, ['algo.stages=[{start_step=5}, {start_step=3}]', "learner.steps=10"])
    with pytest.raises(ConfigError, match="only learner.steps"):
        load_config(None, ['algo.stages=[{start_step=50}]', "learner.steps=10"])
    with pytest.raises(ConfigError, match=r"algo.stages\[0\].prompts_per_step"):
        load_config(None, ['algo.stages=[{start_step=2, prompts_per_step=30}]', "learner.steps=10",
                           "learner.prompts_per_step=64", "algo.off_policy.minibatch_prompts=16"])


def test_budget_follows_the_stage_batch_sizes():
    sizes = {0: 4, 1: 4, 2: 2, 3: 2, 4: 2}
    b = StalenessBudget(max_staleness=1, groups_through=lambda k: sum(sizes.get(i, 2) for i in range(k)))
    assert b.capacity() == 8  # steps 0 and 1: 4 + 4
    assert b.grant(10) == 8
    for _ in range(8):
        b.on_group_accepted()
    b.on_version(1)
    assert b.capacity() == 2  # through step 2: 4 + 4 + 2 = 10, 8 used
    b.on_version(2)
    assert b.capacity() == 4


def test_online_filter_keeps_prompts_missed_even_once():
    f = OnlineFilter()
    f.observe(1, [1.0, 1.0])
    f.observe(2, [1.0, 0.0])
    f.observe(3, [1.0, 1.0])
    f.observe(3, [1.0, 0.0])  # solved every time in one group, not in the other
    f.observe(4, [0.0, 0.0])
    assert f.end_stage() == {1}
    assert f.end_stage() == set()  # counting starts afresh each stage


def test_prompt_stream_removal_is_permanent_but_never_empties_the_pool():
    problems = [TextProblem(i, f"p{i}", str(i)) for i in range(5)]
    stream = PromptStream(problems, seed=0)
    stream.give_back([problems[1]])
    assert stream.remove({1, 3, 99}) == 2 and stream.remaining == 3
    seen = {p.id for p in stream.take(12)}
    assert seen == {0, 2, 4}
    assert stream.remove({0, 2, 4}) == 0 and stream.remaining == 3


@pytest.mark.parametrize("name,table", [
    ("skywork_or1_7b", [(0, 16384, 256, 16), (660, 32768, 160, 32)]),
    ("skywork_or1_32b", [(0, 16384, 256, 16), (760, 24576, 160, 32)]),
])
def test_cluster_configs_carry_the_paper_stage_tables(name, table):
    path = str(Path(__file__).resolve().parents[2] / "configs" / f"{name}.toml")
    # The data paths are placeholders: refused by name until they exist; sample files stand in here.
    with pytest.raises(ConfigError, match="/data/skywork-or1/train_math.parquet"):
        load_config(path, [])
    data = Path(__file__).resolve().parents[1] / "data"
    cfg = load_config(path, [f'task.train_files=["{data / "math.jsonl"}", "{data / "code.jsonl"}"]',
                             f'task.heldout_files=["{data / "math.jsonl"}"]', 'task.format="auto"'])
    assert cfg.task.kind == "files" and cfg.eval.max_response_tokens == 32768
    assert [(s.start_step, s.max_response_tokens, s.prompts_per_step, s.group_size) for s in stages(cfg)] == table
    assert cfg.learner.lr == 1e-6 and cfg.algo.kl_coef == 0.0 and cfg.algo.entropy.target == 0.2
    assert cfg.learner.clip_eps_low == cfg.learner.clip_eps_high == 0.2
