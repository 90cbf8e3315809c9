"""Where cityseg runs: the ``--device`` choice and this process's place in a torchrun job.

``torchrun --nproc_per_node=N -m cityseg train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; a plain launch sets none of them and is rank 0 of 1. Each process of a job takes
GPU ``LOCAL_RANK``, so :func:`resolve_device` gives ``cuda:LOCAL_RANK`` (``cuda:0`` outside
torchrun). The process group itself (join, reduce, leave) is :mod:`cityseg.engine.distributed`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cityseg.errors import CitysegError

#: Values of ``--device``.
DEVICES = ("auto", "cpu", "cuda")


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


def local_device(kind: str) -> torch.device:
    """``cuda:LOCAL_RANK`` for ``kind == "cuda"``, else the CPU."""
    if kind == "cuda":
        return torch.device("cuda", env_info().local_rank)
    return torch.device("cpu")


def resolve_device(kind: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; CUDA is this process's GPU (:func:`local_device`).

    Raises:
        CitysegError: an unknown kind, or ``cuda`` on a machine without a usable GPU.
    """
    if kind not in DEVICES:
        raise CitysegError(f"--device {kind!r}; valid: {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise CitysegError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return local_device(kind)
