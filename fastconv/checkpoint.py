"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled
objects), so loading one from elsewhere never runs code. Anything that is not such a file
(missing, empty, truncated, random bytes, another program's pickle or state_dict) raises
:class:`CheckpointError` with a one-line message naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from fastconv.atomic import atomic_write
from fastconv.cli import first_few

__all__ = ["CheckpointError", "check_state_dict_fits", "load_checkpoint", "save_checkpoint"]

# What every fastconv.train checkpoint holds, and the training arguments a reader relies on.
REQUIRED_KEYS = {"model": dict, "args": dict, "class_names": list}
REQUIRED_ARGS = ("model", "img_size", "channels_last")
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")  # torch.load's errors carry terminal colour codes


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
        with warnings.catch_warnings():  # a foreign pickle also warns (protocol): one line only
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for a torn or foreign file
        reason = _load_error_reason(exc)
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint (truncated, corrupt or not saved by "
            f"torch.save of plain data): {reason[:200]}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a fastconv.train checkpoint (holds a {type(state)})")
    wrong = [k for k, kind in REQUIRED_KEYS.items() if not isinstance(state.get(k), kind)]
    args = state.get("args")
    missing_args = [a for a in REQUIRED_ARGS if a not in args] if isinstance(args, dict) else []
    if wrong or missing_args:
        what = f"keys {wrong}" if wrong else f"training arguments {missing_args}"
        raise CheckpointError(f"{path} is not a fastconv.train checkpoint (missing {what})")
    return state


def _load_error_reason(exc: Exception) -> str:
    """The part of a ``torch.load`` error that says what is wrong, on one line.

    A refused pickle's message is a page of advice about ``weights_only``; the cause is the
    text after "WeightsUnpickler error:".
    """
    text = ANSI_CODES.sub("", str(exc))
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_state_dict_fits(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Raise :class:`CheckpointError` (one line naming ``source``) unless ``state_dict`` has
    exactly ``model``'s tensors, by name and shape; ``model.load_state_dict`` then succeeds.

    ``load_state_dict`` itself reports a mismatch as a many-line RuntimeError listing every key.
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{source}: its weights are a {type(state_dict).__name__}, not a dict of tensors"
        )
    expected = model.state_dict()
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items()
        if isinstance(state_dict.get(k), torch.Tensor) and state_dict[k].shape != v.shape
    ]
    problems = [
        f"{len(found)} {what}: {first_few(found)}"
        for found, what in (
            (not_tensors, "not tensors"),
            (missing, "missing"),
            (unexpected, "unexpected"),
            (wrong_shape, "of another shape"),
        )
        if found
    ]
    if problems:
        raise CheckpointError(
            f"{source}: its weights do not fit the model {type(model).__name__} "
            f"({'; '.join(problems)})"
        )
