"""Reward functions by import path (`task.reward = "tests.integration.user_rewards:<name>"`) for the tests.

`hostile` misbehaves as its response says, to check the verifier pool's containment (tests/unit/test_user_reward.py);
`exact` is the built-in arithmetic rule written as a user would (tests/integration/test_user_reward_run.py).
"""

import os
import time


def exact(problem: dict, response: str, metadata: dict):
    """1 for the exact answer, with details that become actor metrics."""
    right = response.strip() == str(problem["reference"])
    return float(right), {"exact": float(right), "length": float(len(response.strip()))}


def hostile(problem: dict, response: str, metadata: dict):
    how = response.strip()
    if how == "raise":
        raise RuntimeError("the user's reward failed")
    if how == "nan":
        return float("nan")
    if how == "inf":
        return float("inf")
    if how == "string":
        return "1.0"
    if how == "bool":
        return True
    if how == "none":
        return None
    if how == "hang":
        time.sleep(600)
    if how == "exit":
        os._exit(3)
    if how == "details":
        return 0.25, {"score": 0.5, "note": "not a number: dropped", "flag": True}
    if how == "echo":  # what the function was given
        return float(len(problem["prompt"]) * 1000 + problem["id"] + (metadata["phase"] == "eval") * 0.5)
    return 1.0 if how == str(problem["reference"]) else 0.0
