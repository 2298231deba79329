"""torchrun support: one process per GPU (or CPU worker), each embedding a disjoint shard of the plan.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op and the code runs as
one process. Under torchrun the ranks exchange two small messages over a CPU (gloo) process group with
an explicit, long timeout: rank 0's decision once it has built the plan (`broadcast_json`), and whether
every rank sees the parts folder (`all_true`). Nothing waits on a collective while batches are embedded
or merged: ranks report a finished shard with a flag file in the parts folder (see parts.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

#: How long ranks 1..N may wait for rank 0 to build the plan (tokenizing a 700K-pair table takes minutes).
COORDINATION_TIMEOUT = timedelta(hours=6)


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # the gloo group for our messages (None: the default group)
    owns_default_group: bool = False  # we initialised the default process group, so we tear it down

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init() -> Ranks:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as tdist

    if not tdist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build; run without torchrun")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():  # the embedding itself exchanges no tensors: a CPU group is all we need
        tdist.init_process_group(backend="gloo", timeout=COORDINATION_TIMEOUT)
        return Ranks(rank, world, local, None, True)
    return Ranks(rank, world, local, tdist.new_group(backend="gloo", timeout=COORDINATION_TIMEOUT), False)


def rank_device(ranks: Ranks, requested: str | None) -> tuple[str | None, str | None]:
    """(device for this rank, a note to print or None). Under torchrun a CUDA device is always the rank's
    local GPU: `--device cuda:0` would otherwise put every rank on GPU 0."""
    if not ranks.distributed:
        return requested, None
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type != "cuda":
        return str(device), None
    count = max(torch.cuda.device_count(), 1)
    index = ranks.local_rank % count  # more ranks than GPUs (a smoke test on one card): ranks share them
    torch.cuda.set_device(index)
    note = None
    if device.index is not None and device.index != index:
        note = f"--device {requested} under torchrun: each rank uses its local GPU (LOCAL_RANK), cuda:0 .. cuda:N-1"
    elif ranks.local_rank >= count:
        note = f"{ranks.local_rank + 1} local ranks on {count} GPU(s): ranks share GPUs"
    return f"cuda:{index}", note


def broadcast_json(ranks: Ranks, value: Any) -> Any:
    """Rank 0's `value` (JSON-serialisable) on every rank."""
    if not ranks.distributed:
        return value
    import torch.distributed as tdist

    payload = json.dumps(value).encode() if ranks.rank == 0 else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    tdist.broadcast(size, src=0, group=ranks.group)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if ranks.rank == 0 else torch.empty(int(size), dtype=torch.uint8)
    tdist.broadcast(data, src=0, group=ranks.group)
    return json.loads(bytes(data.numpy()).decode())


def all_true(ranks: Ranks, flag: bool) -> bool:
    """Whether `flag` holds on every rank."""
    if not ranks.distributed:
        return flag
    import torch.distributed as tdist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN, group=ranks.group)
    return bool(t.item())


def finish(ranks: Ranks) -> None:
    if not ranks.distributed:
        return
    import torch.distributed as tdist

    if ranks.owns_default_group:
        tdist.destroy_process_group()
    elif ranks.group is not None:
        tdist.destroy_process_group(ranks.group)
