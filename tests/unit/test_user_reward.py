"""task.reward = "package.module:function": the user's function in the verifier pool (tasks/user_reward.py,
tasks/verifier_pool.py, tasks/scoring.py). Whatever it does, the sample scores 0 with a counted reason and the
pool goes on scoring: exceptions, NaN, non-numbers, a hang (killed at the deadline), a crash (os._exit)."""

import time

import pytest

from asyncor.tasks import user_reward
from asyncor.tasks.scoring import Sample, Scorer

HOSTILE = "tests.integration.user_rewards:hostile"


def test_results_are_checked_and_failures_have_reasons():
    assert user_reward.check(0.5) == (0.5, None, None)
    assert user_reward.check(2) == (2.0, None, None)
    assert user_reward.check((1.0, {"a": 1})) == (1.0, None, {"a": 1})
    assert user_reward.check(True)[1] == "not_a_number"
    assert user_reward.check("1")[1] == "not_a_number"
    assert user_reward.check(None)[1] == "not_a_number"
    assert user_reward.check((1.0, 2.0))[1] == "not_a_number"  # a pair without a details dict
    assert user_reward.check(float("nan"))[1] == "nan" and user_reward.check(float("-inf"))[1] == "nan"

    def boom(*_):
        raise ValueError("x")

    assert user_reward.call(boom, {}, "", {}) == (0.0, "error", None)


@pytest.mark.parametrize("path, says", [("json:nothing_here", "no callable"), ("no_such_module_xyz:f", "cannot import"),
                                        ("json", "package.module:function")])
def test_a_reward_that_does_not_import_says_why(path, says):
    with pytest.raises(user_reward.RewardImportError, match=says):
        user_reward.load(path)


def sample(text, reference="7", prompt="3+4=", problem_id=5):
    return Sample("arithmetic", text, reference, False, prompt, problem_id)


def test_a_hostile_reward_function_costs_its_samples_never_the_pool():
    scorer = Scorer(workers=2, deadline_s=2.0, reward=HOSTILE)
    try:
        texts = ["7", "raise", "nan", "inf", "string", "bool", "none", "hang", "exit", "details", "8", "7"]
        start = time.monotonic()
        rewards = scorer.score([sample(t) for t in texts])
        took = time.monotonic() - start
        assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.0, 1.0]
        assert scorer.failures == {"error": 1, "nan": 2, "not_a_number": 3, "timeout": 1, "crash": 1}
        assert took < 2.0 + 8.0  # the hang cost its deadline (plus restarting workers), not its 600 s
        assert scorer.detail_means == {"score": 0.5}  # numbers only: the string and the bool were dropped
        # The pool still scores, with replaced workers; a truncated answer is 0 without calling the function.
        assert scorer.score([sample("7"), Sample("arithmetic", "7", "7", True, "3+4=", 5)]) == [1.0, 0.0]
    finally:
        scorer.close()


def test_the_function_gets_the_problem_and_metadata_and_a_missing_one_fails_every_sample():
    scorer = Scorer(workers=1, deadline_s=10.0, reward=HOSTILE, phase="eval")
    try:
        assert scorer.score([sample("echo", prompt="12+3=", problem_id=42)]) == [5 * 1000 + 42 + 0.5]
    finally:
        scorer.close()
    broken = Scorer(workers=1, deadline_s=10.0, reward="tests.integration.user_rewards:no_such_function")
    try:
        assert broken.score([sample("7"), sample("7")]) == [0.0, 0.0]
        assert broken.failures == {"import": 2}
    finally:
        broken.close()


def test_a_reward_server_scores_through_the_scorer_and_its_failures_are_counted():
    from asyncor.configs.schema import RewardServerConfig
    from tests.integration.reward_server import start

    url, stats, stop = start("exact")
    try:
        scorer = Scorer(reward=url, reward_server=RewardServerConfig(batch_size=2, timeout_s=2.0))
        samples = [sample("7"), sample("8"), Sample("arithmetic", "7", "7", True, "3+4=", 5), sample("7", "7")]
        assert scorer.score(samples) == [1.0, 0.0, 0.0, 1.0]  # the truncated one is not sent
        assert sorted(stats.batch_sizes) == [1, 2] and not scorer.failures
        scorer.close()
    finally:
        stop()
    dead = Scorer(reward=url, reward_server=RewardServerConfig(timeout_s=0.5, retries=1, backoff_s=0.05))
    try:
        assert dead.score([sample("7"), sample("7")]) == [0.0, 0.0]
        assert dead.failures == {"unreachable": 2}
    finally:
        dead.close()
