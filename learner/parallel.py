"""The learner's ranks and how the policy is spread over them (torchtitan's `parallelize`, in small).

The launcher starts `learner.ranks` learner processes with the usual
torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT = net.learner_port; launcher/placement.py). With more than one rank, on CUDA, or with a
model.dtype other than float32, the policy is sharded with FSDP2: one
`fully_shard` unit per decoder layer plus the root (embeddings, final norm,
lm_head); master weights, gradients and AdamW state are fp32 and split across
ranks, compute runs in model.dtype with fp32 gradient reduction. One CPU
rank with float32 weights (the tiny default) runs the plain module: nothing
to shard and nothing to cast.

Rank 0 alone talks to the buffer and the actors; it hands every rank the
step's groups (`broadcast_bytes`, msgpack bytes over a gloo group, never
pickle) and every rank computes the same micro-batch plan from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from asyncor.sync.group import open_store


@dataclass
class Ranks:
    rank: int
    world: int
    device: torch.device
    sharded: bool  # FSDP2 in use (needs the process group)
    cpu_group: object = None  # gloo group for control messages and metric reductions (None: one rank)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, values: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Element-wise sum / min / max of a CPU float64 tensor over ranks (in place; identity on one rank)."""
        if self.world > 1:
            ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
            dist.all_reduce(values, ops[op], group=self.cpu_group)
        return values

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's `data` on every rank."""
        if self.world == 1:
            return data
        size = torch.tensor([len(data) if self.main else 0], dtype=torch.int64)
        dist.broadcast(size, 0, group=self.cpu_group)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.main else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, 0, group=self.cpu_group)
        return bytes(buf.numpy()) if not self.main else data

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.cpu_group)

    def close(self) -> None:
        """Tear the process group down together: no rank closes its connections while another still uses them."""
        if dist.is_initialized():
            self.barrier()
            dist.destroy_process_group()


def init_ranks(model_dtype: str, timeout_s: float) -> Ranks:
    """This process's place among the learner ranks, from the torch.distributed environment (absent: one rank).

    `timeout_s` bounds every collective: rank 0 may spend up to a batch wait plus a broadcast between two
    collectives while the others wait in the next one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    sharded = world > 1 or cuda or model_dtype != "float32"
    if not sharded:
        return Ranks(rank, world, device, sharded)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        raise RuntimeError("the sharded learner needs MASTER_PORT (launch.py sets it from net.learner_port)")
    timeout = timedelta(seconds=timeout_s)
    # Our store, not env://'s: on a loopback MASTER_ADDR it listens there only (sync/group.py).
    store = open_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank == 0, timeout_s)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timeout,
                            device_id=device if cuda else None, store=store)
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if cuda else dist.group.WORLD
    return Ranks(rank, world, device, sharded, cpu_group)


def parallelize(policy, ranks: Ranks, compute_dtype: torch.dtype, activation_checkpointing: bool = False,
                offload: bool = False):
    """Shard `policy` (learner/model.py Policy) over `ranks` with FSDP2; unchanged when unsharded.

    Its parameters must be float32: they become the fp32 masters (AdamW state follows them); `compute_dtype`
    is what forward and backward run in. Parameter names stay those of the Hugging Face model."""
    layers = policy.lm.model.layers
    if activation_checkpointing:  # transformers' own wrapper: names unchanged, active in train mode
        policy.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not ranks.sharded:
        return policy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    options = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32),
                   offload_policy=CPUOffloadPolicy() if offload else OffloadPolicy())
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(policy, **options)
    return policy


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter: an all-gather on every rank for a DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def release(module) -> None:
    """Drop the gathered copies a sharded module keeps after a forward without backward (FSDP2 leaves the root's
    parameters gathered then); a no-op for a plain module."""
    if hasattr(module, "reshard"):
        module.reshard()
