"""The refill rule: when an actor's engine may load new weights, how many prompts it has room for, when to ask.

One rule, run by the actor (actors/rollout.py) and called by the pipeline simulator's actor process
(studies/simulator.py), which calibration (studies/calibration.py `shape_of`) sizes from the same config:

* `update_mode = "inflight"`: new weights are loaded between any two decoding steps, running sequences kept.
  The engine keeps up to `target_sequences` sequences; its room is the free slots (less those already granted
  and not yet started) in whole groups. It asks only when a quarter of its target is free (a round trip per
  several groups, not per group), or for any room at all when nothing runs.
* `update_mode = "chunk"` (the old behaviour, kept for comparison): new weights are loaded only once the
  engine has drained. It asks for `prompts_per_chunk` prompts, and only when nothing runs, no grant waits to
  start and no weights wait to be loaded: the next chunk starts on the newest weights.

`from_config` sizes the engine from the config's [actors] section: `inflight_sequences`, or by default
`prompts_per_chunk` groups of the largest group size over the stages, so a later stage's groups still fit.
Stateless: the caller says what runs and what waits.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("inflight", "chunk")


@dataclass(frozen=True)
class RefillRule:
    update_mode: str = "inflight"  # "inflight" | "chunk" (configs/schema.py ActorsConfig documents both)
    target_sequences: int = 64  # sequences kept in the engine (inflight mode)
    prompts_per_chunk: int = 8  # prompts per grant (chunk mode)

    def __post_init__(self):
        if self.update_mode not in MODES:
            raise ValueError(f"update_mode must be one of {MODES}, got {self.update_mode!r}")
        if self.target_sequences < 1 or self.prompts_per_chunk < 1:
            raise ValueError(f"target_sequences and prompts_per_chunk must be >= 1: {self}")

    @classmethod
    def from_config(cls, actors, largest_group_size: int) -> "RefillRule":
        """The rule of a config's [actors] section (configs/schema.py ActorsConfig: `update_mode`,
        `inflight_sequences`, `prompts_per_chunk`); `largest_group_size` over the stages
        (configs/stages.py `max_over_stages(config, "group_size")`)."""
        target = actors.inflight_sequences or actors.prompts_per_chunk * largest_group_size
        return cls(actors.update_mode, target, actors.prompts_per_chunk)

    def may_load(self, running: int) -> bool:
        """Whether staged weights may be loaded now, with `running` sequences in the engine."""
        return self.update_mode == "inflight" or not running

    def room(self, running_sequences: int, queued_sequences: int, group_size: int, waiting: bool = False) -> int:
        """Prompts of `group_size` samples the engine has room for now. `queued_sequences`: granted and not yet
        started; `waiting`: a grant waits to start or weights wait to be loaded (chunk mode then has none)."""
        if self.update_mode == "chunk":
            busy = running_sequences or queued_sequences or waiting
            return 0 if busy else self.prompts_per_chunk
        return max(self.target_sequences - running_sequences - queued_sequences, 0) // group_size

    def refill_batch(self, group_size: int) -> int:
        """Inflight: the fewest free prompts worth asking for while the engine runs (about a quarter of it)."""
        return max(1, self.target_sequences // group_size // 4)

    def should_ask(self, room: int, running: int, group_size: int) -> bool:
        """Whether to ask the buffer for `room` prompts now, with `running` sequences in the engine."""
        if self.update_mode == "chunk" or not running:
            return room > 0
        # Refill in batches of about a quarter of the target: one round trip per several groups, not per group.
        return room >= self.refill_batch(group_size)

    def prompts_at_once(self, group_size: int) -> int:
        """The most prompts of `group_size` samples running together: a chunk, or what the empty engine holds."""
        return self.prompts_per_chunk if self.update_mode == "chunk" else self.room(0, 0, group_size)
