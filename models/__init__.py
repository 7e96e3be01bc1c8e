"""CNN definitions built from :mod:`fastconv.layers`; pick one with :func:`build_model`.

Importing this package does not import torch: the model names and their shapes below are
plain data, so that ``python -m fastconv.train --help`` can list them at once. The network
code (:mod:`fastconv.models.catdog`, :mod:`fastconv.models.resnet`) is imported by
:func:`build_model` and on first access to ``fastconv.models.CatDogNet``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CATDOG_ACTIVATIONS",
    "MODELS",
    "CatDogNet",
    "activation_for",
    "build_model",
    "halvings",
    "min_input_size",
]

# name -> channels per stage of a CatDogNet; every stage is two fused 3x3 conv-activation +
# BatchNorm, then a 2x2 max pool.
CATDOG_WIDTHS = {
    "catdog": (32, 64, 128, 256),
    "catdog-wide": (48, 96, 192, 384),  # all-data recipe: docs/training-recipe.md, row U3
    "catdog-small": (16, 32, 64, 128),
    "catdog-large": (64, 128, 256, 512),
}
# name -> (stem, stage 1, 2, 3) channels of a CatDogResNet (fastconv.models.catdog_res):
# conv-BN-ReLU layers with two residual blocks; three 2x2 max pools.
CATDOG_RES_WIDTHS = {"catdog-res": (32, 64, 128, 256)}
# torchvision ResNets with a 3x3 stride-1 stem and no max pool, converted to fastconv layers
# (fastconv.models.resnet): name -> how many times they halve H and W (three strided stages).
RESNETS = {"resnet18": 3}
MODELS = (*CATDOG_WIDTHS, *CATDOG_RES_WIDTHS, *RESNETS)  # every name build_model takes
# The activations a CatDogNet can be built with, its default first (SiLU: docs/
# training-recipe.md, row S1). catdog-res and the resnets have ReLU built in.
CATDOG_ACTIVATIONS = ("silu", "relu", "gelu")


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


def halvings(name: str) -> int:
    """How many times model ``name`` halves the height and width of its input."""
    _check_name(name)
    if name in CATDOG_WIDTHS:
        return len(CATDOG_WIDTHS[name])
    return 3 if name in CATDOG_RES_WIDTHS else RESNETS[name]


def min_input_size(name: str) -> int:
    """The smallest square input (pixels) model ``name`` takes: 2 ** :func:`halvings`."""
    return 2 ** halvings(name)


def activation_for(name: str, activation: str | None = None) -> str:
    """``activation``, or model ``name``'s default (SiLU for the catdog nets, else ReLU) when
    it is None; a ValueError when ``name`` cannot be built with it."""
    _check_name(name)
    allowed = CATDOG_ACTIVATIONS if name in CATDOG_WIDTHS else ("relu",)
    if activation is None:
        return allowed[0]
    if activation not in allowed:
        raise ValueError(
            f"model {name} can be built with activation {' or '.join(allowed)}, not {activation!r}"
        )
    return activation


def build_model(
    name: str = "catdog", num_classes: int = 2, activation: str | None = None
) -> nn.Module:
    """A freshly initialised model named in :data:`MODELS`, with ``activation`` (see
    :func:`activation_for`): one of :data:`CATDOG_ACTIVATIONS` for the catdog nets; the
    others have ReLU built in."""
    activation = activation_for(name, activation)
    if name in RESNETS:
        from fastconv.models.resnet import build_resnet

        return build_resnet(name, num_classes=num_classes)
    if name in CATDOG_RES_WIDTHS:
        from fastconv.models.catdog_res import CatDogResNet

        return CatDogResNet(CATDOG_RES_WIDTHS[name], num_classes=num_classes)
    from fastconv.models.catdog import CatDogNet

    return CatDogNet(CATDOG_WIDTHS[name], num_classes=num_classes, activation=activation)


def __getattr__(name: str):
    if name == "CatDogNet":
        from fastconv.models.catdog import CatDogNet

        return CatDogNet
    raise AttributeError(f"module 'fastconv.models' has no attribute {name!r}")
