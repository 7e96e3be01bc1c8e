"""Functional API over the Triton kernels, with torch's signatures.

Each public function validates its arguments (errors name the argument and the shapes),
applies autocast, picks the backend (:mod:`fastconv.backend`) and runs either a fastconv
op through :func:`fastconv.ops.call` (forward and backward run the Triton launchers in
:mod:`fastconv.kernels`; torch.compile and torch.export see the ``torch.ops.fastconv`` op,
eager calls skip its dispatch) or the torch reference ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastconv import ops
from fastconv.activations import check_activation, reference_activation, saved_for_backward
from fastconv.backend import resolve_backend

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "conv2d",
    "conv2d_bias_relu",
    "fused_conv2d",
    "max_pool2d",
]

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
    n, c, h, w = x.shape
    k, c_w, r, s = weight.shape
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got groups={groups!r}")
    if c % groups or k % groups:
        raise ValueError(
            f"groups={groups} must divide the {c} input channels of input of shape "
            f"{tuple(x.shape)} and the {k} output channels of weight of shape "
            f"{tuple(weight.shape)}"
        )
    if c_w * groups != c:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} with groups={groups} expects "
            f"{c_w * groups} input channels but input of shape {tuple(x.shape)} has {c}"
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


def _check_epilogue_args(
    scale: Tensor | None,
    residual: Tensor | None,
    activation: str,
    negative_slope: float,
    x: Tensor,
    out_shape: tuple[int, int, int, int],
) -> None:
    """Validate the epilogue's operands against the input ``x`` and the output's shape."""
    check_activation(activation, negative_slope)
    if scale is not None:
        _check_tensor(scale, "scale", (1,), ref=x)
        if scale.shape[0] != out_shape[1]:
            raise ValueError(
                f"scale of shape {tuple(scale.shape)} does not match the {out_shape[1]} "
                "output channels"
            )
    if residual is not None:
        _check_tensor(residual, "residual", (4,), ref=x)
        if tuple(residual.shape) != out_shape:
            raise ValueError(
                f"residual of shape {tuple(residual.shape)} does not match the output shape "
                f"{out_shape}"
            )


def _conv2d(
    x,
    weight,
    bias,
    stride,
    padding,
    dilation,
    groups,
    activation: str = "identity",
    negative_slope: float = 0.01,
    scale: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    unbatched = isinstance(x, Tensor) and x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
        residual = residual.unsqueeze(0) if isinstance(residual, Tensor) else residual
    if isinstance(x, Tensor) and isinstance(weight, Tensor) and x.is_floating_point():
        autocast_dtype = _autocast_dtype(x.device)
        if autocast_dtype is not None:  # cast first, as torch's conv does: dtypes may differ
            x, weight, bias, scale, residual = (
                t.to(autocast_dtype) if isinstance(t, Tensor) else t
                for t in (x, weight, bias, scale, residual)
            )
    stride_hw, before, after, dilation_hw, out_hw = _check_conv_args(
        x, weight, bias, stride, padding, dilation, groups
    )
    out_shape = (x.shape[0], weight.shape[0], *out_hw)
    _check_epilogue_args(scale, residual, activation, negative_slope, x, out_shape)
    if resolve_backend(x.device) == "torch":
        # asymmetric "same" padding: let torch resolve it
        torch_padding = padding if before != after else before
        conv_bias = bias if scale is None else None  # torch's conv adds a bias itself
        z = F.conv2d(x, weight, conv_bias, stride_hw, torch_padding, dilation_hw, groups)
        if scale is not None:
            z = z * scale.view(1, -1, 1, 1)
            z = z if bias is None else z + bias.view(1, -1, 1, 1)
        if residual is not None:
            z = z + residual
        y = reference_activation(z, activation, negative_slope)
    else:
        operands = (x, weight, bias, scale, residual)
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(t, Tensor) and t.requires_grad for t in operands
        )
        save_preact = needs_grad and saved_for_backward(activation, negative_slope) == "preact"
        # Autocast already cast the operands above; the op has no autocast kernel, so the
        # dispatcher passes it through unchanged (and export keeps a plain op node).
        y, _ = ops.call(
            ops.conv2d,
            *operands, stride_hw, before, dilation_hw, groups, out_hw,
            activation, float(negative_slope), save_preact,
        )  # fmt: skip
    return y.squeeze(0) if unbatched else y


def fused_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    activation: str = "identity",
    negative_slope: float = 0.01,
    scale: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """``act(conv2d(input, weight) * scale + bias + residual)`` in one kernel.

    The convolution's arguments are :func:`torch.nn.functional.conv2d`'s: ``input``
    (N, C, H, W) or (C, H, W), ``weight`` (K, C/groups, R, S), ``bias`` (K,). ``scale``
    (K,) multiplies each output channel before the bias (a BatchNorm folded into the
    epilogue), ``residual`` (N, K, P, Q) is added before the activation (a ResNet block's
    skip connection), and ``activation`` is one of
    :data:`fastconv.activations.ACTIVATIONS` (``negative_slope`` is leaky_relu's). Returns
    (N, K, P, Q) in the input's memory format; every operand gets a gradient.
    """
    return _conv2d(
        input, weight, bias, stride, padding, dilation, groups,
        activation, negative_slope, scale, residual,
    )  # fmt: skip


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
    (C, H, W), ``weight`` (K, C/groups, R, S), ``bias`` (K,); returns (N, K, P, Q) with
    ``P = (H + 2*pad_h - dil_h*(R-1) - 1) // stride_h + 1`` (likewise Q), in the input's
    memory format (NCHW or channels_last). ``groups`` splits the channels into independent
    convolutions, as in torch (weight (K, C/groups, R, S)).
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, "relu")


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair | str = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
) -> Tensor:
    """:func:`torch.nn.functional.conv2d` with the bias fused, no activation."""
    return _conv2d(input, weight, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------- pooling


def _pool_input(x: Tensor, op: str) -> tuple[Tensor, bool]:
    """Validate a pooling input (N, C, H, W) or (C, H, W); return it 4-D and if it was 3-D."""
    _check_tensor(x, "input", (3, 4))
    if min(x.shape[-3:]) == 0:
        raise ValueError(
            f"{op}: input of shape {tuple(x.shape)} has an empty channel or spatial dimension"
        )
    unbatched = x.dim() == 3
    return (x.unsqueeze(0) if unbatched else x), unbatched


def _pool_output_size(
    size: int, kernel: int, step: int, pad: int, dilation: int, ceil: bool
) -> int:
    """torch's pooling output size; in ceil mode the last window starts inside input or padding."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (step - 1 if ceil else 0)) // step + 1
    if ceil and (out - 1) * step >= size + pad:
        out -= 1
    return out


def _check_pool_args(
    op: str,
    x: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None,
    padding: IntOrPair,
    dilation: IntOrPair,
    ceil_mode: bool,
) -> tuple[tuple[int, int], ...]:
    """Validate a pooling call on ``x`` (N, C, H, W): kernel, stride, padding, dilation, (P, Q)."""
    kernel = _pair(kernel_size, "kernel_size")
    step = kernel if stride is None or stride in ((), []) else _pair(stride, "stride")
    pad = _pair(padding, "padding")
    dil = _pair(dilation, "dilation")
    for name, value, low in (
        ("kernel_size", kernel, 1),
        ("stride", step, 1),
        ("dilation", dil, 1),
        ("padding", pad, 0),
    ):
        if min(value) < low:
            kind = "positive" if low else "non-negative"
            raise ValueError(f"{op}: {name} must be {kind}, got {name}={value}")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"{op}: padding={pad} must be at most half of kernel_size={kernel} on each side"
        )
    out_hw = tuple(
        _pool_output_size(x.shape[2 + i], kernel[i], step[i], pad[i], dil[i], ceil_mode)
        for i in range(2)
    )
    if min(out_hw) < 1:
        raise ValueError(
            f"{op}: input of shape {tuple(x.shape)} with kernel_size={kernel}, stride={step}, "
            f"padding={pad}, dilation={dil} gives an empty output of size {out_hw}"
        )
    return kernel, step, pad, dil, out_hw


def _max_pool_indices(argmax, input_hw, kernel_size, stride, padding, dilation) -> Tensor:
    """torch-style int64 indices ``h * W + w`` into each input plane from the compact argmax."""
    argmax = argmax.long()
    p = torch.arange(argmax.shape[-2], device=argmax.device).view(-1, 1)
    q = torch.arange(argmax.shape[-1], device=argmax.device).view(1, -1)
    h = p * stride[0] - padding[0] + (argmax // kernel_size[1]) * dilation[0]
    w = q * stride[1] - padding[1] + (argmax % kernel_size[1]) * dilation[1]
    return h * input_hw[1] + w


def max_pool2d(
    input: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`torch.nn.functional.max_pool2d` on the Triton kernels.

    ``input`` (N, C, H, W) or (C, H, W) -> (N, C, P, Q) in the input's memory format, with
    ``P = (H + 2*pad_h - dil_h*(KH-1) - 1) / stride_h + 1`` rounded down (up in ceil_mode,
    keeping the last window starting inside the input or left padding). NaN wins a window;
    ties go to the first maximum, as in torch. ``return_indices=True`` also returns torch's
    int64 flat indices ``h*W + w``, computed from the kernel's compact argmax.
    """
    x, unbatched = _pool_input(input, "max_pool2d")
    kernel, step, pad, dil, out_hw = _check_pool_args(
        "max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode
    )
    if resolve_backend(x.device) == "torch":
        result = F.max_pool2d(x, kernel, step, pad, dil, ceil_mode, return_indices)
        y, indices = result if return_indices else (result, None)
    else:
        store_argmax = return_indices or (torch.is_grad_enabled() and x.requires_grad)
        y, argmax = ops.call(ops.max_pool2d, x, kernel, step, pad, dil, out_hw, store_argmax)
        indices = None
        if return_indices:
            indices = _max_pool_indices(argmax, x.shape[-2:], kernel, step, pad, dil)
    if unbatched:
        y = y.squeeze(0)
        indices = None if indices is None else indices.squeeze(0)
    return (y, indices) if return_indices else y


def avg_pool2d(
    input: Tensor,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """:func:`torch.nn.functional.avg_pool2d` on the Triton kernels.

    ``input`` (N, C, H, W) or (C, H, W) -> (N, C, P, Q) in the input's memory format,
    ``P = (H + 2*pad_h - KH) / stride_h + 1`` rounded down (up in ceil_mode). Each output is
    the window's sum divided by ``divisor_override``, or by the window's size counting the
    zero padding (``count_include_pad``) or not.
    """
    x, unbatched = _pool_input(input, "avg_pool2d")
    kernel, step, pad, _, out_hw = _check_pool_args(
        "avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode
    )
    if divisor_override is not None and (
        not isinstance(divisor_override, int) or isinstance(divisor_override, bool)
    ):
        raise TypeError(f"avg_pool2d: divisor_override must be an int, got {divisor_override!r}")
    if divisor_override == 0:
        raise ValueError("avg_pool2d: divisor_override must be non-zero, got 0")
    if resolve_backend(x.device) == "torch":
        y = F.avg_pool2d(x, kernel, step, pad, ceil_mode, count_include_pad, divisor_override)
    else:
        y = ops.call(
            ops.avg_pool2d, x, kernel, step, pad, out_hw, bool(count_include_pad), divisor_override
        )
    return y.squeeze(0) if unbatched else y


def _adaptive_output_size(output_size, x: Tensor) -> tuple[int, int]:
    """Resolve ``output_size`` (int, or pair of int/None meaning "as the input") to (P, Q)."""
    sizes = output_size if isinstance(output_size, tuple | list) else (output_size, output_size)
    if len(sizes) != 2 or not all(
        s is None or (isinstance(s, int) and not isinstance(s, bool)) for s in sizes
    ):
        raise TypeError(
            "adaptive_avg_pool2d: output_size must be an int or a pair of ints (or None), "
            f"got {output_size!r}"
        )
    resolved = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(sizes))
    if min(resolved) < 0:
        raise ValueError(
            f"adaptive_avg_pool2d: output_size must be non-negative, got {output_size!r} for "
            f"input of shape {tuple(x.shape)}"
        )
    return resolved


def adaptive_avg_pool2d(input: Tensor, output_size: IntOrPair) -> Tensor:
    """:func:`torch.nn.functional.adaptive_avg_pool2d` on the Triton kernels.

    ``input`` (N, C, H, W) or (C, H, W) -> (N, C, P, Q) in the input's memory format; output
    (p, q) is the mean of rows floor(p*H/P) to ceil((p+1)*H/P) (exclusive), likewise columns.
    ``output_size`` is an int or a pair whose None entries keep the input's size.
    """
    x, unbatched = _pool_input(input, "adaptive_avg_pool2d")
    out_hw = _adaptive_output_size(output_size, x)
    if resolve_backend(x.device) == "torch":
        y = F.adaptive_avg_pool2d(x, out_hw)
    else:
        y = ops.call(ops.adaptive_avg_pool2d, x, out_hw)
    return y.squeeze(0) if unbatched else y
