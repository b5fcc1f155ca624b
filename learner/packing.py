"""Which sequences go into which micro-batch on which learner rank.

    sequences --(longest first, to the rank with the fewest tokens)--> ranks
    each rank --(first-fit decreasing into `budget`-token bins)--> micro-batches
    every rank --(filled up with empty micro-batches)--> the same count

Every rank runs the same number of forward/backward passes, so no collective
(FSDP's all-gather / reduce-scatter) waits on a rank that ran out of data; an
empty micro-batch runs a weight-0 filler (learner/batch.py). The plan depends
only on the lengths, so every rank computes the same one.

A bin's cost is its tokens when packed, rows x longest row when padded. A
sequence longer than the budget gets a bin of its own (the config refuses
budgets below the longest allowed sequence; this keeps a longer prompt from
being dropped).
"""

from __future__ import annotations


def _bin_cost(count: int, longest: int, tokens: int, packing: bool) -> int:
    return tokens if packing else count * longest


def first_fit_decreasing(indices: list[int], lengths: list[int], budget: int, packing: bool) -> list[list[int]]:
    bins: list[list[int]] = []
    stats: list[tuple[int, int]] = []  # (longest, tokens) per bin
    for i in sorted(indices, key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        for b, (longest, tokens) in enumerate(stats):
            if _bin_cost(len(bins[b]) + 1, max(longest, n), tokens + n, packing) <= budget:
                bins[b].append(i)
                stats[b] = (max(longest, n), tokens + n)
                break
        else:
            bins.append([i])
            stats.append((n, n))
    return bins


def plan(lengths: list[int], budget: int, ranks: int, packing: bool = True) -> list[list[list[int]]]:
    """plan[rank][micro_step] = sequence indices; every rank has the same number of micro-steps (>= 1)."""
    loads = [0] * ranks
    per_rank: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        r = min(range(ranks), key=lambda k: (loads[k], k))
        per_rank[r].append(i)
        loads[r] += lengths[i]
    bins = [first_fit_decreasing(idx, lengths, budget, packing) for idx in per_rank]
    steps = max(1, max(len(b) for b in bins))
    return [b + [[] for _ in range(steps - len(b))] for b in bins]
