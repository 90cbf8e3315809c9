"""Distributed state from the torchrun environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``).

``torchrun --nproc_per_node=N -m cityseg train ...`` sets those variables (and the rendezvous
``MASTER_ADDR``/``MASTER_PORT``); a plain ``cityseg train`` sees none of them and runs as a
single process with every helper here a no-op. NCCL is the backend on GPUs, gloo on the CPU.
Multi-node runs use torchrun's own rendezvous; nothing here is node-aware beyond ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Read the torchrun variables; a plain launch gives rank 0 of 1."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo otherwise).

    On CUDA each process takes GPU ``LOCAL_RANK``; the caller should build its device as
    ``cuda:LOCAL_RANK`` (see :func:`local_device`).
    """
    info = env_info()
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def local_device(kind: str) -> torch.device:
    """``cuda:LOCAL_RANK`` for ``kind == "cuda"``, else the CPU."""
    if kind == "cuda":
        return torch.device("cuda", env_info().local_rank)
    return torch.device("cpu")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (or without DDP): the only process that writes files and logs."""
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op without DDP) and return it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every process (no-op without DDP)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """Every process's ``obj``, in rank order (``[obj]`` without DDP)."""
    if not is_dist():
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if is_dist():
        dist.destroy_process_group()
