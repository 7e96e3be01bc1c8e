"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), so loading one from elsewhere never runs code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastconv.atomic import atomic_write

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save ``state`` to ``path`` via a temporary file and ``os.replace``.

    A kill at any moment leaves either the previous file or the new one, never a torn one.
    """
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    missing = {"model", "args", "class_names"} - set(state)
    if missing:
        raise ValueError(f"{path} is not a fastconv.train checkpoint (missing {sorted(missing)})")
    return state
