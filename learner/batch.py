"""Trajectory groups -> a mini-batch of sequences -> micro-batches the model runs.

A *sequence* is one response with its prompt: `prompt ++ response`. The token
at position p is predicted by the hidden state at p - 1, so for the response
tokens we keep the positions p - 1 and gather exactly those hidden states: the
loss touches response tokens only, never prompt or padding.

Token weights (learner/loss.py `token_weights`) are computed here, once, over
the whole mini-batch, before it is cut into micro-batches or split across
learner ranks: a micro-batch's loss is the weighted sum over its own tokens,
so the sum over micro-batches and ranks is the mini-batch loss exactly.

A micro-batch is a list of rows, each row a list of sequences
(learner/packing.py decides which). Packed rows concatenate their sequences
with position ids restarting at 0 per sequence and no attention mask:
transformers builds the block-diagonal causal mask from the position ids
(flash_attention_2 runs varlen from them). Padded rows hold one sequence each
and carry an attention mask. Rows are right-padded to the longest row; in a
packed row the padded tail is a block of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asyncor.wire.trajectory import TrajectoryGroup
from asyncor.learner.advantage import group_advantages
from asyncor.learner.loss import token_weights


@dataclass
class TrainingSequence:
    ids: np.ndarray  # (P + R,) int64: prompt ++ response
    prompt_len: int
    behaviour: np.ndarray  # (R,) float32, the actor's log-probs
    advantage: float
    weight: np.ndarray  # (R,) float32: this sequence's share of the mini-batch loss, per token

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class MiniBatch:
    """The data of one optimiser step (every rank holds all of it; it is small next to the model)."""
    sequences: list[TrainingSequence]
    rewards: np.ndarray  # (B,) per response
    lengths: np.ndarray  # (B,) response tokens
    truncated: np.ndarray  # (B,) bool: cut at the length limit


@dataclass
class MicroBatch:
    """One forward/backward: model inputs plus flat per-response-token tensors."""
    input_ids_BT: torch.Tensor  # (B, T) int64
    position_ids_BT: torch.Tensor  # (B, T) int64, restarting at 0 per sequence
    attention_mask_BT: torch.Tensor | None  # (B, T) int64 when padded; None when packed
    row_N: torch.Tensor  # (N,) row of the hidden state that predicts each response token
    col_N: torch.Tensor  # (N,) its position in the row
    target_N: torch.Tensor  # (N,) the response token
    behaviour_logprob_N: torch.Tensor  # (N,) float32
    advantage_N: torch.Tensor  # (N,) float32
    weight_N: torch.Tensor  # (N,) float32, summing to 1 over the whole mini-batch
    real_N: torch.Tensor  # (N,) float32: 1 for data, 0 for the filler token of an empty micro-batch
    real_tokens: int  # prompt + response tokens of the sequences (no padding, no filler)

    @property
    def slots(self) -> int:
        """Token positions the model computes (padding included)."""
        return int(self.input_ids_BT.numel())


def minibatch(groups: list[TrajectoryGroup], aggregation: str, truncation_mask: str = "none") -> MiniBatch:
    sequences, rewards, lengths, truncated = [], [], [], []
    for g in groups:
        cut = [r.finish_reason == "length" for r in g.responses]
        for resp, adv, was_cut in zip(g.responses, group_advantages(g.rewards, cut, truncation_mask), cut):
            ids = np.concatenate([np.asarray(g.prompt_ids, np.int64), np.asarray(resp.token_ids, np.int64)])
            sequences.append(TrainingSequence(ids, len(g.prompt_ids), np.asarray(resp.logprobs, np.float32), float(adv),
                                      np.zeros(0, np.float32)))
            rewards.append(resp.reward)
            lengths.append(len(resp.token_ids))
            truncated.append(was_cut)
    seq_N = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths))
    weight_N = token_weights(seq_N, len(lengths), aggregation).float().numpy()
    for s, w in zip(sequences, np.split(weight_N, np.cumsum(lengths)[:-1])):
        s.weight = w
    return MiniBatch(sequences, np.array(rewards, np.float32), np.array(lengths, np.int64),
                     np.array(truncated, bool))


def _filler(pad_id: int) -> TrainingSequence:
    """The stand-in for an empty micro-batch: two tokens, weight 0. Its forward and backward run the same
    collectives as real data (a sharded rank with nothing to do must not leave the others waiting) and
    add exactly zero to the loss and gradients."""
    return TrainingSequence(np.array([pad_id, pad_id], np.int64), 1, np.zeros(1, np.float32), 0.0,
                            np.zeros(1, np.float32))


def micro_batch(rows_of: list[list[TrainingSequence]], packing: bool, pad_id: int) -> MicroBatch:
    """`rows_of`: the sequences of each row (empty: a filler micro-batch). `packing`: no attention mask, position
    ids restart per sequence; else each row must hold one sequence and gets an attention mask."""
    real = bool(rows_of)
    rows_of = rows_of or [[_filler(pad_id)]]
    sequences = [s for row in rows_of for s in row]
    rows, positions, placement = [], [], []  # placement: (row, offset) of each sequence, in `sequences` order
    for r, members in enumerate(rows_of):
        if not packing and len(members) != 1:
            raise ValueError(f"a padded row holds one sequence, got {len(members)}")
        offset = 0
        for s in members:
            placement.append((r, offset))
            offset += len(s)
        rows.append(np.concatenate([s.ids for s in members]))
        positions.append(np.concatenate([np.arange(len(s)) for s in members]))
    T = max(len(r) for r in rows)
    input_ids = np.full((len(rows), T), pad_id, np.int64)
    position_ids = np.zeros((len(rows), T), np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for i, (r, p) in enumerate(zip(rows, positions)):
        input_ids[i, :len(r)] = r
        position_ids[i, :len(r)] = p
        position_ids[i, len(r):] = np.arange(T - len(r))  # a packed row's padded tail is a block of its own
        mask[i, :len(r)] = 1
    row_N, col_N = [], []
    for s, (row, offset) in zip(sequences, placement):
        n = len(s) - s.prompt_len
        row_N.append(np.full(n, row))
        col_N.append(offset + np.arange(s.prompt_len - 1, len(s) - 1))
    cat = lambda xs, dt: torch.from_numpy(np.concatenate(xs).astype(dt))
    n_tokens = sum(len(s) - s.prompt_len for s in sequences)
    return MicroBatch(
        input_ids_BT=torch.from_numpy(input_ids),
        position_ids_BT=torch.from_numpy(position_ids),
        attention_mask_BT=None if packing else torch.from_numpy(mask),
        row_N=cat(row_N, np.int64),
        col_N=cat(col_N, np.int64),
        target_N=cat([s.ids[s.prompt_len:] for s in sequences], np.int64),
        behaviour_logprob_N=cat([s.behaviour for s in sequences], np.float32),
        advantage_N=cat([np.full(len(s) - s.prompt_len, s.advantage) for s in sequences], np.float32),
        weight_N=cat([s.weight for s in sequences], np.float32),
        real_N=torch.full((n_tokens,), float(real)),
        real_tokens=sum(len(s) for s in sequences) if real else 0,
    )
