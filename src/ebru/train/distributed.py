"""Distributed training on PyTorch's own engine: torchrun + DistributedDataParallel.

Launch with ``torchrun --nproc-per-node N -m ebru train CONFIG --out DIR`` (multi-node:
torchrun's own ``--nnodes``/``--rdzv-*`` flags). gloo on CPU, NCCL on GPU. Without
torchrun's environment the trainer runs as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun; pick this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's decision for everyone (for example: stop because the time budget is spent)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())
