"""Trajectory groups -> a mini-batch of sequences -> micro-batches the model runs.

A *sequence* is one response with its prompt: `prompt ++ response`. The token
at position p is predicted by the hidden state at p - 1, so for the trained
tokens we keep the positions p - 1 and gather exactly those hidden states: the
loss touches trained tokens only, never prompt or padding. The trained tokens
are the response's policy tokens: all of it, or (a multi-turn episode, DESIGN
§11) those its loss mask marks, the environment's observations between them
being context only. Every per-token quantity (behaviour log-prob, weight,
entropy, corrections, metrics) exists for trained tokens only, so nothing
downstream sees an environment token.

Token weights (the loss aggregation, learner/loss_aggs/) are computed here, once, over
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


@dataclass
class TrainingSequence:
    ids: np.ndarray  # (P + R,) int64: prompt ++ response (policy and environment tokens)
    prompt_len: int
    behaviour: np.ndarray  # (N,) float32, the actor's log-probs of the trained tokens
    advantage: float
    weight: np.ndarray  # (N,) float32: this sequence's share of the mini-batch loss, per trained token
    offset: int = 0  # position of its first trained token in the mini-batch's flat token order
    staleness: int = 0  # learner versions between the policy that generated it and the one training on it
    positions: np.ndarray | None = None  # (N,) int64 positions in `ids` of the trained tokens (None: the response)

    def __post_init__(self):
        if self.positions is None:
            self.positions = np.arange(self.prompt_len, len(self.ids), dtype=np.int64)

    @property
    def trained(self) -> int:
        return len(self.positions)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class MiniBatch:
    """The data of one optimiser step (every rank holds all of it; it is small next to the model)."""
    sequences: list[TrainingSequence]
    rewards: np.ndarray  # (B,) per response
    lengths: np.ndarray  # (B,) trained (policy) tokens per response
    truncated: np.ndarray  # (B,) bool: cut at the length limit
    staleness: np.ndarray  # (B,) int64: its group's staleness

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def behaviour_M(self) -> torch.Tensor:
        """(M,) float32: the actors' log-prob μ of every response token, in the flat order."""
        return torch.from_numpy(np.concatenate([s.behaviour for s in self.sequences]).astype(np.float32)) \
            if self.sequences else torch.zeros(0)

    def seq_M(self) -> torch.Tensor:
        """(M,) int64: each token's response (0..B-1)."""
        return torch.from_numpy(np.repeat(np.arange(len(self.lengths)), self.lengths))

    def staleness_M(self) -> np.ndarray:
        """(M,) int64: each token's staleness."""
        return np.repeat(self.staleness, self.lengths)


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
    weight_N: torch.Tensor  # (N,) float32, the token's share of the whole mini-batch's loss
    real_N: torch.Tensor  # (N,) float32: 1 for data, 0 for the filler token of an empty micro-batch
    seq_N: torch.Tensor  # (N,) int64: the token's response within this micro-batch (0..num_seqs-1)
    index_N: torch.Tensor  # (N,) int64: the token's position in the mini-batch's flat order (0 for the filler)
    real_tokens: int  # prompt + response tokens of the sequences (no padding, no filler)

    @property
    def num_seqs(self) -> int:
        return int(self.seq_N.max()) + 1 if self.seq_N.numel() else 0

    @property
    def slots(self) -> int:
        """Token positions the model computes (padding included)."""
        return int(self.input_ids_BT.numel())


def minibatch(groups: list[TrajectoryGroup], advantages: list[np.ndarray], loss_agg, loss_agg_tokens: int = 0,
              staleness: list[int] | None = None) -> MiniBatch:
    """The groups' responses as sequences, with their advantages (one array per group), staleness (one per
    group; default 0) and token weights (`loss_agg`: a learner/loss_aggs/ module; `loss_agg_tokens` its
    constant)."""
    staleness = staleness if staleness is not None else [0] * len(groups)
    sequences, rewards, lengths, truncated, ages = [], [], [], [], []
    offset = 0
    for g, advs, age in zip(groups, advantages, staleness):
        for resp, adv in zip(g.responses, advs):
            ids = np.concatenate([np.asarray(g.prompt_ids, np.int64), np.asarray(resp.token_ids, np.int64)])
            policy = np.arange(len(resp.token_ids)) if resp.loss_mask is None else np.flatnonzero(resp.loss_mask)
            sequences.append(TrainingSequence(ids, len(g.prompt_ids), np.asarray(resp.logprobs, np.float32)[policy],
                                              float(adv), np.zeros(0, np.float32), offset, int(age),
                                              len(g.prompt_ids) + policy.astype(np.int64)))
            offset += len(policy)
            rewards.append(resp.reward)
            lengths.append(len(policy))
            truncated.append(resp.finish_reason == "length")
            ages.append(int(age))
    lengths = np.array(lengths, np.int64)
    weight_M = np.asarray(loss_agg.token_weights(lengths, loss_agg_tokens), np.float64).astype(np.float32)
    for s, w in zip(sequences, np.split(weight_M, np.cumsum(lengths)[:-1])):
        s.weight = w
    return MiniBatch(sequences, np.array(rewards, np.float32), lengths, np.array(truncated, bool),
                     np.array(ages, np.int64))


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
        row_N.append(np.full(s.trained, row))
        col_N.append(offset + s.positions - 1)
    cat = lambda xs, dt: torch.from_numpy(np.concatenate(xs).astype(dt))
    n_tokens = sum(s.trained for s in sequences)
    return MicroBatch(
        input_ids_BT=torch.from_numpy(input_ids),
        position_ids_BT=torch.from_numpy(position_ids),
        attention_mask_BT=None if packing else torch.from_numpy(mask),
        row_N=cat(row_N, np.int64),
        col_N=cat(col_N, np.int64),
        target_N=cat([s.ids[s.positions] for s in sequences], np.int64),
        behaviour_logprob_N=cat([s.behaviour for s in sequences], np.float32),
        advantage_N=cat([np.full(s.trained, s.advantage) for s in sequences], np.float32),
        weight_N=cat([s.weight for s in sequences], np.float32),
        real_N=torch.full((n_tokens,), float(real)),
        seq_N=cat([np.full(s.trained, i) for i, s in enumerate(sequences)], np.int64),
        index_N=cat([s.offset + np.arange(s.trained) for s in sequences], np.int64),
        real_tokens=sum(len(s) for s in sequences) if real else 0,
    )
