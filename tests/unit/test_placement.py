from launcher.placement import role_env


def test_learner_and_actors_get_their_own_gpus():
    gpus = ["0", "1", "2"]
    assert role_env("learner", 0, gpus) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert [role_env("actor", i, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["1", "2", "1"]


def test_single_gpu_is_shared_and_cpu_sets_nothing():
    assert role_env("actor", 3, ["5"]) == {"CUDA_VISIBLE_DEVICES": "5"}
    assert role_env("actor", 0, []) == {} and role_env("learner", 0, []) == {}


def test_learner_ranks_take_the_first_gpus_and_get_the_distributed_environment():
    from launcher.placement import learner_env

    gpus = ["0", "1", "2", "3", "4"]
    env = learner_env(1, 2, "10.0.0.1", 29500, gpus)
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                   "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert [role_env("actor", i, gpus, 2)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["2", "3", "4", "2"]


def test_impossible_placements_are_refused_by_key_before_anything_starts():
    import pytest

    from configs.loader import load_config
    from launcher.placement import check_placement

    with pytest.raises(ValueError, match="learner.ranks = 3 but this host has 2 GPU"):
        check_placement(load_config(None, ["learner.ranks=3"]), ["0", "1"])
    with pytest.raises(ValueError, match="learner.offload_optimizer"):
        check_placement(load_config(None, ["learner.offload_optimizer=true"]), [])
    check_placement(load_config(None, ["learner.ranks=2"]), [])  # CPU: ranks are processes, any count


def test_loopback_hosts_are_told_apart_from_network_addresses():
    from launcher.placement import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5") and not is_loopback("0.0.0.0") and not is_loopback("node12")


def test_cpu_cores_give_each_actor_its_own_and_the_learner_what_is_left():
    from launcher.cpu_cores import actor_cores, learner_cores

    assert actor_cores(0, 1, [0, 1]) == [0] and learner_cores(1, 1, [0, 1]) == [1]
    assert actor_cores(1, 2, [0, 1, 2, 3, 4, 5]) == [2, 3] and learner_cores(2, 2, [0, 1, 2, 3, 4, 5]) == [4, 5]
    assert learner_cores(2, 1, [0, 1]) == []  # the actors take every core: the learner is not pinned
    assert actor_cores(2, 1, [4, 7]) == [4]  # wraps around the cores this process may use
