"""Test-time augmentation: average a classifier's probabilities over an image and its mirror.

A dog or a cat seen in a mirror is still one (training flips half the images), so the mean of
the softmax over ``x`` and ``x`` flipped left-right is a cheaper ensemble of two views: one
extra forward pass per batch. Used by ``fastconv.train --tta`` (validation) and
``fastconv.predict --tta``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["class_probabilities"]


def class_probabilities(model: nn.Module, x: Tensor, flip: bool = False) -> Tensor:
    """(N, C, H, W) images -> (N, classes) float32 softmax probabilities of ``model``.

    With ``flip``: ``(softmax(model(x)) + softmax(model(x[..., ::-1]))) / 2``, the width axis
    mirrored (the memory format of ``x`` is kept).
    """
    probs = torch.softmax(model(x).float(), dim=1)
    if flip:
        mirrored = torch.flip(x, dims=(3,)).contiguous(memory_format=_memory_format(x))
        probs = (probs + torch.softmax(model(mirrored).float(), dim=1)) / 2
    return probs


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
