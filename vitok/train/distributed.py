"""Process-group setup for runs under ``torchrun`` (gloo on CPU, nccl on GPU) and the few collectives the trainer
needs; a plain single-process run takes the same code path with world size 1."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from vitok.data.errors import VitokError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is there, else the CPU; ``cuda`` without CUDA is a user error."""
    if device == "cuda" and not torch.cuda.is_available():
        from vitok.data.errors import VitokError

        raise VitokError("config device: cuda requested but CUDA is not available")
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when torchrun started us (WORLD_SIZE > 1) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over processes (in place on a copy)."""
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (in rank order), on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_rank_0(compute: Callable[[], Any], info: DistInfo, what: str) -> Any:
    """``compute()`` run on rank 0 alone, its result on every rank. Whatever it raises is raised on every rank, so
    none waits for a result that never comes: rank 0 its own exception, the others a VitokError with its message
    (``"{what} failed: ..."`` for an exception that is not a VitokError)."""
    result: Any = None
    failure: Exception | None = None
    if info.is_main:
        try:
            result = compute()
        except Exception as e:
            failure = e
            result = VitokError(str(e) if isinstance(e, VitokError) else f"{what} failed: {e!r}")
    result = broadcast_object(result, info)
    if failure is not None:
        raise failure
    if isinstance(result, VitokError):
        raise result
    return result
