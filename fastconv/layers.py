"""Drop-in ``nn.Module`` layers over :mod:`fastconv.functional`, and :func:`convert`.

Every layer subclasses its torch counterpart (``nn.Conv2d``, ``nn.MaxPool2d``, ...), so the
constructor, ``state_dict`` keys, ``repr`` and existing checkpoints work unchanged; only
``forward`` differs: it calls the fastconv op, which runs the Triton kernels or the torch
reference as :mod:`fastconv.backend` decides. Options the kernels do not support are refused
at construction with the argument named.

:func:`convert` (defined in :mod:`fastconv.fusion`, importable from here) turns an existing
torch model into a fastconv one.
"""

from __future__ import annotations

import importlib

from torch import Tensor, nn

from fastconv import functional as fcf
from fastconv.activations import check_activation
from fastconv.kernels.layout import memory_format_of
from fastconv.padding import pad2d

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "Conv2d",
    "Conv2dAct",
    "Conv2dReLU",
    "ConversionReport",  # noqa: F822 - lazily from fastconv.report (__getattr__)
    "MaxPool2d",
    "convert",  # noqa: F822 - lazily from fastconv.fusion (__getattr__)
]


# --------------------------------------------------------------------------- layers


IntOrPair = int | tuple[int, int]


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _conv_unsupported_reason(padding_mode: str) -> str | None:
    """Why fastconv cannot run a convolution with these options, or None if it can."""
    if padding_mode not in PADDING_MODES:
        return (
            f"padding_mode={padding_mode!r} is not supported "
            f"(fastconv supports {', '.join(map(repr, PADDING_MODES))})"
        )
    return None


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (any ``groups`` and ``padding_mode``) with the bias fused in
    the kernel.

    Input (N, C, H, W) or (C, H, W); output (N, K, P, Q). A ``padding_mode`` other than
    ``"zeros"`` pads the input first (:func:`fastconv.padding.pad2d`), as ``nn.Conv2d`` does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair | str = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        reason = _conv_unsupported_reason(padding_mode)
        if reason is not None:
            raise ValueError(f"{type(self).__name__}: {reason}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, **kwargs) -> Conv2d:
        """A layer of this class that shares ``conv``'s parameters and training mode;
        ``kwargs`` are this class's own constructor arguments (``activation=``)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",  # no memory: the parameters are conv's
            **kwargs,
        )
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer.train(conv.training)

    def _conv(self, conv_op, input: Tensor, **kwargs) -> Tensor:
        """``conv_op(input, weight, bias, stride, padding, dilation, groups, **kwargs)`` as
        ``nn.Conv2d._conv_forward`` runs it: a ``padding_mode`` other than zeros pads the
        input with :func:`~fastconv.padding.pad2d` (channels-last on Triton) and convolves
        with padding 0; the result keeps the input's memory format."""
        if self.padding_mode == "zeros":
            return conv_op(
                input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                self.groups, **kwargs,
            )  # fmt: skip
        padded = pad2d(input, self._reversed_padding_repeated_twice, self.padding_mode)
        y = conv_op(
            padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups, **kwargs
        )
        return y.contiguous(memory_format=memory_format_of(input)) if input.dim() == 4 else y

    def forward(self, input: Tensor) -> Tensor:
        return self._conv(fcf.conv2d, input)


class Conv2dAct(Conv2d):
    """``act(conv2d(x) + bias [+ residual])`` in one kernel: ``nn.Conv2d``'s constructor and
    parameters plus ``activation`` (one of :data:`fastconv.activations.ACTIVATIONS`) and
    ``negative_slope`` (leaky_relu's).

    Input (N, C, H, W) or (C, H, W); output (N, K, P, Q). ``forward(input, residual)`` adds
    ``residual`` (N, K, P, Q) before the activation (a ResNet block's skip connection). A
    checkpoint of ``nn.Conv2d`` loads into it unchanged (the activation has no parameters).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair | str = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        check_activation(activation, negative_slope)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )  # fmt: skip
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, activation={self.activation}"
        if self.activation == "leaky_relu":
            text += f", negative_slope={self.negative_slope}"
        return text

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        return self._conv(
            fcf.fused_conv2d, input,
            activation=self.activation, negative_slope=self.negative_slope, residual=residual,
        )  # fmt: skip


class Conv2dReLU(Conv2d):
    """``relu(conv2d(x) + bias)`` in one kernel; same constructor and parameters as ``nn.Conv2d``.

    Input (N, C, H, W) or (C, H, W); output (N, K, P, Q). A checkpoint of ``nn.Conv2d``
    loads into it unchanged (the ReLU has no parameters).
    """

    def forward(self, input: Tensor) -> Tensor:
        return self._conv(fcf.conv2d_bias_relu, input)


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` running fastconv's pooling kernel."""

    @classmethod
    def from_torch(cls, pool: nn.MaxPool2d) -> MaxPool2d:
        """The same pooling as ``pool`` (same training mode) on fastconv's kernel."""
        layer = cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            pool.return_indices,
            pool.ceil_mode,
        )
        return layer.train(pool.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


class AvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` running fastconv's pooling kernel."""

    @classmethod
    def from_torch(cls, pool: nn.AvgPool2d) -> AvgPool2d:
        """The same pooling as ``pool`` (same training mode) on fastconv's kernel."""
        layer = cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.ceil_mode,
            pool.count_include_pad,
            pool.divisor_override,
        )
        return layer.train(pool.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """:class:`torch.nn.AdaptiveAvgPool2d` running fastconv's pooling kernel."""

    @classmethod
    def from_torch(cls, pool: nn.AdaptiveAvgPool2d) -> AdaptiveAvgPool2d:
        """The same pooling as ``pool`` (same training mode) on fastconv's kernel."""
        return cls(pool.output_size).train(pool.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.adaptive_avg_pool2d(input, self.output_size)


# --------------------------------------------------------------------------- convert

# convert() and ConversionReport live in fastconv.fusion (which imports this module); they
# stay importable from here, loaded on first use (PEP 562).
_MOVED = {"convert": "fastconv.fusion", "ConversionReport": "fastconv.report"}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'fastconv.layers' has no attribute {name!r}")
