from launcher.placement import role_env


def test_learner_and_actors_get_their_own_gpus():
    gpus = ["0", "1", "2"]
    assert role_env("learner", 0, gpus) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert [role_env("actor", i, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["1", "2", "1"]


def test_single_gpu_is_shared_and_cpu_sets_nothing():
    assert role_env("actor", 3, ["5"]) == {"CUDA_VISIBLE_DEVICES": "5"}
    assert role_env("actor", 0, []) == {} and role_env("learner", 0, []) == {}
