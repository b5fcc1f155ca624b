"""Turn trajectory groups into padded model inputs plus flat per-token tensors.

Each response becomes one row `prompt ++ response` (right-padded). The token
at position p is predicted by the hidden state at p - 1, so for response
tokens we keep (row, p - 1) indices and gather exactly those hidden states:
the loss touches response tokens only, never prompt or padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from buffer.protocol import TrajectoryGroup
from learner.advantage import group_advantages


@dataclass
class PackedBatch:
    input_ids_BT: torch.Tensor  # (B, T) int64, right-padded with pad_id
    attention_mask_BT: torch.Tensor  # (B, T) int64
    row_N: torch.Tensor  # (N,) row (= response index) of each response token
    col_N: torch.Tensor  # (N,) position of the hidden state that predicts it
    target_N: torch.Tensor  # (N,) the response token
    behaviour_logprob_N: torch.Tensor  # (N,) float32, from the actor's vLLM
    advantage_N: torch.Tensor  # (N,) float32, the response's group advantage
    rewards: np.ndarray  # (B,) per response
    lengths: np.ndarray  # (B,) response tokens
    truncated: np.ndarray  # (B,) bool: cut at the length limit
    min_versions: list[int]  # per group

    @property
    def num_tokens(self) -> int:
        return int(self.target_N.numel())

    @property
    def num_responses(self) -> int:
        return int(self.input_ids_BT.shape[0])


def pack(groups: list[TrajectoryGroup], pad_id: int, truncation_mask: str = "none") -> PackedBatch:
    rows = []
    for g in groups:
        truncated = [r.finish_reason == "length" for r in g.responses]
        adv = group_advantages(g.rewards, truncated, truncation_mask)
        for resp, a, cut in zip(g.responses, adv, truncated):
            rows.append((g.prompt_ids, resp, float(a), cut))
    T = max(len(p) + len(r.token_ids) for p, r, _, _ in rows)
    B = len(rows)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    row_idx, col_idx, targets, behaviour, advantages = [], [], [], [], []
    for b, (prompt, resp, adv, _) in enumerate(rows):
        P, R = len(prompt), len(resp.token_ids)
        input_ids[b, :P] = prompt
        input_ids[b, P:P + R] = resp.token_ids
        mask[b, :P + R] = 1
        row_idx.append(np.full(R, b))
        col_idx.append(np.arange(P - 1, P + R - 1))
        targets.append(resp.token_ids)
        behaviour.append(resp.logprobs)
        advantages.append(np.full(R, adv, dtype=np.float32))
    cat = lambda xs, dt: torch.from_numpy(np.concatenate(xs).astype(dt)) if xs else torch.zeros(0)
    return PackedBatch(
        input_ids_BT=torch.from_numpy(input_ids),
        attention_mask_BT=torch.from_numpy(mask),
        row_N=cat(row_idx, np.int64),
        col_N=cat(col_idx, np.int64),
        target_N=cat(targets, np.int64),
        behaviour_logprob_N=cat(behaviour, np.float32),
        advantage_N=cat(advantages, np.float32),
        rewards=np.array([r.reward for _, r, _, _ in rows], dtype=np.float32),
        lengths=np.array([len(r.token_ids) for _, r, _, _ in rows], dtype=np.int64),
        truncated=np.array([cut for _, _, _, cut in rows], dtype=bool),
        min_versions=[g.min_version for g in groups],
    )
