"""torchvision's ResNets for dogs-vs-cats images, with fastconv layers.

``--model resnet18`` lets a run compare the project's own net with a well-known one on the
same images and recipe. torchvision's ResNet is built for 224 px ImageNet images: its stem (a
7x7 stride-2 convolution, then a stride-2 max pool) shrinks H and W 4x before the first
block, which throws away most of a 64 px image. As for CIFAR-sized inputs, the stem here is
a 3x3 stride-1 convolution and the max pool is gone, so only the three strided stages halve
the image (64 px -> 8 x 8 before the global pool). Weights are random (torchvision's own
initialisation), the head has ``num_classes`` outputs, and :func:`fastconv.layers.convert`
then runs every convolution and pooling on fastconv. The state_dict keys are torchvision's.
"""

from __future__ import annotations

import torchvision
from torch import nn

from fastconv.layers import convert

__all__ = ["build_resnet", "small_image_resnet"]


def small_image_resnet(name: str, num_classes: int = 2) -> nn.Module:
    """torchvision's ``name`` in plain ``torch.nn``, randomly initialised, for 64-128 px
    images: a 3x3 stride-1 stem convolution and no max pool."""
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def build_resnet(name: str, num_classes: int = 2) -> nn.Module:
    """:func:`small_image_resnet` converted to fastconv layers (same state_dict keys)."""
    model, _ = convert(small_image_resnet(name, num_classes), inplace=True)
    return model
