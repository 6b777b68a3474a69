"""Distributed setup: one process per device under torchrun, data-parallel by DDP or FSDP2.

    torchrun --nproc_per_node=8 train.py ...                       # DDP: the model replicated
    torchrun --nproc_per_node=8 train.py train.parallel=fsdp ...   # FSDP2: parameters, gradients
                                                                   # and optimizer state sharded

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous for --nnodes > 1); without
them train.py is one plain process and every helper here does nothing. Backend: nccl on
CUDA (rank r on cuda:LOCAL_RANK), gloo on the CPU.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: str = "cpu"
    parallel: str = "none"  # ddp | fsdp, or none for one process
    flags: object = None    # a gloo group for host-side agreement (preemption) without a GPU sync

    @property
    def main(self):
        """Rank 0: the one process that logs, prints and writes files."""
        return self.rank == 0


def setup(device, parallel):
    """Joins torchrun's process group when launched by it; `device` is train.device resolved
    (cuda | cpu)."""
    if parallel not in PARALLEL:
        raise ValueError(f"train.parallel={parallel!r}: one of {', '.join(PARALLEL)}")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    timeout = timedelta(minutes=30)  # rank 0 may tokenize a corpus while the others wait
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} has no GPU: {torch.cuda.device_count()} visible; "
                               "use --nproc_per_node <= the GPUs per node")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=torch.device(device), timeout=timeout)
        flags = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
        flags = dist.group.WORLD
    return Dist(rank, local, world, device, parallel, flags)


def wrap(model, d, compile=lambda m: m, bucket_mb=100):
    """The module a training step calls, and `sync(last)` to call before each micro-batch
    (None on one process): gradients are reduced across ranks only in a step's last
    micro-batch, so accumulation costs one reduction per step.

    DDP: compile(model) in a wrapper whose backward all-reduces gradients, bucketed and
    overlapped with the backward (nanoGPT's order: DDP outside torch.compile); no_sync's
    flag, require_backward_grad_sync, is set directly; `bucket_mb` MB of gradients per
    all-reduce (torch.compile splits the graph at each bucket so that reductions overlap the
    backward: larger buckets, fewer splits, less overlap). FSDP2: the model sharded in place,
    each transformer block one unit (parameters all-gathered just before use, gradients
    reduce-scattered just after), then the root for the embeddings and final LayerNorm, then
    compiled; set_requires_gradient_sync. Parameters stay fp32 and autocast computes in
    bf16, as on one device."""
    if d.parallel == "none":
        return compile(model), None
    if d.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(compile(model), device_ids=[d.local_rank] if d.device.startswith("cuda") else None,
                                      bucket_cap_mb=bucket_mb)
        return ddp, lambda last: setattr(ddp, "require_backward_grad_sync", last)
    from torch.distributed.fsdp import fully_shard
    for blocks in [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in blocks:
            fully_shard(block)
    fully_shard(model)
    return compile(model), model.set_requires_gradient_sync


def mean(x, d):
    """x averaged over ranks (a device tensor, in place)."""
    if d.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.AVG if d.device.startswith("cuda") else dist.ReduceOp.SUM)
        if not d.device.startswith("cuda"):  # gloo has no AVG
            x /= d.world
    return x


def total(x, d):
    """x summed over ranks (a device tensor, in place)."""
    if d.world > 1:
        dist.all_reduce(x)
    return x


def any_rank(flag, d):
    """True on every rank when `flag` is true on any: a host-side all-reduce on the gloo group,
    cheap enough for every step and with no wait on the GPU."""
    if d.world == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.flags)
    return bool(t.item())


def gather(obj, d):
    """Every rank's `obj`, in rank order (picklable objects)."""
    if d.world == 1:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj, group=d.flags)
    return out


def from_main(obj, d):
    """Rank 0's `obj` on every rank."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=d.flags)
    return box[0]


def barrier(d):
    if d.world > 1:
        dist.barrier(group=d.flags)


def teardown(d):
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
