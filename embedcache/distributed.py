"""torchrun support: one process per GPU (or CPU worker), each embedding a disjoint shard of the plan.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op and the code runs as
one process. Under torchrun the process group uses nccl on GPUs and gloo on CPUs; ranks only meet at
barriers (after writing the manifest, after embedding, after rank 0 merged the parts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None  # the device this rank should use (None: let the caller decide)
    owns_group: bool = False  # we initialised the process group, so we tear it down


def init() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as tdist

    if not tdist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build; run without torchrun")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    owns = False
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device, owns_group=owns)


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        import torch.distributed as tdist

        if ctx.device and ctx.device.startswith("cuda"):
            tdist.barrier(device_ids=[ctx.local_rank])
        else:
            tdist.barrier()


def finish(ctx: DistContext) -> None:
    if ctx.owns_group:
        import torch.distributed as tdist

        tdist.destroy_process_group()
