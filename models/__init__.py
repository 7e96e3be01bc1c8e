"""CNN definitions built from :mod:`fastconv.layers`; pick one with :func:`build_model`.

Importing this package does not import torch: the model names and their shapes below are
plain data, so that ``python -m fastconv.train --help`` can list them at once. The network
code (:mod:`fastconv.models.catdog`) is imported by :func:`build_model` and on first access
to ``fastconv.models.CatDogNet``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "CatDogNet", "build_model", "min_input_size"]

# name -> channels per stage; every stage is two fused 3x3 conv-ReLU + BatchNorm, then a pool.
MODELS = {
    "catdog": (32, 64, 128, 256),
    "catdog-small": (16, 32, 64, 128),
    "catdog-large": (64, 128, 256, 512),
}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


def min_input_size(name: str) -> int:
    """The smallest square input (pixels) model ``name`` takes: each stage halves H and W."""
    _check_name(name)
    return 2 ** len(MODELS[name])


def build_model(name: str = "catdog", num_classes: int = 2) -> nn.Module:
    """A freshly initialised model from :data:`MODELS`."""
    _check_name(name)
    from fastconv.models.catdog import CatDogNet

    return CatDogNet(MODELS[name], num_classes=num_classes)


def __getattr__(name: str):
    if name == "CatDogNet":
        from fastconv.models.catdog import CatDogNet

        return CatDogNet
    raise AttributeError(f"module 'fastconv.models' has no attribute {name!r}")
