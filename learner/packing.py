"""Which sequences go into which row of which micro-batch on which learner rank.

    sequences --(longest first, to the rank with the fewest tokens)--> ranks
    each rank --(layout below)--> micro-batches of rows within `budget` tokens
    every rank --(filled up with empty micro-batches)--> the same count

Layouts (picked from learner.packing and the attention kernel):
  "varlen" - packed, one row per micro-batch: best-fit decreasing into bins of
             `budget` tokens. For flash_attention_2, which computes only each
             sequence's own causal triangle.
  "rows"   - packed into rows as long as their micro-batch's longest sequence,
             rows x row length <= `budget` (`_packed_rows`). For sdpa / eager,
             whose block-diagonal mask is applied to a dense row x row score
             matrix: one long row would cost its length squared however short
             its sequences.
  "padded" - one right-padded row per sequence, longest first, rows x longest
             <= `budget` (the baseline).

Every rank runs the same number of forward/backward passes, so no collective
(FSDP's all-gather / reduce-scatter) waits on a rank that ran out of data; an
empty micro-batch runs a weight-0 filler (learner/batch.py). The plan depends
only on the lengths, so every rank computes the same one, quickly for the
thousands of sequences per step of the cluster configs (open bins and rows are
found by bisection over a sorted list). A sequence longer
than the budget gets a micro-batch of its own (the config refuses budgets
below the longest allowed sequence; this keeps a longer prompt from being
dropped).
"""

from __future__ import annotations

import bisect

LAYOUTS = ("varlen", "rows", "padded")

Plan = list[list[list[list[int]]]]  # plan[rank][micro_step][row] = sequence indices


def layout_for(packing: bool, attn_implementation: str) -> str:
    """learner.packing and the model's attention kernel -> the layout."""
    if not packing:
        return "padded"
    return "varlen" if attn_implementation == "flash_attention_2" else "rows"


class _Rooms:
    """Open bins (or rows) by the room left in them, for best fit: the fullest one that still fits, found by
    bisection (O(log n) to find; taking it out of and back into the sorted list moves O(n) entries)."""

    def __init__(self):
        self._keys: list[tuple[int, int]] = []  # sorted (room, id)

    def take(self, n: int) -> tuple[int, int] | None:
        """(id, room) of the fullest bin with room >= n, removed from the index; None when none fits."""
        k = bisect.bisect_left(self._keys, (n, -1))
        if k == len(self._keys):
            return None
        room, ident = self._keys.pop(k)
        return ident, room

    def put(self, ident: int, room: int) -> None:
        if room > 0:
            bisect.insort(self._keys, (room, ident))


def _longest_first(indices: list[int], lengths: list[int]) -> list[int]:
    return sorted(indices, key=lambda j: (-lengths[j], j))


def best_fit_decreasing(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Bins of `indices` holding at most `budget` tokens each, longest first into the fullest bin that fits."""
    bins: list[list[int]] = []
    rooms = _Rooms()
    for i in _longest_first(indices, lengths):
        spot = rooms.take(lengths[i])
        if spot is None:
            spot = (len(bins), budget)
            bins.append([])
        b, room = spot
        bins[b].append(i)
        rooms.put(b, room - lengths[i])
    return bins


def padded_bins(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Longest first, as many sequences per bin as rows x the bin's first (longest) length allows."""
    order, bins = _longest_first(indices, lengths), []
    while order:
        k = max(1, budget // lengths[order[0]])
        bins.append(order[:k])
        order = order[k:]
    return bins


def _micro_batches(indices: list[int], lengths: list[int], budget: int, layout: str) -> list[list[list[int]]]:
    if not indices:
        return []
    if layout == "varlen":
        return [[b] for b in best_fit_decreasing(indices, lengths, budget)]
    if layout == "padded":
        return [[[i] for i in b] for b in padded_bins(indices, lengths, budget)]
    return _packed_rows(indices, lengths, budget)


def _packed_rows(indices: list[int], lengths: list[int], budget: int) -> list[list[list[int]]]:
    """Rows as long as their micro-batch's first (longest) sequence; rows x row length <= `budget`.

    Longest first: a sequence goes into the fullest row, of any micro-batch, with room for it; else it opens a
    row in the newest micro-batch if rows x row length stays within `budget`; else it starts a micro-batch
    whose row length is its own. Long sequences share micro-batches (few long rows), short ones get their own
    (many short rows), and short sequences fill the ends of long rows: little padding, and attention costs
    rows x row length² per micro-batch rather than the micro-batch's token count squared."""
    micro: list[list[list[int]]] = []
    rows: list[tuple[int, int]] = []  # (micro-batch, row) of each row id
    cap = 0  # row length of the newest micro-batch
    rooms = _Rooms()
    for i in _longest_first(indices, lengths):
        n = lengths[i]
        spot = rooms.take(n)
        if spot is None:
            if not micro or (len(micro[-1]) + 1) * cap > budget:
                micro.append([])
                cap = n
            micro[-1].append([])
            rows.append((len(micro) - 1, len(micro[-1]) - 1))
            spot = (len(rows) - 1, cap)
        row, room = spot
        m, r = rows[row]
        micro[m][r].append(i)
        rooms.put(row, room - n)
    return micro


def pack(lengths: list[int], budget: int, ranks: int, layout: str = "varlen") -> Plan:
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
