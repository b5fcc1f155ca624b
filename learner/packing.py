"""Which sequences go into which row of which micro-batch on which learner rank.

    sequences --(longest first, to the rank with the fewest tokens)--> ranks
    each rank --(layout below)--> micro-batches of rows within `budget` tokens
    every rank --(filled up with empty micro-batches)--> the same count

Layouts (picked from learner.packing and the attention kernel):
  "varlen" - packed, one row per micro-batch: first-fit decreasing into bins of
             `budget` tokens. For flash_attention_2, which computes only each
             sequence's own causal triangle.
  "rows"   - packed into rows as long as the rank's longest sequence (first-fit
             decreasing), `budget // row` rows per micro-batch. For sdpa / eager,
             whose block-diagonal mask is applied to a dense row x row score
             matrix: one long row would cost its length squared however short
             its sequences.
  "padded" - one right-padded row per sequence; first-fit decreasing into bins
             of rows x longest <= `budget` (the baseline).

Every rank runs the same number of forward/backward passes, so no collective
(FSDP's all-gather / reduce-scatter) waits on a rank that ran out of data; an
empty micro-batch runs a weight-0 filler (learner/batch.py). The plan depends
only on the lengths, so every rank computes the same one. A sequence longer
than the budget gets a micro-batch of its own (the config refuses budgets
below the longest allowed sequence; this keeps a longer prompt from being
dropped).
"""

from __future__ import annotations

LAYOUTS = ("varlen", "rows", "padded")

Plan = list[list[list[list[int]]]]  # plan[rank][micro_step][row] = sequence indices


def layout_for(packing: bool, attn_implementation: str) -> str:
    """learner.packing and the model's attention kernel -> the layout."""
    if not packing:
        return "padded"
    return "varlen" if attn_implementation == "flash_attention_2" else "rows"


def first_fit_decreasing(indices: list[int], lengths: list[int], budget: int, padded_cost: bool = False
                         ) -> list[list[int]]:
    """Bins of `indices` whose cost (tokens, or rows x longest with `padded_cost`) stays within `budget`."""
    bins: list[list[int]] = []
    stats: list[tuple[int, int]] = []  # (longest, tokens) per bin
    for i in sorted(indices, key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        for b, (longest, tokens) in enumerate(stats):
            cost = (len(bins[b]) + 1) * max(longest, n) if padded_cost else tokens + n
            if cost <= budget:
                bins[b].append(i)
                stats[b] = (max(longest, n), tokens + n)
                break
        else:
            bins.append([i])
            stats.append((n, n))
    return bins


def _micro_batches(indices: list[int], lengths: list[int], budget: int, layout: str) -> list[list[list[int]]]:
    if not indices:
        return []
    if layout == "varlen":
        return [[b] for b in first_fit_decreasing(indices, lengths, budget)]
    if layout == "padded":
        return [[[i] for i in b] for b in first_fit_decreasing(indices, lengths, budget, padded_cost=True)]
    row = max(lengths[i] for i in indices)
    rows = first_fit_decreasing(indices, lengths, row)
    per = max(1, budget // row)
    return [rows[k:k + per] for k in range(0, len(rows), per)]


def plan(lengths: list[int], budget: int, ranks: int, layout: str = "varlen") -> Plan:
    """Every rank's micro-batches (lists of rows of sequence indices); the same count (>= 1) on every rank."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    loads = [0] * ranks
    per_rank: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        r = min(range(ranks), key=lambda k: (loads[k], k))
        per_rank[r].append(i)
        loads[r] += lengths[i]
    micro = [_micro_batches(idx, lengths, budget, layout) for idx in per_rank]
    steps = max(1, max(len(m) for m in micro))
    return [m + [[] for _ in range(steps - len(m))] for m in micro]
