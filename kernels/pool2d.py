"""2D pooling as Triton kernels: max, average and adaptive average, forward and backward.

Every kernel but one writes a (BLOCK_R x BLOCK_I) tile of its output per program, whose
columns walk the tensor's contiguous axis: channels for channels_last tensors (rows are
pixels (n, h, w)), W for NCHW (rows are (n, c, h)). Rows are unravelled once each, so the
div/mod index math is per row, not per element. Along the columns the compiler sees stride 1,
and the launcher passes ``VEC``, the largest power of 2 (at most 16) dividing the column count
and all other strides, written into the index math so that the compiler knows every row
starts VEC-aligned: channels_last loads and stores are 16-byte vectors (one per thread per
window element) when C is a multiple of 8 (fp16, bf16) or 4 (fp32), and NCHW lanes walk W
(coalesced; stores are vectors too). The adaptive forward of NCHW tensors instead reduces
(outputs x window elements) tiles, whose lanes walk the window along W. All four strides of
every tensor are passed, so non-contiguous inputs work without a copy. Values accumulate in
fp32 and are cast on store. Index math runs in int64 (``INDEX_64``) when a tensor spans 2**31
elements or more.

The backward kernels are gathers: each input pixel loops over the few output windows that
cover it and sums their contribution, so overlapping windows (stride < kernel) need no
atomics and the result is deterministic.

Launchers take tensors whose arguments the functional API has already validated; they
allocate the outputs (in the input's memory format) and launch the kernels on 1-D grids.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.kernels import alloc
from fastconv.kernels.launch import cdiv
from fastconv.kernels.layout import element_span, memory_format_of
from fastconv.kernels.plans import Launch, PlanCache, planning_tensor, signature

__all__ = [
    "adaptive_avg_pool2d_bwd",
    "adaptive_avg_pool2d_fwd",
    "avg_pool2d_bwd",
    "avg_pool2d_fwd",
    "max_pool2d_bwd",
    "max_pool2d_fwd",
]

Pair = tuple[int, int]

NUM_WARPS = 4
# Tile of the tiled kernels: one 16-byte vector per thread for channels_last tensors, whose
# loads are vectors (1,024 fp16 elements); 4 elements per thread for NCHW, whose strided
# window loads are scalar (a larger tile costs registers and buys nothing).
TILE_BYTES = 16 * 32 * NUM_WARPS
TILE_NCHW = 4 * 32 * NUM_WARPS
# Widest tile along the contiguous axis (channels or W), in elements.
MAX_BLOCK_I = 128
# Adaptive forward (NCHW): a (BLOCK_M outputs x BLOCK_K window elements) tile of about this
# many loads.
ADAPTIVE_TILE = 1024
ADAPTIVE_MAX_BLOCK_K = 64


# --------------------------------------------------------------------------- helpers


@triton.jit
def _tile(
    C,
    H,
    W,
    num_rows,
    CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """Indices of this program's (BLOCK_R x BLOCK_I) tile of an (N, C, H, W) tensor.

    Columns walk the contiguous axis: c when ``CHANNELS_LAST`` (rows are the num_rows =
    N*H*W pixels (n, h, w)), else w (rows are the num_rows = N*C*H (n, c, h)). Programs walk
    the column tiles of a row tile first. Returns n, c, h, w, each (BLOCK_R, 1) or
    (1, BLOCK_I), and the (BLOCK_R, BLOCK_I) mask of the tile's elements inside the tensor.
    The column count (C or W) is a multiple of ``VEC`` (the launcher checked it): written
    ``// VEC * VEC`` so the compiler sees the mask constant over runs of VEC columns.
    """
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    inner = (C if CHANNELS_LAST else W) // VEC * VEC
    col_tiles = tl.cdiv(inner, BLOCK_I)
    rows = (pid // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % col_tiles) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < num_rows)[:, None] & (cols < inner)[None, :]
    if CHANNELS_LAST:
        w = rows % W
        rest = rows // W
        h = rest % H
        n = rest // H
        c = cols[None, :]
        w = w[:, None]
    else:
        h = rows % H
        rest = rows // H
        c = rest % C
        n = rest // C
        c = c[:, None]
        w = cols[None, :]
    return n[:, None], c, h[:, None], w, mask


@triton.jit
def _aligned_strides(
    stride_n, stride_c, stride_h, stride_w, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr
):
    """A tensor's strides, all but the tile columns' (c or w) written ``// VEC * VEC``.

    The launcher checked they are multiples of ``VEC``; this way the compiler sees every row
    of a tile start VEC-aligned, so it can use VEC-wide (up to 16-byte) loads and stores.
    """
    if CHANNELS_LAST:
        stride_w = stride_w // VEC * VEC
    else:
        stride_c = stride_c // VEC * VEC
    return stride_n // VEC * VEC, stride_c, stride_h // VEC * VEC, stride_w


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


def _strides(t: Tensor) -> tuple[int, ...]:
    """``t``'s strides, with 0 along its size-1 dims (whose index is always 0).

    Torch gives size-1 dims arbitrary strides (a (N, C, 1, 1) channels_last tensor has
    (C, 1, 1, 1)); 0 lets the compiler see those offsets as aligned, so loads stay vectors.
    """
    return tuple(0 if size == 1 else step for size, step in zip(t.shape, t.stride(), strict=True))


def _grid(numel: int, block: int) -> tuple[int]:
    return (cdiv(numel, block),)


def _tiling(t: Tensor, channels_last: bool, *others: Tensor) -> dict:
    """Grid, ``num_rows``, ``VEC`` and tile of the :func:`_tile` kernels writing ``t``.

    ``t`` is (N, C, H, W); ``others`` are the tensors the kernel reads. The tile is
    ``TILE_BYTES`` (channels_last) or ``TILE_NCHW`` elements, at most ``MAX_BLOCK_I`` wide
    along the contiguous axis; the 1-D grid stays below 2**31 programs for any tensor of
    fewer than 2**39 elements. ``VEC`` is the largest power of 2 (at most 16) dividing the
    column count and every stride but the columns' of ``t`` and ``others``.
    """
    n, c, h, w = t.shape
    inner = c if channels_last else w
    num_rows = t.numel() // inner
    block_i = min(triton.next_power_of_2(inner), MAX_BLOCK_I)
    tile = TILE_BYTES // t.element_size() if channels_last else TILE_NCHW
    block_r = max(tile // block_i, 1)
    grid = (cdiv(num_rows, block_r) * cdiv(inner, block_i),)
    column_dim = 1 if channels_last else 3
    divisor = math.gcd(
        inner,
        *(step for u in (t, *others) for d, step in enumerate(_strides(u)) if d != column_dim),
    )
    vec = min(divisor & -divisor, 16)
    return {"grid": grid, "num_rows": num_rows, "VEC": vec, "BLOCK_R": block_r, "BLOCK_I": block_i}


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
    num_rows,
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
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """y[n, c, p, q] = max over r < KH, s < KW of x[n, c, p*step_h - pad_h + r*dil_h, ...].

    x: (N, C, H, W); y and argmax: (N, C, P, Q) with the same strides, where
    P = (H + 2*pad_h - dil_h*(KH-1) - 1) / step_h + 1 (floor, or ceil in ceil_mode). Padding
    never wins. argmax = r*KW + s of the first maximum, or of the last NaN (NaN wins), as torch.
    Each program writes one (BLOCK_R x BLOCK_I) tile of y and argmax (see :func:`_tile`).
    """
    n, c, p, q, in_range = _tile(C, P, Q, num_rows, CHANNELS_LAST, INDEX_64, VEC, BLOCK_R, BLOCK_I)
    stride_xn, stride_xc, stride_xh, stride_xw = _aligned_strides(
        stride_xn, stride_xc, stride_xh, stride_xw, CHANNELS_LAST, VEC
    )
    stride_yn, stride_yc, stride_yh, stride_yw = _aligned_strides(
        stride_yn, stride_yc, stride_yh, stride_yw, CHANNELS_LAST, VEC
    )
    x_base = x_ptr + n * stride_xn + c * stride_xc
    h_start = p * step_h - pad_h
    w_start = q * step_w - pad_w
    best = tl.full([BLOCK_R, BLOCK_I], float("-inf"), tl.float32)
    best_idx = tl.full([BLOCK_R, BLOCK_I], -1, tl.int32)
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
    num_rows,
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
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum of grad_y[n, c, p, q] over windows (p, q) whose argmax is (h, w).

    grad_y, argmax: (N, C, P, Q); grad_x: (N, C, H, W). Window p covers h when
    h = p*step_h - pad_h + r*dil_h for some r < KH; at most CANDIDATES_H windows do.
    Each program writes one (BLOCK_R x BLOCK_I) tile of grad_x (see :func:`_tile`).
    """
    n, c, h, w, in_range = _tile(C, H, W, num_rows, CHANNELS_LAST, INDEX_64, VEC, BLOCK_R, BLOCK_I)
    stride_gyn, stride_gyc, stride_gyh, stride_gyw = _aligned_strides(
        stride_gyn, stride_gyc, stride_gyh, stride_gyw, CHANNELS_LAST, VEC
    )
    stride_an, stride_ac, stride_ah, stride_aw = _aligned_strides(
        stride_an, stride_ac, stride_ah, stride_aw, CHANNELS_LAST, VEC
    )
    stride_gxn, stride_gxc, stride_gxh, stride_gxw = _aligned_strides(
        stride_gxn, stride_gxc, stride_gxh, stride_gxw, CHANNELS_LAST, VEC
    )
    gy_base = grad_y_ptr + n * stride_gyn + c * stride_gyc
    a_base = argmax_ptr + n * stride_an + c * stride_ac
    padded_h = h + pad_h
    padded_w = w + pad_w
    last_p = padded_h // step_h
    last_q = padded_w // step_w
    acc = tl.zeros([BLOCK_R, BLOCK_I], tl.float32)
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
            # masked by ``ok`` (not by the argmax test) so channels_last loads stay vectors
            g = tl.load(gy_base + p * stride_gyh + q * stride_gyw, mask=ok, other=0.0)
            acc += tl.where(argmax.to(tl.int32) == r * KW + s, g.to(tl.float32), 0.0)
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


def _max_pool2d_fwd_plan(x, kernel_size, stride, padding, dilation, output_size, argmax):
    """(output memory format, argmax dtype, launch or None) of a max-pool forward signature."""
    n, c, h, w = x.shape
    memory_format = memory_format_of(x)
    y = planning_tensor((n, c, *output_size), x.dtype, memory_format)
    argmax_dtype = _argmax_dtype(kernel_size)
    if y.numel() == 0:
        return memory_format, argmax_dtype, None
    tiling = _tiling(y, memory_format == torch.channels_last, x)
    scalars = (
        c, h, w, *output_size, tiling["num_rows"], *stride, *padding, *dilation,
        *_strides(x), *_strides(y),
    )  # fmt: skip
    meta = dict(
        KH=kernel_size[0], KW=kernel_size[1], STORE_ARGMAX=argmax,
        CHANNELS_LAST=memory_format == torch.channels_last, INDEX_64=_needs_int64(x, y),
        VEC=tiling["VEC"], BLOCK_R=tiling["BLOCK_R"], BLOCK_I=tiling["BLOCK_I"],
        num_warps=NUM_WARPS,
    )  # fmt: skip
    launch = Launch(_max_pool2d_fwd_kernel, tiling["grid"], scalars, meta)
    return memory_format, argmax_dtype, launch


_MAX_FWD_PLANS = PlanCache()


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
    winner's position inside its window; it is None unless ``store_argmax``. Planned once per
    signature of the call (:mod:`fastconv.kernels.plans`).
    """
    geometry = (kernel_size, stride, padding, dilation, output_size, store_argmax)
    key = (signature(x), *geometry)
    plan = _MAX_FWD_PLANS.get(key) or _MAX_FWD_PLANS.put(key, _max_pool2d_fwd_plan(x, *geometry))
    memory_format, argmax_dtype, launch = plan
    shape = (*x.shape[:2], *output_size)
    y = _empty(shape, x, memory_format)
    argmax = _empty(shape, x, memory_format, argmax_dtype) if store_argmax else None
    if launch is not None:
        launch(x, y, y if argmax is None else argmax)
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
    tiling = _tiling(grad_x, memory_format == torch.channels_last, grad_y, argmax)
    _max_pool2d_bwd_kernel[tiling["grid"]](
        grad_y,
        argmax,
        grad_x,
        c,
        h,
        w,
        p,
        q,
        tiling["num_rows"],
        *stride,
        *padding,
        *dilation,
        *_strides(grad_y),
        *_strides(argmax),
        *_strides(grad_x),
        KH=kernel_size[0],
        KW=kernel_size[1],
        CANDIDATES_H=_candidate_count(dilation[0] * (kernel_size[0] - 1) + 1, stride[0]),
        CANDIDATES_W=_candidate_count(dilation[1] * (kernel_size[1] - 1) + 1, stride[1]),
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(grad_y, grad_x),
        VEC=tiling["VEC"],
        BLOCK_R=tiling["BLOCK_R"],
        BLOCK_I=tiling["BLOCK_I"],
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
    num_rows,
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
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """y[n, c, p, q] = sum of x over window (p, q) / divisor(p, q).

    x: (N, C, H, W); y: (N, C, P, Q), P = (H + 2*pad_h - KH) / step_h + 1 (floor, or ceil in
    ceil_mode). The divisor is ``divisor_override`` if non-zero, else the window's size
    clipped to the padded input (COUNT_INCLUDE_PAD) or to the input.
    Each program writes one (BLOCK_R x BLOCK_I) tile of y (see :func:`_tile`).
    """
    n, c, p, q, in_range = _tile(C, P, Q, num_rows, CHANNELS_LAST, INDEX_64, VEC, BLOCK_R, BLOCK_I)
    stride_xn, stride_xc, stride_xh, stride_xw = _aligned_strides(
        stride_xn, stride_xc, stride_xh, stride_xw, CHANNELS_LAST, VEC
    )
    stride_yn, stride_yc, stride_yh, stride_yw = _aligned_strides(
        stride_yn, stride_yc, stride_yh, stride_yw, CHANNELS_LAST, VEC
    )
    x_base = x_ptr + n * stride_xn + c * stride_xc
    h_start = p * step_h - pad_h
    w_start = q * step_w - pad_w
    acc = tl.zeros([BLOCK_R, BLOCK_I], tl.float32)
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
    num_rows,
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
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum over windows (p, q) covering (h, w) of grad_y / divisor(p, q).

    grad_y: (N, C, P, Q); grad_x: (N, C, H, W). Window p covers h when
    0 <= h + pad_h - p*step_h < KH; at most CANDIDATES_H windows do.
    Each program writes one (BLOCK_R x BLOCK_I) tile of grad_x (see :func:`_tile`).
    """
    n, c, h, w, in_range = _tile(C, H, W, num_rows, CHANNELS_LAST, INDEX_64, VEC, BLOCK_R, BLOCK_I)
    stride_gyn, stride_gyc, stride_gyh, stride_gyw = _aligned_strides(
        stride_gyn, stride_gyc, stride_gyh, stride_gyw, CHANNELS_LAST, VEC
    )
    stride_gxn, stride_gxc, stride_gxh, stride_gxw = _aligned_strides(
        stride_gxn, stride_gxc, stride_gxh, stride_gxw, CHANNELS_LAST, VEC
    )
    gy_base = grad_y_ptr + n * stride_gyn + c * stride_gyc
    padded_h = h + pad_h
    padded_w = w + pad_w
    last_p = padded_h // step_h
    last_q = padded_w // step_w
    acc = tl.zeros([BLOCK_R, BLOCK_I], tl.float32)
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


def _avg_pool2d_fwd_plan(x, kernel_size, stride, padding, output_size, count_include_pad,
                         divisor_override):  # fmt: skip
    """(output memory format, launch or None) of an average-pool forward signature."""
    n, c, h, w = x.shape
    memory_format = memory_format_of(x)
    y = planning_tensor((n, c, *output_size), x.dtype, memory_format)
    if y.numel() == 0:
        return memory_format, None
    tiling = _tiling(y, memory_format == torch.channels_last, x)
    scalars = (
        c, h, w, *output_size, tiling["num_rows"], *stride, *padding, divisor_override or 0,
        *_strides(x), *_strides(y),
    )  # fmt: skip
    meta = dict(
        KH=kernel_size[0], KW=kernel_size[1], COUNT_INCLUDE_PAD=count_include_pad,
        CHANNELS_LAST=memory_format == torch.channels_last, INDEX_64=_needs_int64(x, y),
        VEC=tiling["VEC"], BLOCK_R=tiling["BLOCK_R"], BLOCK_I=tiling["BLOCK_I"],
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return memory_format, Launch(_avg_pool2d_fwd_kernel, tiling["grid"], scalars, meta)


_AVG_FWD_PLANS = PlanCache()


def avg_pool2d_fwd(
    x: Tensor,
    kernel_size: Pair,
    stride: Pair,
    padding: Pair,
    output_size: Pair,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """Average pooling of ``x`` (N, C, H, W) -> ``y`` (N, C, P, Q) in ``x``'s memory format;
    planned once per signature of the call (:mod:`fastconv.kernels.plans`)."""
    geometry = (kernel_size, stride, padding, output_size, count_include_pad, divisor_override)
    key = (signature(x), *geometry)
    plan = _AVG_FWD_PLANS.get(key) or _AVG_FWD_PLANS.put(key, _avg_pool2d_fwd_plan(x, *geometry))
    memory_format, launch = plan
    y = _empty((*x.shape[:2], *output_size), x, memory_format)
    if launch is not None:
        launch(x, y)
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
    tiling = _tiling(grad_x, memory_format == torch.channels_last, grad_y)
    _avg_pool2d_bwd_kernel[tiling["grid"]](
        grad_y,
        grad_x,
        c,
        h,
        w,
        p,
        q,
        tiling["num_rows"],
        *stride,
        *padding,
        divisor_override or 0,
        *_strides(grad_y),
        *_strides(grad_x),
        KH=kernel_size[0],
        KW=kernel_size[1],
        CANDIDATES_H=_candidate_count(kernel_size[0], stride[0]),
        CANDIDATES_W=_candidate_count(kernel_size[1], stride[1]),
        COUNT_INCLUDE_PAD=count_include_pad,
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(grad_y, grad_x),
        VEC=tiling["VEC"],
        BLOCK_R=tiling["BLOCK_R"],
        BLOCK_I=tiling["BLOCK_I"],
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
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """NCHW y[n, c, p, q] = mean of x[n, c, h_start:h_end, w_start:w_end].

    x: (N, C, H, W); y: (N, C, P, Q); h_start = floor(p*H/P), h_end = ceil((p+1)*H/P), likewise
    for w. Each program reduces BLOCK_M outputs (y's flat NCHW order), BLOCK_K window elements
    at a time (window element k is row k // max_window_w, column k % max_window_w), so lanes
    walk the window rows along W.
    """
    offs = _flat_offsets(BLOCK_M, INDEX_64)
    in_range = offs < numel_y
    q = offs % Q
    rest = offs // Q
    p = rest % P
    rest = rest // P
    c = rest % C
    n = rest // C
    h_start = (p * H) // P
    h_size = ((p + 1) * H + P - 1) // P - h_start
    w_start = (q * W) // Q
    w_size = ((q + 1) * W + Q - 1) // Q - w_start
    x_base = x_ptr + n * stride_xn + c * stride_xc + h_start * stride_xh + w_start * stride_xw
    # A 2-D accumulator summed once after the loop: with `acc += tl.sum(tile, axis=1)` in the
    # loop, Triton 3.6 compiles the fp32 kernel with BLOCK_K = 4 to add two rows' elements
    # together (wrong outputs on an H200, 2026-11-27; the fp16 build is right).
    acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for k_start in range(0, max_window_numel, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        r = k // max_window_w
        s = k % max_window_w
        ok = in_range[:, None] & (r[None, :] < h_size[:, None]) & (s[None, :] < w_size[:, None])
        ptrs = x_base[:, None] + r[None, :] * stride_xh + s[None, :] * stride_xw
        acc += tl.load(ptrs, mask=ok, other=0.0).to(tl.float32)
    y = tl.sum(acc, axis=1) / (h_size * w_size).to(tl.float32)
    y_offs = n * stride_yn + c * stride_yc + p * stride_yh + q * stride_yw
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _adaptive_avg_pool2d_fwd_nhwc_kernel(
    # pointers
    x_ptr,
    y_ptr,
    # shapes
    C,
    H,
    W,
    P,
    Q,
    num_rows,
    max_window_h,
    max_window_w,
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
    INDEX_64: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """channels_last y[n, c, p, q] = mean of x[n, c, h_start:h_end, w_start:w_end].

    x: (N, C, H, W); y: (N, C, P, Q), windows as in :func:`_adaptive_avg_pool2d_fwd_kernel`.
    Each program writes a (BLOCK_R pixels x BLOCK_I channels) tile of y; every step of the
    (max_window_h x max_window_w) window loop adds a (pixels x channels) tile of x.
    """
    n, c, p, q, in_range = _tile(C, P, Q, num_rows, True, INDEX_64, VEC, BLOCK_R, BLOCK_I)
    stride_xn, stride_xc, stride_xh, stride_xw = _aligned_strides(
        stride_xn, stride_xc, stride_xh, stride_xw, True, VEC
    )
    stride_yn, stride_yc, stride_yh, stride_yw = _aligned_strides(
        stride_yn, stride_yc, stride_yh, stride_yw, True, VEC
    )
    h_start = (p * H) // P
    h_size = ((p + 1) * H + P - 1) // P - h_start
    w_start = (q * W) // Q
    w_size = ((q + 1) * W + Q - 1) // Q - w_start
    x_base = x_ptr + n * stride_xn + c * stride_xc + h_start * stride_xh + w_start * stride_xw
    acc = tl.zeros([BLOCK_R, BLOCK_I], tl.float32)
    for r in range(0, max_window_h):
        for s in range(0, max_window_w):
            ok = in_range & (r < h_size) & (s < w_size)
            v = tl.load(x_base + r * stride_xh + s * stride_xw, mask=ok, other=0.0)
            acc += v.to(tl.float32)
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
    num_rows,
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
    VEC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum over windows (p, q) covering (h, w) of grad_y / window size.

    grad_y: (N, C, P, Q); grad_x: (N, C, H, W). The windows covering h are
    floor(h*P/H) <= p < ceil((h+1)*P/H), at most CANDIDATES_H of them.
    Each program writes one (BLOCK_R x BLOCK_I) tile of grad_x (see :func:`_tile`).
    """
    n, c, h, w, in_range = _tile(C, H, W, num_rows, CHANNELS_LAST, INDEX_64, VEC, BLOCK_R, BLOCK_I)
    stride_gyn, stride_gyc, stride_gyh, stride_gyw = _aligned_strides(
        stride_gyn, stride_gyc, stride_gyh, stride_gyw, CHANNELS_LAST, VEC
    )
    stride_gxn, stride_gxc, stride_gxh, stride_gxw = _aligned_strides(
        stride_gxn, stride_gxc, stride_gxh, stride_gxw, CHANNELS_LAST, VEC
    )
    gy_base = grad_y_ptr + n * stride_gyn + c * stride_gyc
    first_p = (h * P) // H
    end_p = ((h + 1) * P + H - 1) // H
    first_q = (w * Q) // W
    end_q = ((w + 1) * Q + W - 1) // W
    acc = tl.zeros([BLOCK_R, BLOCK_I], tl.float32)
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


def _adaptive_avg_pool2d_fwd_plan(x: Tensor, output_size: Pair):
    """(output memory format, launch or None) of an adaptive average-pool forward signature."""
    n, c, h, w = x.shape
    p, q = output_size
    memory_format = memory_format_of(x)
    y = planning_tensor((n, c, p, q), x.dtype, memory_format)
    if y.numel() == 0:
        return memory_format, None
    window_h, window_w = _adaptive_max_window(h, p), _adaptive_max_window(w, q)
    if memory_format == torch.channels_last:
        tiling = _tiling(y, True, x)
        scalars = (
            c, h, w, p, q, tiling["num_rows"], window_h, window_w, *_strides(x), *_strides(y),
        )  # fmt: skip
        meta = dict(
            INDEX_64=_needs_int64(x, y), VEC=tiling["VEC"], BLOCK_R=tiling["BLOCK_R"],
            BLOCK_I=tiling["BLOCK_I"], num_warps=NUM_WARPS,
        )  # fmt: skip
        kernel = _adaptive_avg_pool2d_fwd_nhwc_kernel
        return memory_format, Launch(kernel, tiling["grid"], scalars, meta)
    block_k = min(triton.next_power_of_2(window_h * window_w), ADAPTIVE_MAX_BLOCK_K)
    block_m = ADAPTIVE_TILE // block_k
    scalars = (
        c, h, w, p, q, y.numel(), window_w, window_h * window_w, *_strides(x), *_strides(y),
    )  # fmt: skip
    meta = dict(INDEX_64=_needs_int64(x, y), BLOCK_M=block_m, BLOCK_K=block_k, num_warps=NUM_WARPS)
    grid = _grid(y.numel(), block_m)
    return memory_format, Launch(_adaptive_avg_pool2d_fwd_kernel, grid, scalars, meta)


_ADAPTIVE_FWD_PLANS = PlanCache()


def adaptive_avg_pool2d_fwd(x: Tensor, output_size: Pair) -> Tensor:
    """Adaptive average pooling of ``x`` (N, C, H, W) -> ``y`` (N, C, P, Q), x's memory format;
    planned once per signature of the call (:mod:`fastconv.kernels.plans`)."""
    key = (signature(x), output_size)
    plan = _ADAPTIVE_FWD_PLANS.get(key)
    if plan is None:
        plan = _ADAPTIVE_FWD_PLANS.put(key, _adaptive_avg_pool2d_fwd_plan(x, output_size))
    memory_format, launch = plan
    y = _empty((*x.shape[:2], *output_size), x, memory_format)
    if launch is not None:
        launch(x, y)
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
    tiling = _tiling(grad_x, memory_format == torch.channels_last, grad_y)
    _adaptive_avg_pool2d_bwd_kernel[tiling["grid"]](
        grad_y,
        grad_x,
        c,
        h,
        w,
        p,
        q,
        tiling["num_rows"],
        *_strides(grad_y),
        *_strides(grad_x),
        CANDIDATES_H=_adaptive_max_window(p, h),
        CANDIDATES_W=_adaptive_max_window(q, w),
        CHANNELS_LAST=memory_format == torch.channels_last,
        INDEX_64=_needs_int64(grad_y, grad_x),
        VEC=tiling["VEC"],
        BLOCK_R=tiling["BLOCK_R"],
        BLOCK_I=tiling["BLOCK_I"],
        num_warps=NUM_WARPS,
    )
    return grad_x
