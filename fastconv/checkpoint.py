"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), so loading one from elsewhere never runs code. Anything that is not such a file
(missing, empty, truncated, random bytes, another program's pickle or state_dict) raises
:class:`CheckpointError` with a one-line message naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastconv.atomic import atomic_write

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

# What every fastconv.train checkpoint holds, and the training arguments a reader relies on.
REQUIRED_KEYS = {"model": dict, "args": dict, "class_names": list}
REQUIRED_ARGS = ("model", "img_size", "channels_last")


class CheckpointError(ValueError):
    """The file is not a loadable fastconv.train checkpoint; the message says why."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Save ``state`` to ``path`` via a temporary file and ``os.replace``.

    A kill at any moment leaves either the previous file or the new one, never a torn one.
    """
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for a torn or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint (truncated, corrupt or not saved by "
            f"torch.save of plain data): {reason[:200]}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a fastconv.train checkpoint (holds a {type(state)})")
    wrong = [k for k, kind in REQUIRED_KEYS.items() if not isinstance(state.get(k), kind)]
    missing_args = [a for a in REQUIRED_ARGS if a not in state.get("args", {})]
    if wrong or missing_args:
        what = f"keys {wrong}" if wrong else f"training arguments {missing_args}"
        raise CheckpointError(f"{path} is not a fastconv.train checkpoint (missing {what})")
    return state
