"""Functional API: autograd Functions over the Triton kernels, with torch's signatures.

Each public function validates its arguments (errors name the argument and the shapes),
applies autocast, picks the backend (:mod:`fastconv.backend`) and runs either the
autograd Function whose forward and backward call the Triton launchers in
:mod:`fastconv.kernels`, or the torch reference ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastconv.backend import resolve_backend

__all__ = ["conv2d", "conv2d_bias_relu"]

IntOrPair = int | tuple[int, int] | list[int]
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------- helpers


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(1, 2) -> (1, 2)``; anything else is a TypeError naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_tensor(t: Tensor, name: str, ndim: tuple[int, ...], ref: Tensor | None = None) -> None:
    """Type, ndim, dtype and device checks shared by every op; ``ref`` is the input."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise ValueError(f"{name} must be {want}, got {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if ref is None:
        if t.dtype not in SUPPORTED_DTYPES and resolve_backend(t.device) == "triton":
            raise TypeError(
                f"{name} has dtype {t.dtype}; the Triton kernels support float32, float16 "
                "and bfloat16"
            )
        return
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but input has dtype {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but input is on {ref.device}")


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``, or None outside autocast."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


# --------------------------------------------------------------------------- convolution


def _conv_padding(
    padding: IntOrPair | str,
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Resolve ``padding`` to ((top, left), (bottom, right)), accepting "same" and "valid"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_hw, strict=True)]
            before = (total[0] // 2, total[1] // 2)
            return before, (total[0] - before[0], total[1] - before[1])
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    pad = _pair(padding, "padding")
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, got padding={pad}")
    return pad, pad


def _check_conv_args(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: IntOrPair,
    padding: IntOrPair | str,
    dilation: IntOrPair,
    groups: int,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Validate a conv call; return stride, pad_before, pad_after, dilation, output (P, Q)."""
    _check_tensor(x, "input", (4,))
    _check_tensor(weight, "weight", (4,), ref=x)
    if bias is not None:
        _check_tensor(bias, "bias", (1,), ref=x)
    if groups != 1:
        raise NotImplementedError(f"fastconv conv2d supports groups=1 only, got groups={groups}")
    n, c, h, w = x.shape
    k, c_w, r, s = weight.shape
    if c_w != c:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} expects {c_w} input channels but input of "
            f"shape {tuple(x.shape)} has {c}"
        )
    if bias is not None and bias.shape[0] != k:
        raise ValueError(
            f"bias of shape {tuple(bias.shape)} does not match the {k} output channels of "
            f"weight of shape {tuple(weight.shape)}"
        )
    stride_hw = _pair(stride, "stride")
    dilation_hw = _pair(dilation, "dilation")
    if min(stride_hw) < 1:
        raise ValueError(f"stride must be positive, got stride={stride_hw}")
    if min(dilation_hw) < 1:
        raise ValueError(f"dilation must be positive, got dilation={dilation_hw}")
    before, after = _conv_padding(padding, (r, s), stride_hw, dilation_hw)
    padded = (h + before[0] + after[0], w + before[1] + after[1])
    extent = (dilation_hw[0] * (r - 1) + 1, dilation_hw[1] * (s - 1) + 1)
    if extent[0] > padded[0] or extent[1] > padded[1]:
        raise ValueError(
            f"kernel of size {(r, s)} with dilation {dilation_hw} spans {extent}, larger than the "
            f"padded input {padded} (input shape {tuple(x.shape)}, padding {padding!r})"
        )
    out_hw = (
        (padded[0] - extent[0]) // stride_hw[0] + 1,
        (padded[1] - extent[1]) // stride_hw[1] + 1,
    )
    return stride_hw, before, after, dilation_hw, out_hw


class Conv2dBiasReLUFunction(torch.autograd.Function):
    """``y = relu?(conv2d(x, w) + b)``; forward and backward run the Triton kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, output_size, apply_relu):
        from fastconv.kernels import conv2d as kernels

        y = kernels.conv2d_fwd(x, weight, bias, stride, padding, dilation, output_size, apply_relu)
        if any(ctx.needs_input_grad[:3]):
            ctx.save_for_backward(x, weight, y if apply_relu else None)
            ctx.has_bias = bias is not None
            ctx.conv_args = (stride, padding, dilation)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from fastconv.kernels import conv2d as kernels

        x, weight, relu_output = ctx.saved_tensors
        stride, padding, dilation = ctx.conv_args
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = kernels.conv2d_bwd_input(
                grad_y, weight, relu_output, x.shape, stride, padding, dilation
            )
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            grad_w, grad_b = kernels.conv2d_bwd_weight(
                grad_y,
                x,
                relu_output,
                weight.shape,
                stride,
                padding,
                dilation,
                ctx.has_bias and ctx.needs_input_grad[2],
            )
            if not ctx.needs_input_grad[1]:
                grad_w = None
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _conv2d(x, weight, bias, stride, padding, dilation, groups, apply_relu: bool) -> Tensor:
    unbatched = isinstance(x, Tensor) and x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    stride_hw, before, after, dilation_hw, out_hw = _check_conv_args(
        x, weight, bias, stride, padding, dilation, groups
    )
    if resolve_backend(x.device) == "torch":
        if before != after:  # asymmetric "same" padding: let torch resolve it
            y = F.conv2d(x, weight, bias, stride_hw, padding, dilation_hw)
        else:
            y = F.conv2d(x, weight, bias, stride_hw, before, dilation_hw)
        y = F.relu(y) if apply_relu else y
    else:
        autocast_dtype = _autocast_dtype(x.device)
        if autocast_dtype is not None:
            x, weight = x.to(autocast_dtype), weight.to(autocast_dtype)
            bias = None if bias is None else bias.to(autocast_dtype)
        with torch.autocast(x.device.type, enabled=False):
            y = Conv2dBiasReLUFunction.apply(
                x, weight, bias, stride_hw, before, dilation_hw, out_hw, apply_relu
            )
    return y.squeeze(0) if unbatched else y


def conv2d_bias_relu(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    """``relu(conv2d(input, weight) + bias)`` in one fused kernel.

    Same arguments as :func:`torch.nn.functional.conv2d`: ``input`` (N, C, H, W) or
    (C, H, W), ``weight`` (K, C, R, S), ``bias`` (K,); returns (N, K, P, Q) with
    ``P = (H + 2*pad_h - dil_h*(R-1) - 1) // stride_h + 1`` (likewise Q), in the input's
    memory format (NCHW or channels_last). Only ``groups=1`` is supported.
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, apply_relu=True)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    """:func:`torch.nn.functional.conv2d` (``groups=1``) with the bias fused, no ReLU."""
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, apply_relu=False)


# --------------------------------------------------------------------------- pooling
