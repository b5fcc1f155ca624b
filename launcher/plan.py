"""Which role runs where on a cluster: the buffer, the learner's ranks and the actor engines.

`make_plan(config, nodes, gpus_per_node)` is pure arithmetic on the config and the cluster shape, so it is
checked for shapes this machine does not have (tests/unit/test_plan.py) and printed by
`launch.py plan --config FILE --nodes N --gpus-per-node G` before anyone pays for an allocation.

The rules, GPU clusters:
  * the buffer is a CPU process on node 0;
  * learner rank r takes GPU r of node 0 (ranks do not span nodes yet: the learner's process group is
    started on one host, docs/learner.md);
  * actor engines take the remaining GPUs in order, node by node, `actors.tensor_parallel_size` GPUs each
    (an engine never spans nodes), several engines per node where they fit;
  * GPUs left over are reported as idle.
Without GPUs (gpus_per_node = 0) the learner ranks and the buffer run on node 0 and the actors are spread
over the nodes round-robin, starting at node 1 when there is one.
A layout that cannot run is refused with a `PlanError` naming the key and what would fit.

`local_plan` is the one-host layout of `launch.py run`: it may share GPUs between actors when there are
fewer GPUs than engines (a development box), which a cluster plan never does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class PlanError(ValueError):
    """A layout that cannot run; the message names the config key and what would fit."""


@dataclass(frozen=True)
class Slot:
    role: str  # buffer | learner | actor
    index: int  # learner rank or actor id (0 for the buffer)
    node: int
    gpus: tuple[int, ...]  # GPU indices on that node (empty: a CPU process)


@dataclass(frozen=True)
class Plan:
    nodes: int
    gpus_per_node: int
    slots: tuple[Slot, ...]

    def on_node(self, node: int) -> list[Slot]:
        return [s for s in self.slots if s.node == node]

    def idle_gpus(self) -> list[tuple[int, int]]:
        used = {(s.node, g) for s in self.slots for g in s.gpus}
        return [(n, g) for n in range(self.nodes) for g in range(self.gpus_per_node) if (n, g) not in used]

    def table(self) -> str:
        lines = ["| node | GPUs | roles |", "|---|---|---|"]
        for node in range(self.nodes):
            roles = ", ".join(_name(s) for s in self.on_node(node)) or "(nothing)"
            idle = [g for n, g in self.idle_gpus() if n == node]
            if idle:
                roles += f"; idle GPU {_ranges(idle)}"
            lines.append(f"| {node} | {self.gpus_per_node} | {roles} |")
        used = self.nodes * self.gpus_per_node - len(self.idle_gpus())
        lines.append("")
        lines.append(f"{used} of {self.nodes * self.gpus_per_node} GPUs used "
                     f"({sum(s.role == 'learner' for s in self.slots)} learner, "
                     f"{sum(len(s.gpus) for s in self.slots if s.role == 'actor')} actor)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
                "slots": [{**asdict(s), "gpus": list(s.gpus)} for s in self.slots],
                "idle_gpus": [list(x) for x in self.idle_gpus()]}


def _name(slot: Slot) -> str:
    label = {"buffer": "buffer", "learner": f"learner rank {slot.index}", "actor": f"actor {slot.index}"}[slot.role]
    return f"{label} (GPU {_ranges(list(slot.gpus))})" if slot.gpus else label


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)


def make_plan(config, nodes: int, gpus_per_node: int) -> Plan:
    if nodes < 1:
        raise PlanError(f"--nodes {nodes}: a cluster has at least 1 node")
    if gpus_per_node < 0:
        raise PlanError(f"--gpus-per-node {gpus_per_node}: must be >= 0 (0 = CPU nodes)")
    ranks, actors, tp = config.learner.ranks, config.actors.count, config.actors.tensor_parallel_size
    slots = [Slot("buffer", 0, 0, ())]
    if gpus_per_node == 0:
        if config.learner.offload_optimizer:
            raise PlanError("learner.offload_optimizer = true needs GPUs: set it to false for CPU nodes")
        if tp > 1:
            raise PlanError(f"actors.tensor_parallel_size = {tp} needs GPUs: CPU engines run with 1")
        slots += [Slot("learner", r, 0, ()) for r in range(ranks)]
        first = 1 if nodes > 1 else 0
        slots += [Slot("actor", i, first + i % (nodes - first), ()) for i in range(actors)]
        return Plan(nodes, 0, tuple(slots))
    if ranks > gpus_per_node:
        raise PlanError(f"learner.ranks = {ranks} needs {ranks} GPUs on one node, nodes have {gpus_per_node}: "
                        f"learner ranks do not span nodes yet; set learner.ranks <= {gpus_per_node}")
    if tp > gpus_per_node:
        raise PlanError(f"actors.tensor_parallel_size = {tp} needs {tp} GPUs on one node, nodes have "
                        f"{gpus_per_node}: an engine does not span nodes; set it <= {gpus_per_node}")
    # Engine places: (node, first GPU), node 0 after the learner's GPUs.
    places = [(n, first) for n in range(nodes)
              for first in range(ranks if n == 0 else 0, gpus_per_node - tp + 1, tp)]
    if actors > len(places):
        on_node0, per_node = (gpus_per_node - ranks) // tp, gpus_per_node // tp
        need = 1 + max(0, -(-(actors - on_node0) // per_node))
        fix = (f"set actors.count <= {len(places)}" if places
               else "lower learner.ranks or actors.tensor_parallel_size to leave an engine room on node 0")
        raise PlanError(f"actors.count = {actors} engines of actors.tensor_parallel_size = {tp} GPU(s) with "
                        f"learner.ranks = {ranks} need {ranks + actors * tp} GPUs, the cluster has {nodes} x "
                        f"{gpus_per_node} = {nodes * gpus_per_node}: {fix} or add nodes ({need} would fit it)")
    slots += [Slot("learner", r, 0, (r,)) for r in range(ranks)]
    slots += [Slot("actor", i, n, tuple(range(first, first + tp))) for i, (n, first) in zip(range(actors), places)]
    return Plan(nodes, gpus_per_node, tuple(slots))


def local_plan(config, gpus: int) -> Plan:
    """One host with `gpus` GPUs: learner ranks on the first ones, engines on the rest (shared round-robin
    when there are fewer GPUs than engines, or the learner's when none is left); CPU: one node, no GPUs."""
    ranks, actors, tp = config.learner.ranks, config.actors.count, config.actors.tensor_parallel_size
    slots = [Slot("buffer", 0, 0, ())]
    if gpus == 0:
        return make_plan(config, 1, 0)
    if ranks > gpus:
        raise PlanError(f"learner.ranks = {ranks} but this host has {gpus} GPU(s): one GPU per learner rank; "
                        f"set learner.ranks <= {gpus}")
    pool = list(range(ranks, gpus)) or list(range(gpus))
    if tp > len(pool):
        raise PlanError(f"actors.tensor_parallel_size = {tp} but {len(pool)} GPU(s) are left for each engine on "
                        f"this host; set it <= {len(pool)}")
    slots += [Slot("learner", r, 0, (r,)) for r in range(ranks)]
    slots += [Slot("actor", i, 0, tuple(pool[(i * tp + j) % len(pool)] for j in range(tp))) for i in range(actors)]
    return Plan(1, gpus, tuple(slots))
