"""Model files the tests write: a checkpoint of a small model in the form ``cityseg train`` saves."""

from __future__ import annotations

from pathlib import Path

import torch

from cityseg.checkpoint import save_checkpoint
from cityseg.config import Config


def write_checkpoint(path: Path, model: torch.nn.Module, name: str = "cityseg_tiny") -> Path:
    """Save ``model``'s weights at ``path`` with a default config naming ``name`` (nothing frozen)."""
    cfg = Config()
    cfg.model.name, cfg.model.freeze = name, []
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 1, "step": 1})
    return path
