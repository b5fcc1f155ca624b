"""Online filtering at stage boundaries (Skywork-OR1 §3.1).

During a stage the buffer notes, per prompt, whether every sample of every
group it accepted was correct (reward >= 1). When the learner crosses into
the next stage, those prompts are removed from the pool (with
`algo.online_filter`, buffer/admission.py `enter_stage`; never the whole
pool): the policy has mastered them, and they would only come back as
zero-advantage groups.
"""

from __future__ import annotations

import numpy as np


class OnlineFilter:
    def __init__(self):
        self._all_correct: dict[int, bool] = {}

    def observe(self, prompt_id: int, rewards) -> None:
        solved = bool(np.all(np.asarray(rewards) >= 1.0))
        self._all_correct[prompt_id] = self._all_correct.get(prompt_id, True) and solved

    def state_dict(self) -> dict:
        return {"prompt_ids": list(self._all_correct), "all_correct": list(self._all_correct.values())}

    def load_state_dict(self, state: dict) -> None:
        self._all_correct = {int(p): bool(ok) for p, ok in zip(state["prompt_ids"], state["all_correct"], strict=True)}

    def end_stage(self) -> set[int]:
        """Prompts solved in every sample during the stage that ends now; starts counting afresh."""
        solved = {pid for pid, ok in self._all_correct.items() if ok}
        self._all_correct.clear()
        return solved
