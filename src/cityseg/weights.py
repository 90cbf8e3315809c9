"""Downloading published weights: the ImageNet backbones ``model.pretrained=imagenet`` starts from.

torchvision's files go through its weights API into the torch hub cache, timm's through the Hugging
Face Hub into its cache; a machine without network that has the file cached is never slowed down
by a request, and one without the file gets one line saying which file goes where.

Beside :mod:`cityseg.checkpoint` (every weights file cityseg reads or writes) but below
:mod:`cityseg.models`, whose builders fetch with it while :mod:`cityseg.checkpoint` builds models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import WeightsEnum

from cityseg.errors import CitysegError, first_line


def fetch_torchvision_weights(weights: WeightsEnum, model_name: str) -> dict[str, torch.Tensor]:
    """Download (or read from the torch hub cache) one torchvision weights file.

    Raises:
        CitysegError: the file is neither cached nor downloadable; says where to put it.
    """
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # urllib, socket, SSL and hash errors all mean "no usable file"
        file_name = weights.url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise CitysegError(
            f"cannot get the ImageNet weights of {model_name} ({first_line(exc)}): download {weights.url} "
            f"and put {file_name} in {cache}, or set model.pretrained to the path of that file"
        ) from None


def fetch_timm_weights(timm_name: str, model_name: str, filename: str = "model.safetensors") -> Path:
    """Path of a timm weights file (``timm/<timm_name>`` on the Hugging Face Hub) in the Hugging Face
    cache, downloading it when missing.

    Raises:
        CitysegError: the file is neither cached nor downloadable; says where to put it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE

    repo = f"timm/{timm_name}"
    try:  # the cache first: no request at all, so an offline machine with the file is not slowed down
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except FileNotFoundError:  # huggingface_hub's LocalEntryNotFoundError: not cached yet
        pass
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # huggingface_hub raises several unrelated types when offline
        raise CitysegError(
            f"cannot get the ImageNet weights of {model_name} ({type(exc).__name__}): {filename} of "
            f"https://huggingface.co/{repo} must be in the Hugging Face cache {HF_HUB_CACHE} "
            f"(`huggingface-cli download {repo}` where there is network, then copy that cache), "
            f"or set model.pretrained to the path of a weights file"
        ) from None


__all__ = ["fetch_timm_weights", "fetch_torchvision_weights"]
