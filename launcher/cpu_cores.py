"""Which CPU cores each role may run on, on a host without GPUs.

Actor i pins its vLLM engine, and its whole process, to `actors.threads` cores of
its own (wrapping around the machine). The learner takes the cores no actor
uses, if there are any: on two cores, one actor and one learner each get a core
to themselves instead of the kernel moving them around, which in a measurement
here doubled the actor's generation time while the learner trained
(BENCHMARKS.md, async overlap). With no core left over the learner is not pinned.
"""

from __future__ import annotations

import os


def machine_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def actor_cores(actor_id: int, threads: int, cores: list[int] | None = None) -> list[int]:
    cores = cores or machine_cores()
    first = (actor_id * threads) % len(cores)
    return sorted({cores[(first + k) % len(cores)] for k in range(min(threads, len(cores)))})


def learner_cores(actors: int, threads: int, cores: list[int] | None = None) -> list[int]:
    """The cores no actor is pinned to; empty when the actors take them all."""
    cores = cores or machine_cores()
    taken = {c for i in range(actors) for c in actor_cores(i, threads, cores)}
    return [c for c in cores if c not in taken]


def pin(cores: list[int]) -> None:
    """Pin this process (and every thread it starts from now on) to `cores`; nothing when empty."""
    if cores:
        os.sched_setaffinity(0, cores)
