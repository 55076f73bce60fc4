"""Process-group set-up and the few collectives training needs (torchrun / SLURM environments).

One process trains on the CPU or one GPU; ``torchrun`` (or a SLURM launcher that sets the same
variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) starts several, and each one
calls :func:`setup`. The backend is NCCL on GPUs and Gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from drasclr_monailabel.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistContext:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "is 'cuda' but no GPU is visible to PyTorch (use 'auto' or 'cpu')")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        chosen = torch.device("cuda", torch.cuda.current_device())
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def teardown(context: DistContext) -> None:
    """Leave the process group (no-op for one process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_counts(rows: int, context: DistContext) -> list[int]:
    """Every rank's ``rows`` (an int), in rank order."""
    if not context.distributed:
        return [rows]
    size = torch.tensor([rows], device=context.device)
    sizes = [torch.zeros_like(size) for _ in range(context.world_size)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def all_gather_rows(tensor: torch.Tensor, context: DistContext, counts: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` (n_r, ...) of every rank along dim 0, in rank order.

    Ranks may hold different ``n_r`` (a global batch splits into shares that differ by one): the
    sizes are exchanged first (or taken from ``counts``, every rank's ``n_r``) and rows padded to
    the largest.
    """
    if not context.distributed:
        return tensor
    counts = counts if counts is not None else gather_counts(tensor.shape[0], context)
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, counts)])


def broadcast_from_main(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (in place; same shape and type everywhere)."""
    if context.distributed:
        dist.broadcast(tensor, src=0)
    return tensor


def all_gather_objects(obj: Any, context: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not context.distributed:
        return [obj]
    objects: list[Any] = [None] * context.world_size
    dist.all_gather_object(objects, obj)
    return objects


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
