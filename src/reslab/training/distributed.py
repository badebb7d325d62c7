"""torchrun / DistributedDataParallel helpers: gloo on CPU, NCCL on GPU, one process logs.

`torchrun --nproc_per_node=N -m reslab train ...` sets WORLD_SIZE, RANK and LOCAL_RANK; without them
everything here degrades to a single process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Pick the device and, under torchrun, join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(device)):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here; use --device cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but CUDA is not available here; use --device cpu"
        )
    dev = torch.device(f"cuda:{local}" if device == "cuda" and world > 1 else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank() if world > 1 else 0, world_size=world, device=dev)


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over processes (identity in a single process)."""
    if d.world_size > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def teardown(d: Dist, together: bool = False) -> None:
    """Leave the process group. `together` (every rank finished): wait for the others first, so
    that no rank closes its gloo connections while rank 0 is still writing the run's files; a rank
    that tore down early was seen to abort at exit (SIGABRT, "terminate called without an active
    exception"). After a failure nobody waits: the other ranks may never arrive."""
    if d.world_size > 1 and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
