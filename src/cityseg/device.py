"""Where cityseg runs: the ``--device`` choice, this process's place in a torchrun job, and what
the CPU can do.

``torchrun --nproc_per_node=N -m cityseg train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; a plain launch sets none of them and is rank 0 of 1. Each process of a job takes
GPU ``LOCAL_RANK``, so :func:`resolve_device` gives ``cuda:LOCAL_RANK`` (``cuda:0`` outside
torchrun). The process group itself (join, reduce, leave) is :mod:`cityseg.engine.distributed`.

The CPU's features come from /proc/cpuinfo (:func:`cpu_flags`): native bf16 dot products
(:func:`native_bf16`) and 8-bit integer ones (:func:`cpu_has_vnni`) decide which inference paths
pay (:mod:`cityseg.inference.paths`). Why bf16 only where the CPU has it natively: without
``avx512_bf16`` or AMX, oneDNN emulates bf16 with fp32 arithmetic plus conversions, which is
slower than fp32 and still loses precision.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cityseg.errors import CitysegError

#: Values of ``--device``.
DEVICES = ("auto", "cpu", "cuda")

#: /proc/cpuinfo flags that mean native bf16 dot products (Zen 4+, Cooper Lake, Sapphire Rapids+).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

#: /proc/cpuinfo flags of 8-bit integer dot-product instructions (VNNI): without them int8 is not faster.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


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


# --- what the CPU can do ---------------------------------------------------------------------------


def cpuinfo_fields() -> dict[str, str]:
    """The ``key: value`` lines of /proc/cpuinfo, the first of each key (the first processor's);
    empty where there is none (e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            fields.setdefault(key, value)
    return fields


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    return frozenset(cpuinfo_fields().get("flags", "").split())


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX-BF16).

    ``torch.backends.cpu.get_cpu_capability()`` says only "AVX512" on both kinds of AVX-512
    CPU (and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true on any AVX-512 CPU, where
    oneDNN emulates bf16), so the flags are read from /proc/cpuinfo. Elsewhere (no /proc/cpuinfo)
    only torch's "AMX" capability counts.
    """
    if any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS):
        return True
    return "AMX" in torch.backends.cpu.get_cpu_capability()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def no_bf16_reason(device: torch.device) -> str:
    """Why ``device`` has no native bf16, for messages (where :func:`native_bf16` is false)."""
    return "this CPU has no AVX512-BF16 or AMX" if device.type == "cpu" else "this GPU has no bf16"


def cpu_has_vnni() -> bool:
    """True when the CPU has 8-bit integer dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return any(flag in cpu_flags() for flag in VNNI_FLAGS)
