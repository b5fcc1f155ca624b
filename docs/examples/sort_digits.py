"""An example task for asyncor: sort the digits of a number, `4821=` -> `1248` (docs/custom_tasks.md)."""

import random

from asyncor.tasks.custom_task import Item


class SortDigits:
    def __init__(self, options: dict):
        rng = random.Random(options.get("seed", 0))
        digits = options.get("digits", 4)
        numbers = rng.sample(range(10 ** (digits - 1), 10 ** digits), options.get("size", 3000))
        self.problems = [Item(prompt=f"{n}=", reference="".join(sorted(str(n))), kind="custom",
                              data_source="sort", answer="".join(sorted(str(n)))) for n in numbers]

    def training(self):
        return self.problems[:-200]  # the RL prompts

    def heldout(self):
        return self.problems[-200:]  # evaluated before, during and after RL


def reward(problem: dict, response: str, metadata: dict):
    """1 for the sorted digits; partial credit for each right position, so that RL has a gradient early on."""
    want, got = problem["reference"], response.strip()
    right = sum(a == b for a, b in zip(want, got)) / len(want)
    if got == want:
        return 1.0, {"exact": 1.0, "positions": right}
    return 0.5 * right * (len(got) == len(want)), {"exact": 0.0, "positions": right}
