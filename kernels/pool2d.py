"""2D pooling as Triton kernels: max, average and adaptive average, forward and backward.

Every kernel walks a flat range of elements of the tensor it writes, in that tensor's memory
order (NCHW or channels_last, picked by ``CHANNELS_LAST``), so stores are contiguous and
loads from an input of the same format are coalesced. All four strides of every tensor are
passed, so non-contiguous inputs work without a copy. Values accumulate in fp32 and are cast
on store. Index math runs in int64 (``INDEX_64``) when a tensor spans 2**31 elements or more.

The backward kernels are gathers: each input pixel loops over the few output windows that
cover it and sums their contribution, so overlapping windows (stride < kernel) need no
atomics and the result is deterministic.

Launchers take tensors whose arguments the functional API has already validated; they
allocate the outputs (in the input's memory format) and launch the kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.kernels import alloc
from fastconv.kernels.layout import element_span, memory_format_of

__all__ = [
    "adaptive_avg_pool2d_bwd",
    "adaptive_avg_pool2d_fwd",
    "avg_pool2d_bwd",
    "avg_pool2d_fwd",
    "max_pool2d_bwd",
    "max_pool2d_fwd",
]

Pair = tuple[int, int]

# Elements per program of the elementwise-style kernels, and their warps.
BLOCK_SIZE = 256
NUM_WARPS = 4
# Adaptive forward: a (BLOCK_M outputs x BLOCK_K window elements) tile of about this many loads.
ADAPTIVE_TILE = 1024
ADAPTIVE_MAX_BLOCK_K = 64


# --------------------------------------------------------------------------- helpers


@triton.jit
def _unravel(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Flat offsets in NCHW (or NHWC when ``CHANNELS_LAST``) order -> (n, c, h, w) indices."""
    if CHANNELS_LAST:
        c = offs % C
        rest = offs // C
        w = rest % W
        rest = rest // W
        h = rest % H
        n = rest // H
    else:
        w = offs % W
        rest = offs // W
        h = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, h, w


@triton.jit
def _flat_offsets(BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """This program's BLOCK flat element offsets, int64 when ``INDEX_64``."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _avg_pool_divisor(
    p,
    q,
    H,
    W,
    step_h,
    step_w,
    pad_h,
    pad_w,
    divisor_override,
    KH: tl.constexpr,
    KW: tl.constexpr,
    COUNT_INCLUDE_PAD: tl.constexpr,
):
    """Divisor of avg-pool output (p, q) as torch computes it, in fp32.

    ``divisor_override`` if non-zero, else the window's size clipped to the padded input
    (COUNT_INCLUDE_PAD) or to the input. Windows of valid outputs are never empty (torch's
    output-size rule), so the divisor of a valid output is never 0.
    """
    h_start = p * step_h - pad_h
    w_start = q * step_w - pad_w
    h_end = tl.minimum(h_start + KH, H + pad_h)
    w_end = tl.minimum(w_start + KW, W + pad_w)
    if COUNT_INCLUDE_PAD:
        count = (h_end - h_start) * (w_end - w_start)
    else:
        count = (tl.minimum(h_end, H) - tl.maximum(h_start, 0)) * (
            tl.minimum(w_end, W) - tl.maximum(w_start, 0)
        )
    return tl.where(divisor_override != 0, divisor_override, count).to(tl.float32)


def _needs_int64(*tensors: Tensor) -> bool:
    """True when an element offset into one of ``tensors`` can reach 2**31."""
    return max(element_span(t) for t in tensors) >= 2**31


def _empty(shape, like: Tensor, memory_format: torch.memory_format, dtype=None) -> Tensor:
    return alloc.empty(
        shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format
    )


def _grid(numel: int, block: int) -> tuple[int]:
    return (triton.cdiv(numel, block),)


def _candidate_count(extent: int, step: int) -> int:
    """Most output windows of span ``extent`` and stride ``step`` that cover one input pixel."""
    return -(-extent // step)


# --------------------------------------------------------------------------- max pooling


@triton.jit
def _max_pool2d_fwd_kernel(
    # pointers
    x_ptr,
    y_ptr,
    argmax_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    numel_y,
    step_h,
    step_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    # strides
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    # meta-parameters
    KH: tl.constexpr,
    KW: tl.constexpr,
    STORE_ARGMAX: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """y[n, c, p, q] = max over r < KH, s < KW of x[n, c, p*step_h - pad_h + r*dil_h, ...].

    x: (N, C, H, W); y and argmax: (N, C, P, Q) with the same strides, where
    P = (H + 2*pad_h - dil_h*(KH-1) - 1) / step_h + 1 (floor, or ceil in ceil_mode). Padding
    never wins. argmax = r*KW + s of the first maximum, or of the last NaN (NaN wins), as torch.
    """
    offs = _flat_offsets(BLOCK, INDEX_64)
    in_range = offs < numel_y
    n, c, p, q = _unravel(offs, C, P, Q, CHANNELS_LAST)
    x_base = x_ptr + n * stride_xn + c * stride_xc
    h_start = p * step_h - pad_h
    w_start = q * step_w - pad_w
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.full([BLOCK], -1, tl.int32)
    for r in tl.static_range(KH):
        h = h_start + r * dil_h
        h_ok = in_range & (h >= 0) & (h < H)
        for s in tl.static_range(KW):
            w = w_start + s * dil_w
            ok = h_ok & (w >= 0) & (w < W)
            v = tl.load(x_base + h * stride_xh + w * stride_xw, mask=ok, other=float("-inf"))
            v = v.to(tl.float32)
            take = ok & ((v > best) | (v != v) | (best_idx < 0))
            best = tl.where(take, v, best)
            best_idx = tl.where(take, r * KW + s, best_idx)
    y_offs = n * stride_yn + c * stride_yc + p * stride_yh + q * stride_yw
    tl.store(y_ptr + y_offs, best.to(y_ptr.dtype.element_ty), mask=in_range)
    if STORE_ARGMAX:
        tl.store(argmax_ptr + y_offs, best_idx.to(argmax_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _max_pool2d_bwd_kernel(
    # pointers
    grad_y_ptr,
    argmax_ptr,
    grad_x_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    numel_x,
    step_h,
    step_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    # strides
    stride_gyn,
    stride_gyc,
    stride_gyh,
    stride_gyw,
    stride_an,
    stride_ac,
    stride_ah,
    stride_aw,
    stride_gxn,
    stride_gxc,
    stride_gxh,
    stride_gxw,
    # meta-parameters
    KH: tl.constexpr,
    KW: tl.constexpr,
    CANDIDATES_H: tl.constexpr,
    CANDIDATES_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum of grad_y[n, c, p, q] over windows (p, q) whose argmax is (h, w).

    grad_y, argmax: (N, C, P, Q); grad_x: (N, C, H, W). Window p covers h when
    h = p*step_h - pad_h + r*dil_h for some r < KH; at most CANDIDATES_H windows do.
    """
    offs = _flat_offsets(BLOCK, INDEX_64)
    in_range = offs < numel_x
    n, c, h, w = _unravel(offs, C, H, W, CHANNELS_LAST)
    gy_base = grad_y_ptr + n * stride_gyn + c * stride_gyc
    a_base = argmax_ptr + n * stride_an + c * stride_ac
    padded_h = h + pad_h
    padded_w = w + pad_w
    last_p = padded_h // step_h
    last_q = padded_w // step_w
    acc = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(CANDIDATES_H):
        p = last_p - i
        offset_h = padded_h - p * step_h
        r = offset_h // dil_h
        p_ok = in_range & (p >= 0) & (p < P) & (r * dil_h == offset_h) & (r < KH)
        for j in tl.static_range(CANDIDATES_W):
            q = last_q - j
            offset_w = padded_w - q * step_w
            s = offset_w // dil_w
            ok = p_ok & (q >= 0) & (q < Q) & (s * dil_w == offset_w) & (s < KW)
            argmax = tl.load(a_base + p * stride_ah + q * stride_aw, mask=ok, other=-1)
            hit = ok & (argmax.to(tl.int32) == r * KW + s)
            g = tl.load(gy_base + p * stride_gyh + q * stride_gyw, mask=hit, other=0.0)
            acc += g.to(tl.float32)
    gx_offs = n * stride_gxn + c * stride_gxc + h * stride_gxh + w * stride_gxw
    tl.store(grad_x_ptr + gx_offs, acc.to(grad_x_ptr.dtype.element_ty), mask=in_range)


def _argmax_dtype(kernel_size: Pair) -> torch.dtype:
    """Smallest signed integer dtype holding r*KW + s for every window element (and -1)."""
    window = kernel_size[0] * kernel_size[1]
    if window <= 2**7:
        return torch.int8
    if window <= 2**15:
        return torch.int16
    return torch.int32


def max_pool2d_fwd(
    x: Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    output_size: Pair,
    store_argmax: bool,
) -> tuple[Tensor, Tensor | None]:
    """Max pooling of ``x`` (N, C, H, W) -> ``y`` (N, C, P, Q) and the compact ``argmax``.

    ``argmax`` (int8/int16/int32, same shape and strides as ``y``) holds ``r*KW + s``, the
    winner's position inside its window; it is None unless ``store_argmax``.
    """
    n, c, h, w = x.shape
    p, q = output_size
    memory_format = memory_format_of(x)
    y = _empty((n, c, p, q), x, memory_format)
    argmax = None
    if store_argmax:
        argmax = _empty((n, c, p, q), x, memory_format, _argmax_dtype(kernel_size))
    if y.numel() == 0:
        return y, argmax
    _max_pool2d_fwd_kernel[_grid(y.numel(), BLOCK_SIZE)](
        x,
        y,
        argmax if store_argmax else y,
        c,
        h,
        w,
        p,
        q,
        y.numel(),
        *stride,
        *padding,
        *dilation,
        *x.stride(),
        *y.stride(),
        KH=kernel_size[0],
        KW=kernel_size[1],
        STORE_ARGMAX=store_argmax,
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(x, y),
        BLOCK=BLOCK_SIZE,
        num_warps=NUM_WARPS,
    )
    return y, argmax


def max_pool2d_bwd(
    grad_y: Tensor,
    argmax: Tensor,
    input_shape: torch.Size,
    memory_format: torch.memory_format,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> Tensor:
    """Gradient of :func:`max_pool2d_fwd`: ``grad_x`` (N, C, H, W) in ``memory_format``."""
    n, c, h, w = input_shape
    p, q = grad_y.shape[-2:]
    grad_x = _empty(input_shape, grad_y, memory_format)
    if grad_x.numel() == 0:
        return grad_x
    _max_pool2d_bwd_kernel[_grid(grad_x.numel(), BLOCK_SIZE)](
        grad_y,
        argmax,
        grad_x,
        c,
        h,
        w,
        p,
        q,
        grad_x.numel(),
        *stride,
        *padding,
        *dilation,
        *grad_y.stride(),
        *argmax.stride(),
        *grad_x.stride(),
        KH=kernel_size[0],
        KW=kernel_size[1],
        CANDIDATES_H=_candidate_count(dilation[0] * (kernel_size[0] - 1) + 1, stride[0]),
        CANDIDATES_W=_candidate_count(dilation[1] * (kernel_size[1] - 1) + 1, stride[1]),
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(grad_y, grad_x),
        BLOCK=BLOCK_SIZE,
        num_warps=NUM_WARPS,
    )
    return grad_x


# --------------------------------------------------------------------------- average pooling


@triton.jit
def _avg_pool2d_fwd_kernel(
    # pointers
    x_ptr,
    y_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    numel_y,
    step_h,
    step_w,
    pad_h,
    pad_w,
    divisor_override,
    # strides
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    # meta-parameters
    KH: tl.constexpr,
    KW: tl.constexpr,
    COUNT_INCLUDE_PAD: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """y[n, c, p, q] = sum of x over window (p, q) / divisor(p, q).

    x: (N, C, H, W); y: (N, C, P, Q), P = (H + 2*pad_h - KH) / step_h + 1 (floor, or ceil in
    ceil_mode). The divisor is ``divisor_override`` if non-zero, else the window's size
    clipped to the padded input (COUNT_INCLUDE_PAD) or to the input.
    """
    offs = _flat_offsets(BLOCK, INDEX_64)
    in_range = offs < numel_y
    n, c, p, q = _unravel(offs, C, P, Q, CHANNELS_LAST)
    x_base = x_ptr + n * stride_xn + c * stride_xc
    h_start = p * step_h - pad_h
    w_start = q * step_w - pad_w
    acc = tl.zeros([BLOCK], tl.float32)
    for r in tl.static_range(KH):
        h = h_start + r
        h_ok = in_range & (h >= 0) & (h < H)
        for s in tl.static_range(KW):
            w = w_start + s
            ok = h_ok & (w >= 0) & (w < W)
            v = tl.load(x_base + h * stride_xh + w * stride_xw, mask=ok, other=0.0)
            acc += v.to(tl.float32)
    divisor = _avg_pool_divisor(
        p, q, H, W, step_h, step_w, pad_h, pad_w, divisor_override, KH, KW, COUNT_INCLUDE_PAD
    )
    y = acc / tl.where(in_range, divisor, 1.0)
    y_offs = n * stride_yn + c * stride_yc + p * stride_yh + q * stride_yw
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _avg_pool2d_bwd_kernel(
    # pointers
    grad_y_ptr,
    grad_x_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    numel_x,
    step_h,
    step_w,
    pad_h,
    pad_w,
    divisor_override,
    # strides
    stride_gyn,
    stride_gyc,
    stride_gyh,
    stride_gyw,
    stride_gxn,
    stride_gxc,
    stride_gxh,
    stride_gxw,
    # meta-parameters
    KH: tl.constexpr,
    KW: tl.constexpr,
    CANDIDATES_H: tl.constexpr,
    CANDIDATES_W: tl.constexpr,
    COUNT_INCLUDE_PAD: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum over windows (p, q) covering (h, w) of grad_y / divisor(p, q).

    grad_y: (N, C, P, Q); grad_x: (N, C, H, W). Window p covers h when
    0 <= h + pad_h - p*step_h < KH; at most CANDIDATES_H windows do.
    """
    offs = _flat_offsets(BLOCK, INDEX_64)
    in_range = offs < numel_x
    n, c, h, w = _unravel(offs, C, H, W, CHANNELS_LAST)
    gy_base = grad_y_ptr + n * stride_gyn + c * stride_gyc
    padded_h = h + pad_h
    padded_w = w + pad_w
    last_p = padded_h // step_h
    last_q = padded_w // step_w
    acc = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(CANDIDATES_H):
        p = last_p - i
        p_ok = in_range & (p >= 0) & (p < P) & (padded_h - p * step_h < KH)
        for j in tl.static_range(CANDIDATES_W):
            q = last_q - j
            ok = p_ok & (q >= 0) & (q < Q) & (padded_w - q * step_w < KW)
            g = tl.load(gy_base + p * stride_gyh + q * stride_gyw, mask=ok, other=0.0)
            divisor = _avg_pool_divisor(
                p,
                q,
                H,
                W,
                step_h,
                step_w,
                pad_h,
                pad_w,
                divisor_override,
                KH,
                KW,
                COUNT_INCLUDE_PAD,
            )
            acc += g.to(tl.float32) / tl.where(ok, divisor, 1.0)
    gx_offs = n * stride_gxn + c * stride_gxc + h * stride_gxh + w * stride_gxw
    tl.store(grad_x_ptr + gx_offs, acc.to(grad_x_ptr.dtype.element_ty), mask=in_range)


def avg_pool2d_fwd(
    x: Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    output_size: Pair,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """Average pooling of ``x`` (N, C, H, W) -> ``y`` (N, C, P, Q) in ``x``'s memory format."""
    n, c, h, w = x.shape
    p, q = output_size
    memory_format = memory_format_of(x)
    y = _empty((n, c, p, q), x, memory_format)
    if y.numel() == 0:
        return y
    _avg_pool2d_fwd_kernel[_grid(y.numel(), BLOCK_SIZE)](
        x,
        y,
        c,
        h,
        w,
        p,
        q,
        y.numel(),
        *stride,
        *padding,
        divisor_override or 0,
        *x.stride(),
        *y.stride(),
        KH=kernel_size[0],
        KW=kernel_size[1],
        COUNT_INCLUDE_PAD=count_include_pad,
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(x, y),
        BLOCK=BLOCK_SIZE,
        num_warps=NUM_WARPS,
    )
    return y


def avg_pool2d_bwd(
    grad_y: Tensor,
    input_shape: torch.Size,
    memory_format: torch.memory_format,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """Gradient of :func:`avg_pool2d_fwd`: ``grad_x`` (N, C, H, W) in ``memory_format``."""
    n, c, h, w = input_shape
    p, q = grad_y.shape[-2:]
    grad_x = _empty(input_shape, grad_y, memory_format)
    if grad_x.numel() == 0:
        return grad_x
    _avg_pool2d_bwd_kernel[_grid(grad_x.numel(), BLOCK_SIZE)](
        grad_y,
        grad_x,
        c,
        h,
        w,
        p,
        q,
        grad_x.numel(),
        *stride,
        *padding,
        divisor_override or 0,
        *grad_y.stride(),
        *grad_x.stride(),
        KH=kernel_size[0],
        KW=kernel_size[1],
        CANDIDATES_H=_candidate_count(kernel_size[0], stride[0]),
        CANDIDATES_W=_candidate_count(kernel_size[1], stride[1]),
        COUNT_INCLUDE_PAD=count_include_pad,
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(grad_y, grad_x),
        BLOCK=BLOCK_SIZE,
        num_warps=NUM_WARPS,
    )
    return grad_x


# --------------------------------------------------------------------------- adaptive average


@triton.jit
def _adaptive_avg_pool2d_fwd_kernel(
    # pointers
    x_ptr,
    y_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    numel_y,
    max_window_w,
    max_window_numel,
    # strides
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    # meta-parameters
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[n, c, p, q] = mean of x[n, c, h_start:h_end, w_start:w_end].

    x: (N, C, H, W); y: (N, C, P, Q); h_start = floor(p*H/P), h_end = ceil((p+1)*H/P), likewise
    for w. Each program reduces BLOCK_M outputs, BLOCK_K window elements at a time (window
    element k is row k // max_window_w, column k % max_window_w).
    """
    offs = _flat_offsets(BLOCK_M, INDEX_64)
    in_range = offs < numel_y
    n, c, p, q = _unravel(offs, C, P, Q, CHANNELS_LAST)
    h_start = (p * H) // P
    h_size = ((p + 1) * H + P - 1) // P - h_start
    w_start = (q * W) // Q
    w_size = ((q + 1) * W + Q - 1) // Q - w_start
    x_base = x_ptr + n * stride_xn + c * stride_xc + h_start * stride_xh + w_start * stride_xw
    acc = tl.zeros([BLOCK_M], tl.float32)
    for k_start in range(0, max_window_numel, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        r = k // max_window_w
        s = k % max_window_w
        ok = in_range[:, None] & (r[None, :] < h_size[:, None]) & (s[None, :] < w_size[:, None])
        ptrs = x_base[:, None] + r[None, :] * stride_xh + s[None, :] * stride_xw
        acc += tl.sum(tl.load(ptrs, mask=ok, other=0.0).to(tl.float32), axis=1)
    y = acc / (h_size * w_size).to(tl.float32)
    y_offs = n * stride_yn + c * stride_yc + p * stride_yh + q * stride_yw
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _adaptive_avg_pool2d_bwd_kernel(
    # pointers
    grad_y_ptr,
    grad_x_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    numel_x,
    # strides
    stride_gyn,
    stride_gyc,
    stride_gyh,
    stride_gyw,
    stride_gxn,
    stride_gxc,
    stride_gxh,
    stride_gxw,
    # meta-parameters
    CANDIDATES_H: tl.constexpr,
    CANDIDATES_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum over windows (p, q) covering (h, w) of grad_y / window size.

    grad_y: (N, C, P, Q); grad_x: (N, C, H, W). The windows covering h are
    floor(h*P/H) <= p < ceil((h+1)*P/H), at most CANDIDATES_H of them.
    """
    offs = _flat_offsets(BLOCK, INDEX_64)
    in_range = offs < numel_x
    n, c, h, w = _unravel(offs, C, H, W, CHANNELS_LAST)
    gy_base = grad_y_ptr + n * stride_gyn + c * stride_gyc
    first_p = (h * P) // H
    end_p = ((h + 1) * P + H - 1) // H
    first_q = (w * Q) // W
    end_q = ((w + 1) * Q + W - 1) // W
    acc = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(CANDIDATES_H):
        p = first_p + i
        p_ok = in_range & (p < end_p)
        h_size = ((p + 1) * H + P - 1) // P - (p * H) // P
        for j in tl.static_range(CANDIDATES_W):
            q = first_q + j
            ok = p_ok & (q < end_q)
            w_size = ((q + 1) * W + Q - 1) // Q - (q * W) // Q
            g = tl.load(gy_base + p * stride_gyh + q * stride_gyw, mask=ok, other=0.0)
            acc += g.to(tl.float32) / (h_size * w_size).to(tl.float32)
    gx_offs = n * stride_gxn + c * stride_gxc + h * stride_gxh + w * stride_gxw
    tl.store(grad_x_ptr + gx_offs, acc.to(grad_x_ptr.dtype.element_ty), mask=in_range)


def _adaptive_max_window(in_size: int, out_size: int) -> int:
    """Largest adaptive window ceil((i+1)*in/out) - floor(i*in/out) over the out windows."""
    return max(-(-(i + 1) * in_size // out_size) - i * in_size // out_size for i in range(out_size))


def adaptive_avg_pool2d_fwd(x: Tensor, output_size: Pair) -> Tensor:
    """Adaptive average pooling of ``x`` (N, C, H, W) -> ``y`` (N, C, P, Q), x's memory format."""
    n, c, h, w = x.shape
    p, q = output_size
    memory_format = memory_format_of(x)
    y = _empty((n, c, p, q), x, memory_format)
    if y.numel() == 0:
        return y
    window_h, window_w = _adaptive_max_window(h, p), _adaptive_max_window(w, q)
    block_k = min(triton.next_power_of_2(window_h * window_w), ADAPTIVE_MAX_BLOCK_K)
    block_m = ADAPTIVE_TILE // block_k
    _adaptive_avg_pool2d_fwd_kernel[_grid(y.numel(), block_m)](
        x,
        y,
        c,
        h,
        w,
        p,
        q,
        y.numel(),
        window_w,
        window_h * window_w,
        *x.stride(),
        *y.stride(),
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(x, y),
        BLOCK_M=block_m,
        BLOCK_K=block_k,
        num_warps=NUM_WARPS,
    )
    return y


def adaptive_avg_pool2d_bwd(
    grad_y: Tensor, input_shape: torch.Size, memory_format: torch.memory_format
) -> Tensor:
    """Gradient of :func:`adaptive_avg_pool2d_fwd`: ``grad_x`` (N, C, H, W) in ``memory_format``."""
    n, c, h, w = input_shape
    p, q = grad_y.shape[-2:]
    grad_x = _empty(input_shape, grad_y, memory_format)
    if grad_x.numel() == 0:
        return grad_x
    if p == 0 or q == 0:
        return grad_x.zero_()
    _adaptive_avg_pool2d_bwd_kernel[_grid(grad_x.numel(), BLOCK_SIZE)](
        grad_y,
        grad_x,
        c,
        h,
        w,
        p,
        q,
        grad_x.numel(),
        *grad_y.stride(),
        *grad_x.stride(),
        CANDIDATES_H=_adaptive_max_window(p, h),
        CANDIDATES_W=_adaptive_max_window(q, w),
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(grad_y, grad_x),
        BLOCK=BLOCK_SIZE,
        num_warps=NUM_WARPS,
    )
    return grad_x
