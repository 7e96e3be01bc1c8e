"""CNN definitions built from :mod:`fastconv.layers`; pick one with :func:`build_model`."""

from __future__ import annotations

from torch import nn

from fastconv.models.catdog import CatDogNet

__all__ = ["MODELS", "CatDogNet", "build_model"]

# name -> channels per stage; every stage is two fused 3x3 conv-ReLU + BatchNorm, then a pool.
MODELS = {
    "catdog": (32, 64, 128, 256),
    "catdog-small": (16, 32, 64, 128),
    "catdog-large": (64, 128, 256, 512),
}


def build_model(name: str = "catdog", num_classes: int = 2) -> nn.Module:
    """A freshly initialised model from :data:`MODELS`."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return CatDogNet(MODELS[name], num_classes=num_classes)
