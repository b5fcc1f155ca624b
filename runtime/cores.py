"""Which CPU cores each role may run on, on a host without GPUs.

Actor i binds its vLLM engine's OpenMP threads to `actors.threads` cores of its
own (VLLM_CPU_OMP_THREADS_BIND, wrapping around the machine). The learner ranks
take the cores no actor uses, one share each, when there are enough: on two
cores, one actor and one learner then each keep a core instead of the kernel
moving the learner onto the engine's. With too few cores left the learner is
not pinned. (Pinning the actor's whole process as well, its receiver, outbox
and ZeroMQ threads included, made its generation 4x slower here: those threads
then compete with the engine's spinning OpenMP thread for its one core.)
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
