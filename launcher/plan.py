"""Which role runs where on a cluster: the buffer, the learner's ranks and the actor engines.

`make_plan(config, nodes, gpus_per_node)` is pure arithmetic on the config and the cluster shape, so it is
checked for shapes this machine does not have (tests/unit/test_plan.py) and printed by
`launch.py plan --config FILE --nodes N --gpus-per-node G` before anyone pays for an allocation.

The rules, GPU clusters:
  * the buffer is a CPU process on node 0;
  * learner rank r takes GPU r of node 0 (ranks do not span nodes yet: the learner's process group is
    started on one host, docs/learner.md);
  * actor engines take the remaining GPUs in order, node by node, one GPU each (tensor-parallel engines
    are not supported yet), several engines per node where they fit;
  * GPUs left over are reported as idle.
Without GPUs (gpus_per_node = 0) the learner ranks and the buffer run on node 0 and the actors are spread
over the nodes round-robin, starting at node 1 when there is one.
A layout that cannot run is refused with a `PlanError` naming the key and what would fit.
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
    ranks, actors = config.learner.ranks, config.actors.count
    slots = [Slot("buffer", 0, 0, ())]
    if gpus_per_node == 0:
        if config.learner.offload_optimizer:
            raise PlanError("learner.offload_optimizer = true needs GPUs: set it to false for CPU nodes")
        slots += [Slot("learner", r, 0, ()) for r in range(ranks)]
        first = 1 if nodes > 1 else 0
        slots += [Slot("actor", i, first + i % (nodes - first), ()) for i in range(actors)]
        return Plan(nodes, 0, tuple(slots))
    if ranks > gpus_per_node:
        raise PlanError(f"learner.ranks = {ranks} needs {ranks} GPUs on one node, nodes have {gpus_per_node}: "
                        f"learner ranks do not span nodes yet; set learner.ranks <= {gpus_per_node}")
    total = nodes * gpus_per_node
    if ranks + actors > total:
        fix = f"set actors.count <= {total - ranks}" if total > ranks else "lower learner.ranks to leave actors a GPU"
        raise PlanError(f"actors.count = {actors} with learner.ranks = {ranks} needs {ranks + actors} GPUs, the "
                        f"cluster has {nodes} x {gpus_per_node} = {total}: {fix} "
                        f"or add nodes ({-(-(ranks + actors) // gpus_per_node)} would fit it)")
    slots += [Slot("learner", r, 0, (r,)) for r in range(ranks)]
    free = [(n, g) for n in range(nodes) for g in range(gpus_per_node) if n > 0 or g >= ranks]
    slots += [Slot("actor", i, n, (g,)) for i, (n, g) in zip(range(actors), free)]
    return Plan(nodes, gpus_per_node, tuple(slots))
