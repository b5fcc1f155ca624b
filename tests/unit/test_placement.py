from asyncor.configs.loader import load_config
from asyncor.launcher.placement import slot_env
from asyncor.launcher.plan import local_plan, make_plan


def envs(plan, role, ids, addr="10.0.0.1", port=29500):
    return {s.index: slot_env(plan, s, ids, addr, port) for s in plan.slots if s.role == role}


def test_learner_and_actors_get_their_own_gpus_by_device_id():
    plan = local_plan(load_config(None, ["actors.count=3"]), 3)
    ids = ["3", "5", "7"]  # CUDA_VISIBLE_DEVICES=3,5,7 on this host
    assert envs(plan, "learner", ids)[0]["CUDA_VISIBLE_DEVICES"] == "3"
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs(plan, "actor", ids).values()] == ["5", "7", "5"]


def test_single_gpu_is_shared_and_cpu_sets_no_devices():
    plan = local_plan(load_config(None, ["actors.count=4"]), 1)
    assert envs(plan, "actor", ["5"])[3] == {"CUDA_VISIBLE_DEVICES": "5"}
    cpu = local_plan(load_config(None, []), 0)
    assert envs(cpu, "actor", []) == {0: {}} and "CUDA_VISIBLE_DEVICES" not in envs(cpu, "learner", [])[0]


def test_learner_ranks_see_every_learner_gpu_and_get_the_distributed_environment():
    plan = local_plan(load_config(None, ["learner.ranks=2", "actors.count=4"]), 5)
    env = envs(plan, "learner", ["0", "1", "2", "3", "4"])[1]
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                   "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs(plan, "actor", list("01234")).values()] == ["2", "3", "4", "2"]


def test_tensor_parallel_engine_sees_its_k_gpus_on_its_node():
    plan = make_plan(load_config(None, ["actors.count=3", "actors.tensor_parallel_size=2"]), 2, 4)
    ids = [str(i) for i in range(4)]
    assert {i: (s.node, e["CUDA_VISIBLE_DEVICES"]) for (i, e), s in
            zip(envs(plan, "actor", ids).items(), [s for s in plan.slots if s.role == "actor"])} == \
        {0: (0, "1,2"), 1: (1, "0,1"), 2: (1, "2,3")}


def test_impossible_placements_are_refused_by_key_before_anything_starts():
    import pytest

    from asyncor.launcher.placement import check_placement

    with pytest.raises(ValueError, match="learner.offload_optimizer"):
        check_placement(load_config(None, ["learner.offload_optimizer=true"]), [])
    check_placement(load_config(None, ["learner.ranks=2"]), [])  # CPU: ranks are processes, any count


def test_loopback_hosts_are_told_apart_from_network_addresses():
    from asyncor.launcher.placement import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5") and not is_loopback("0.0.0.0") and not is_loopback("node12")


def test_cpu_cores_give_each_actor_its_own_and_the_learner_what_is_left():
    from asyncor.runtime.cores import actor_cores, learner_cores

    assert actor_cores(0, 1, [0, 1]) == [0] and learner_cores(1, 1, [0, 1]) == [1]
    assert actor_cores(1, 2, [0, 1, 2, 3, 4, 5]) == [2, 3] and learner_cores(2, 2, [0, 1, 2, 3, 4, 5]) == [4, 5]
    assert learner_cores(2, 1, [0, 1]) == []  # the actors take every core: the learner is not pinned
    assert actor_cores(2, 1, [4, 7]) == [4]  # wraps around the cores this process may use
