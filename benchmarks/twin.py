"""The torch.nn twin of a model built from fastconv.layers: same weights, plain torch modules.

Each fastconv layer becomes the torch.nn module it stands for: ``Conv2dReLU`` becomes
``nn.Sequential(nn.Conv2d, nn.ReLU)`` (convolution then ReLU, what users write today),
``Conv2dAct`` a convolution then its activation in torch (:class:`Activation`),
``Conv2dBatchNormAct`` a convolution, the BatchNorm it is given, the residual add and the
:class:`Activation` (:class:`ConvBatchNormAct`), the pooling layers torch's. Parameters
and buffers are copied (memory format kept), everything else in the model is deep-copied as
is.
"""

from __future__ import annotations

import copy

from torch import nn

from fastconv import conv_bn, layers
from fastconv.activations import reference_activation

FASTCONV_MODULES = (layers.__name__, conv_bn.__name__)


def _copy_conv(conv: nn.Conv2d) -> nn.Conv2d:
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    plain.weight = nn.Parameter(conv.weight.detach().clone())
    if conv.bias is not None:
        plain.bias = nn.Parameter(conv.bias.detach().clone())
    return plain


class Activation(nn.Module):
    """``act(x)`` in torch (``F.relu``, ``F.silu``...): a fused activation, unfused."""

    def __init__(self, activation: str, negative_slope: float) -> None:
        super().__init__()
        self.activation, self.negative_slope = activation, negative_slope

    def forward(self, x):
        return reference_activation(x, self.activation, self.negative_slope)


class ConvBatchNormAct(nn.Module):
    """``act(batchnorm(conv(x)) [+ residual])`` in torch: ``Conv2dBatchNormAct``'s twin, with
    its call signature ``(input, batchnorm, residual=None)``."""

    def __init__(self, conv: nn.Conv2d, activation: Activation) -> None:
        super().__init__()
        self.conv, self.activation = conv, activation

    def forward(self, input, batchnorm: nn.BatchNorm2d, residual=None):
        z = batchnorm(self.conv(input))
        if residual is not None:
            z = z + residual
        return self.activation(z)


def torch_layer(module: nn.Module) -> nn.Module:
    """The plain torch.nn equivalent of one fastconv layer."""
    if isinstance(module, conv_bn.Conv2dBatchNormAct):
        activation = Activation(module.activation, module.negative_slope)
        return ConvBatchNormAct(_copy_conv(module), activation)
    if isinstance(module, layers.Conv2dReLU):
        return nn.Sequential(_copy_conv(module), nn.ReLU())
    if isinstance(module, layers.Conv2dAct):
        activation = Activation(module.activation, module.negative_slope)
        return nn.Sequential(_copy_conv(module), activation)
    if isinstance(module, nn.Conv2d):
        return _copy_conv(module)
    if isinstance(module, nn.MaxPool2d):
        return nn.MaxPool2d(
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            ceil_mode=module.ceil_mode,
        )
    if isinstance(module, nn.AvgPool2d):
        return nn.AvgPool2d(
            module.kernel_size,
            module.stride,
            module.padding,
            module.ceil_mode,
            module.count_include_pad,
            module.divisor_override,
        )
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool2d(module.output_size)
    raise TypeError(f"no torch.nn twin known for fastconv layer {type(module).__name__}")


def torch_nn_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every fastconv layer replaced by its torch.nn equivalent."""
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__module__ in FASTCONV_MODULES:
                setattr(parent, name, torch_layer(child))
    return twin
