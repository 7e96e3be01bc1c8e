"""A convolution followed by a BatchNorm (and an activation, and a residual add) as one module.

:class:`Conv2dBatchNormAct` is what :func:`fastconv.fusion.convert` puts where a
``conv -> BatchNorm2d [-> activation]`` or ``conv -> BatchNorm2d -> add(., residual)
[-> activation]`` chain was. It holds the convolution's parameters at the convolution's
name and receives the BatchNorm module as an argument of each call, so the BatchNorm stays
registered at its own name in the enclosing model: the ``state_dict`` keys are the original
model's, and ``.to()``, ``deepcopy``, pickling and ``load_state_dict`` treat the BatchNorm
exactly as before.

Eval mode (the BatchNorm not training) folds the BatchNorm into the convolution's epilogue
at call time, with ``mu``/``var`` the running statistics, ``gamma``/``beta`` the affine
parameters (1 and 0 when not affine) and ``b`` the convolution's bias (0 if none)::

    scale = gamma / sqrt(var + eps)
    bias  = beta + (b - mu) * scale
    y     = act(conv2d(x, w) * scale + bias [+ residual])       # one fastconv kernel

which equals ``act(BN(conv2d(x, w) + b) [+ residual])``; gradients reach ``w``, ``b``,
``gamma`` and ``beta`` through ``scale`` and ``bias``. Folding at call time (rather than
rewriting ``w`` once) keeps the original parameters, so the model still trains and saves
the original checkpoint. Train mode cannot fold (the statistics are the batch's): the
convolution runs on fastconv, then the BatchNorm module itself (batch statistics, running
statistics and ``num_batches_tracked`` updated exactly as before), the residual add and
the activation run in torch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastconv import functional as fcf
from fastconv.activations import reference_activation
from fastconv.layers import Conv2dAct

__all__ = ["Conv2dBatchNormAct", "fold_batch_norm"]


def fold_batch_norm(conv_bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, bias)`` such that ``BN(z + conv_bias) == z * scale + bias`` in eval mode.

    ``scale = gamma * rsqrt(running_var + eps)``, ``bias = beta + (conv_bias - running_mean)
    * scale``; computed in at least float32 and returned in ``running_var``'s dtype.
    Differentiable in ``conv_bias``, ``gamma`` and ``beta``.
    """
    var, mean = bn.running_var, bn.running_mean
    compute = torch.promote_types(var.dtype, torch.float32)
    scale = torch.rsqrt(var.to(compute) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(compute)
    shift = -mean.to(compute) if conv_bias is None else conv_bias.to(compute) - mean.to(compute)
    bias = shift * scale
    if bn.bias is not None:
        bias = bias + bn.bias.to(compute)
    return scale.to(var.dtype), bias.to(var.dtype)


class Conv2dBatchNormAct(Conv2dAct):
    """``act(BN(conv2d(x) + b) [+ residual])``: a convolution, the BatchNorm after it, an
    optional residual add and an activation (``"identity"`` for none).

    Same constructor and parameters as :class:`fastconv.layers.Conv2dAct` (``activation``
    defaults to ``"identity"``); ``forward(input, batchnorm, residual=None)`` takes the
    ``nn.BatchNorm2d`` (with running statistics) whose output the original model fed on.
    Eval mode (``batchnorm.training`` false) folds it into the kernel's epilogue (module
    docstring); train mode runs it as the original module did. Any ``padding_mode``: as
    :class:`fastconv.layers.Conv2d`, other than zeros pads the input first.
    """

    def __init__(self, *args, activation: str = "identity", **kwargs) -> None:
        super().__init__(*args, activation=activation, **kwargs)

    def forward(
        self, input: Tensor, batchnorm: nn.BatchNorm2d, residual: Tensor | None = None
    ) -> Tensor:
        if batchnorm.running_mean is None or batchnorm.running_var is None:
            raise ValueError(
                f"{type(self).__name__}: the BatchNorm has no running statistics "
                "(track_running_stats=False), so it cannot be folded"
            )
        if batchnorm.num_features != self.out_channels:
            raise ValueError(
                f"{type(self).__name__}: BatchNorm over {batchnorm.num_features} features "
                f"after a convolution with {self.out_channels} output channels"
            )
        if batchnorm.training:
            z = batchnorm(self._conv(fcf.conv2d, input))
            if residual is not None:
                z = z + residual
            return reference_activation(z, self.activation, self.negative_slope)
        scale, bias = fold_batch_norm(self.bias, batchnorm)
        scale, bias = scale.to(self.weight.dtype), bias.to(self.weight.dtype)

        def folded(x, weight, conv_bias, *args, **kwargs):  # conv_bias is inside ``bias``
            return fcf.fused_conv2d(x, weight, bias, *args, scale=scale, **kwargs)

        return self._conv(
            folded, input,
            activation=self.activation, negative_slope=self.negative_slope, residual=residual,
        )  # fmt: skip
