"""One problem as every role sees it (tasks/task.py): tokenised the way the model reads it, with what scoring
needs. Its own module so that every task (built-in, files, a user's: tasks/custom_task.py) makes them without
importing the others."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Problem:
    id: int  # stable across runs: seeds, cursors, checkpoints and filters refer to it
    prompt_ids: np.ndarray = field(repr=False)  # (P,) int32, the prompt as the model reads it
    kind: str  # how an answer is scored: arithmetic | math | code | custom (tasks/scoring.py)
    reference: object  # the answer string, or a code problem's tests
    data_source: str = "unknown"  # accuracy is also reported per source
