"""Accumulates one training step's statistics over micro-batches, then reduces them over learner ranks.

Values stay tensors (on the device) until `reduce`, so recording them costs no
device sync per micro-batch. Every rank must record the same names in the same
calls (they run the same code on the same number of micro-batches), because
`reduce` is one collective per kind.
"""

from __future__ import annotations

import torch

from asyncor.learner.parallel import Ranks


class StepMetrics:
    def __init__(self):
        self._sum: dict[str, torch.Tensor | float] = {}
        self._min: dict[str, torch.Tensor | float] = {}
        self._max: dict[str, torch.Tensor | float] = {}

    def add(self, **values) -> None:
        for k, v in values.items():
            self._sum[k] = self._sum.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)

    def low(self, **values) -> None:
        for k, v in values.items():
            self._min[k] = v if k not in self._min else torch.minimum(torch.as_tensor(self._min[k]), torch.as_tensor(v))

    def high(self, **values) -> None:
        for k, v in values.items():
            self._max[k] = v if k not in self._max else torch.maximum(torch.as_tensor(self._max[k]), torch.as_tensor(v))

    def reduce(self, ranks: Ranks) -> "StepMetrics":
        """Sum / min / max over ranks (a no-op for one rank); afterwards values are Python floats."""
        for table, op in ((self._sum, "sum"), (self._min, "min"), (self._max, "max")):
            names = sorted(table)
            if not names:
                continue
            values = torch.stack([torch.as_tensor(table[k], dtype=torch.float64).cpu() for k in names])
            values = ranks.all_reduce(values, op)
            table.update(zip(names, values.tolist()))
        return self

    def sum(self, name: str) -> float:
        return float(self._sum.get(name, 0.0))

    def min(self, name: str) -> float:
        return float(self._min[name])

    def max(self, name: str) -> float:
        return float(self._max[name])

    def __contains__(self, name: str) -> bool:
        return name in self._sum
