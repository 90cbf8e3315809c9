"""The DDP process group: join, reduce, gather, leave; rank info from :mod:`cityseg.device`.

``torchrun --nproc_per_node=N -m cityseg train ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``
and the rendezvous ``MASTER_ADDR``/``MASTER_PORT``; a plain ``cityseg train`` sees none of them and runs as a
single process with every helper here a no-op. NCCL is the backend on GPUs, gloo on the CPU.
Multi-node runs use torchrun's own rendezvous; nothing here is node-aware beyond ``LOCAL_RANK``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cityseg.device import DistInfo, env_info


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo otherwise).

    On CUDA each process takes GPU ``LOCAL_RANK``; the caller should build its device as
    ``cuda:LOCAL_RANK`` (:func:`cityseg.device.resolve_device` does).
    """
    info = env_info()
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


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


def global_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over all processes (one tiny all-reduce; NaN anywhere gives NaN everywhere)."""
    t = value.float().reshape(1).clone()
    return all_reduce_sum(t).item() / get_world_size()


def mean_over_processes(fraction: float) -> float:
    """One value for every process (the mean), so all of them stop on the same step."""
    return global_mean(torch.tensor(fraction)) if is_dist() else fraction


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
