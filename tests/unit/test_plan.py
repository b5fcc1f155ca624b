"""Cluster placement plans (launcher/plan.py) for shapes this machine does not have."""

import json
import os
import subprocess
import sys

import pytest

from asyncor.configs.loader import load_config
from asyncor.launcher.plan import PlanError, make_plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {name: os.path.join(ROOT, "configs", f"skywork_or1_{name}.toml") for name in ("7b", "32b")}


def config(name, *overrides):
    return load_config(CONFIGS[name], list(overrides), check_files=False)  # the data lives on the cluster


def gpus_of(plan, role):
    return {s.index: (s.node, s.gpus) for s in plan.slots if s.role == role}


@pytest.mark.parametrize("name", ["7b", "32b"])
def test_two_nodes_of_eight_put_the_learner_and_actors_on_node_0_and_leave_node_1_idle(name):
    cfg = config(name)
    plan = make_plan(cfg, nodes=2, gpus_per_node=8)
    ranks, actors = cfg.learner.ranks, cfg.actors.count
    assert gpus_of(plan, "learner") == {r: (0, (r,)) for r in range(ranks)}
    assert gpus_of(plan, "actor") == {i: (0, (ranks + i,)) for i in range(actors)}
    assert [s.node for s in plan.slots if s.role == "buffer"] == [0]
    assert plan.idle_gpus() == [(1, g) for g in range(8)]
    assert "idle GPU 0-7" in plan.table()


@pytest.mark.parametrize("name", ["7b", "32b"])
def test_sixteen_nodes_of_eight_fill_every_gpu_with_one_engine_each(name):
    plan = make_plan(config(name, "actors.count=124"), nodes=16, gpus_per_node=8)
    actors = gpus_of(plan, "actor")
    assert len(actors) == 124 and not plan.idle_gpus()
    assert len({(node, gpus) for node, gpus in actors.values()}) == 124  # no GPU shared
    assert actors[123] == (15, (7,)) and actors[3] == (0, (7,)) and actors[4] == (1, (0,))
    assert "128 of 128 GPUs used (4 learner, 124 actor)" in plan.table()


def test_too_many_actors_are_refused_naming_the_key_and_what_fits():
    with pytest.raises(PlanError, match=r"actors.count = 13 .* need 17 GPUs.* 2 x 8 = 16: set actors.count <= 12 or add "
                                        r"nodes \(3 would fit it\)"):
        make_plan(config("7b", "actors.count=13"), nodes=2, gpus_per_node=8)


def test_no_gpu_left_for_actors_says_so():
    with pytest.raises(PlanError, match=r"lower learner.ranks or actors.tensor_parallel_size .* add nodes \(2 would fit it\)"):
        make_plan(config("7b"), nodes=1, gpus_per_node=4)


def test_learner_ranks_beyond_one_node_are_refused():
    with pytest.raises(PlanError, match=r"learner.ranks = 16 .* set learner.ranks <= 8"):
        make_plan(config("7b", "learner.ranks=16"), nodes=16, gpus_per_node=8)


def test_bad_shapes_are_refused():
    with pytest.raises(PlanError, match="--nodes 0"):
        make_plan(config("7b"), nodes=0, gpus_per_node=8)
    with pytest.raises(PlanError, match="--gpus-per-node -1"):
        make_plan(config("7b"), nodes=2, gpus_per_node=-1)
    with pytest.raises(PlanError, match="offload_optimizer"):
        make_plan(config("32b"), nodes=2, gpus_per_node=0)  # the 32B config offloads its optimiser to the CPU


def test_cpu_nodes_spread_the_actors_over_the_other_nodes():
    plan = make_plan(load_config(None, ["actors.count=4", "learner.ranks=2"]), nodes=3, gpus_per_node=0)
    assert [s.node for s in plan.slots if s.role == "actor"] == [1, 2, 1, 2]
    assert {s.node for s in plan.slots if s.role in ("buffer", "learner")} == {0}
    one = make_plan(load_config(None, []), nodes=1, gpus_per_node=0)
    assert {s.node for s in one.slots} == {0}


def test_launch_plan_prints_the_table_writes_json_and_refuses_with_exit_2(tmp_path):
    out = tmp_path / "plan.json"
    ok = subprocess.run([sys.executable, "launch.py", "plan", "--config", CONFIGS["7b"], "--nodes", "2",
                         "--gpus-per-node", "8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "| 0 | 8 | buffer, learner rank 0 (GPU 0)" in ok.stdout and "8 of 16 GPUs used" in ok.stdout
    plan = json.loads(out.read_text())
    assert plan["nodes"] == 2 and len(plan["idle_gpus"]) == 8
    bad = subprocess.run([sys.executable, "launch.py", "plan", "--config", CONFIGS["7b"], "--nodes", "1",
                          "--gpus-per-node", "4"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "actors.count = 4" in bad.stderr and "Traceback" not in bad.stderr


def test_tensor_parallel_engines_take_k_gpus_on_one_node_and_never_span_nodes():
    plan = make_plan(config("7b", "actors.tensor_parallel_size=2", "actors.count=6"), nodes=2, gpus_per_node=8)
    actors = gpus_of(plan, "actor")
    assert actors == {0: (0, (4, 5)), 1: (0, (6, 7)), 2: (1, (0, 1)), 3: (1, (2, 3)), 4: (1, (4, 5)), 5: (1, (6, 7))}
    assert not plan.idle_gpus() and "actor 0 (GPU 4-5)" in plan.table()
    # 3 GPUs per engine: node 0 holds one engine (GPUs 4-6), other nodes two; a GPU per node stays idle.
    odd = make_plan(config("7b", "actors.tensor_parallel_size=3", "actors.count=3"), nodes=2, gpus_per_node=8)
    assert gpus_of(odd, "actor") == {0: (0, (4, 5, 6)), 1: (1, (0, 1, 2)), 2: (1, (3, 4, 5))}
    assert (0, 7) in odd.idle_gpus() and (1, 6) in odd.idle_gpus()
    with pytest.raises(PlanError, match=r"actors.count = 4 .* set actors.count <= 3 or add nodes \(3 would fit it\)"):
        make_plan(config("7b", "actors.tensor_parallel_size=3", "actors.count=4"), nodes=2, gpus_per_node=8)
    with pytest.raises(PlanError, match=r"actors.tensor_parallel_size = 16 .* set it <= 8"):
        make_plan(config("7b", "actors.tensor_parallel_size=16"), nodes=4, gpus_per_node=8)
    with pytest.raises(PlanError, match="CPU engines run with 1"):
        make_plan(load_config(None, ["actors.tensor_parallel_size=2"]), nodes=2, gpus_per_node=0)


def test_sixteen_nodes_fit_thirty_one_tensor_parallel_engines_of_four():
    plan = make_plan(config("32b", "actors.tensor_parallel_size=4", "actors.count=31"), nodes=16, gpus_per_node=8)
    assert not plan.idle_gpus() and len(gpus_of(plan, "actor")) == 31


def test_one_host_plan_shares_gpus_only_when_it_must():
    from asyncor.launcher.plan import local_plan

    cfg = load_config(None, ["actors.count=3", "learner.ranks=2"])
    plan = local_plan(cfg, 5)
    assert gpus_of(plan, "learner") == {0: (0, (0,)), 1: (0, (1,))}
    assert gpus_of(plan, "actor") == {0: (0, (2,)), 1: (0, (3,)), 2: (0, (4,))}
    shared = local_plan(load_config(None, ["actors.count=3"]), 1)  # one GPU: everyone on it
    assert gpus_of(shared, "actor") == {0: (0, (0,)), 1: (0, (0,)), 2: (0, (0,))}
    assert {s.gpus for s in local_plan(cfg, 0).slots} == {()}
    with pytest.raises(PlanError, match="learner.ranks = 2 but this host has 1 GPU"):
        local_plan(cfg, 1)
