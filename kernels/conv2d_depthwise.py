"""Depthwise conv2d (groups = C, K = m*C) as direct Triton kernels: forward, dgrad, wgrad.

A depthwise convolution does R*S multiply-adds per output element and reads one input
element per tap: it is memory-bound, so it gets no GEMM. Every kernel works on NHWC
(channels-contiguous) operands and tiles (pixels x channels): a program holds a
(BLOCK_P pixels x BLOCK_C channels) fp32 accumulator whose columns are contiguous channels,
so each load and store is one 16-byte vector per thread (8 fp16/bf16 or 4 fp32 channels)
when the channel count and the strides allow it. The (r, s) taps are unrolled
(``tl.static_range`` over the constexprs R, S): each tap is one masked vector load per
(pixel, channel vector) and one register FMA, with the tap's weights loaded once per
program as a channel vector from the weight transposed to (R*S, K) (a copy of K*R*S
elements per call). Output channel k reads input channel k // m (the channel multiplier
``MULT``, a constexpr: m = 1 is plain channel arithmetic).

* forward: ``y[n, p, q, k] = act(scale[k] * sum_rs x[n, p*sh - ph + r*dh, q*sw - pw + s*dw,
  k // m] * w[k, r, s] + bias[k] + residual[n, p, q, k])`` (:mod:`fastconv.kernels.epilogue`).
* dgrad: a gather, like pooling's backward: each input pixel (n, h, w) visits, per tap, the
  one output pixel that tap reaches (``h + ph - r*dh`` divisible by the stride, a constexpr)
  and sums ``grad_y * w`` over the taps and the m output channels of its channel: no
  atomics, deterministic.
* wgrad: a reduction over N*P*Q per (k, r, s). A program owns a channel block and a part
  of one image (a slice of output rows x a block of at most 16 columns), so its loop only
  moves down the rows; the taps are unrolled around that loop, each accumulating a
  (BLOCK_P, BLOCK_C) fp32 tile of ``x_tap * grad_y`` summed over the pixels once, after its
  loop (the part's grad_y is re-read from L1/L2 by every tap). The parts go to an fp32
  workspace (PARTS, R*S, K) summed afterwards (split-K without atomics: deterministic). The
  bias gradient is a second accumulator in the first tap's loop.

NCHW tensors are read through one channels-last copy (``layout.nhwc``) and NCHW results
are written channels-last and copied back, as in :mod:`fastconv.kernels.conv2d`. Batch
offsets are always int64; when a pixel count or an element span can pass 2**31
(:func:`needs_int64`) every index is int64 (``INDEX_64``). Grids are one axis, checked.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import alloc
from fastconv.kernels.epilogue import IDENTITY, Epilogue, fused_epilogue
from fastconv.kernels.launch import cdiv, checked_grid, launch, needs_int64
from fastconv.kernels.layout import nhwc, nhwc_output, nhwc_strides

__all__ = [
    "depthwise_bwd_input",
    "depthwise_bwd_weight",
    "depthwise_configs",
    "depthwise_fwd",
    "depthwise_partition",
    "is_depthwise",
]

Pair = tuple[int, int]

# --------------------------------------------------------------------------- configs

# Forward and dgrad: (BLOCK_P pixels, BLOCK_C channels, warps) per dtype kind. fp16/bf16:
# mostly 4,096 elements per program, 32 per thread (4 pixels x one 16-byte vector of 8
# channels), so each tap's per-pixel index and mask math and its weight vector serve 32
# FMAs; 32x64 (16 per thread) for layers too small to fill the GPU. fp32: 2,048 elements
# (4 pixels x one vector of 4 channels): 4,096 spilled (64x64: 88 bytes; 32x128: 3 KB).
DIRECT_TILES = {
    "fp16": [(64, 64, 4), (128, 32, 4), (32, 64, 4)],
    "fp32": [(32, 64, 4), (64, 32, 4), (128, 16, 4)],
}
# wgrad: (BLOCK_P pixels, BLOCK_C channels, warps), a (pixels x channels) tile per step as in
# the forward.
WGRAD_TILES = DIRECT_TILES
# Under the interpreter an autotuner would time configs with CUDA events: one small config.
_INTERPRETER = (16, 16, 1)
# Largest channel multiplier K / C routed here (is_depthwise).
MAX_MULTIPLIER = 4
# wgrad: programs aimed for, workspace cap (fp32 elements).
WGRAD_TARGET_PROGRAMS = 2048
WGRAD_MAX_WORKSPACE = 1 << 26
_NOMINAL_BLOCK_C = 64  # the channel block the split count assumes (whatever the config)


def depthwise_configs(
    op: str = "direct", kind: str = "fp16", interpreter: bool = TRITON_INTERPRETER
) -> list[triton.Config]:
    """Autotune configs (BLOCK_P, BLOCK_C) of ``op`` "direct" (forward and dgrad) or "wgrad"
    for dtype ``kind`` "fp16" (fp16, bf16) or "fp32". ``interpreter=False``
    gives the GPU list even under the interpreter (tests run every config)."""
    if interpreter:
        tiles = [_INTERPRETER]
    else:
        tiles = (DIRECT_TILES if op == "direct" else WGRAD_TILES)[kind]
    return [
        triton.Config({"BLOCK_P": a, "BLOCK_C": b}, num_warps=warps, num_stages=1)
        for a, b, warps in tiles
    ]


def _kind(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "fp16"


def _prune(configs, named_args: dict, **kwargs):
    """Drop channel tiles much wider than the channels (their lanes would be padding)."""
    channels = named_args["C_TILED"]
    keep = [c for c in configs if c.kwargs["BLOCK_C"] <= max(16, triton.next_power_of_2(channels))]
    return keep or configs


def is_depthwise(in_channels: int, weight_shape, groups: int) -> bool:
    """Whether a conv should take these kernels: groups == C_in > 1 and a weight
    (m*C_in, 1, R, S) with a channel multiplier m of at most MAX_MULTIPLIER (the input
    gradient unrolls m * R * S taps). Other grouped convs take the implicit GEMM."""
    k, c_per_group = weight_shape[0], weight_shape[1]
    return (
        groups == in_channels > 1
        and c_per_group == 1
        and k % in_channels == 0
        and k // in_channels <= MAX_MULTIPLIER
    )


# --------------------------------------------------------------------------- helpers


def _vec(*values: int) -> int:
    """The largest power of 2 (at most 16) dividing every value (0 divides by anything)."""
    g = math.gcd(*values)
    return min(g & -g, 16) if g else 16


def _taps_by_channel(weight: Tensor) -> Tensor:
    """weight (K, 1, R, S) as a contiguous fp32 (R*S, K): one tap's weights are a channel
    vector, already fp32 (exact), so the unrolled taps spend no conversion on them."""
    k, _, r, s = weight.shape
    return weight.reshape(k, r * s).t().to(torch.float32).contiguous()


@triton.jit
def _aligned(stride, VEC: tl.constexpr):
    """``stride`` written so the compiler sees it a multiple of VEC (the launcher checked)."""
    return stride // VEC * VEC


# --------------------------------------------------------------------------- forward


@triton.jit
def _depthwise_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    scale_ptr,
    residual_ptr,
    preact_ptr,
    negative_slope,
    N,
    H,
    W,
    P,
    Q,
    K,
    C_TILED,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    stride_xn,
    stride_xh,
    stride_xw,
    stride_yn,
    stride_yh,
    stride_yw,
    R: tl.constexpr,
    S: tl.constexpr,
    MULT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    ACTIVATION: tl.constexpr,
    INDEX_64: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y (N, P, Q, K) = act(sum over taps of x[tap pixel, k // MULT] * w[tap, k] * scale
    + bias + residual), the epilogue of :func:`fastconv.kernels.epilogue.fused_epilogue`
    (residual and pre-activation share y's strides).

    x (N, H, W, K/MULT) and y NHWC with unit channel stride; w (R*S, K) contiguous; C_TILED
    = K, the tiled channels. A program computes (BLOCK_P output pixels (n, p, q) flattened x
    BLOCK_C output channels); grid: cdiv(N*P*Q, BLOCK_P) * cdiv(K, BLOCK_C), channel blocks
    fastest (they read the same pixels). K and every stride are multiples of VEC.
    """
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(K, BLOCK_C)
    pid_c = pid % c_blocks
    pid_p = pid // c_blocks
    if INDEX_64:
        pid_p = pid_p.to(tl.int64)
    rows = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        k = k.to(tl.int64)
    q = rows % Q
    p = (rows // Q) % P
    n = (rows // Q // P).to(tl.int64)
    mask_p = n < N  # rows < N*P*Q without forming the product
    k_count = _aligned(K, VEC)
    mask_k = k < k_count
    x_c = k if MULT == 1 else k // MULT
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w
    x_rows = x_ptr + n * _aligned(stride_xn, VEC)
    sxh = _aligned(stride_xh, VEC)
    sxw = _aligned(stride_xw, VEC)

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS and not HAS_SCALE:  # the accumulator starts at the bias
        bias = tl.load(bias_ptr + k, mask=mask_k, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    for r in tl.static_range(R):
        h = h0 + r * dil_h
        ok_h = mask_p & (h >= 0) & (h < H)
        for s in tl.static_range(S):
            w = w0 + s * dil_w
            ok = ok_h & (w >= 0) & (w < W)
            x_tap = x_rows + h * sxh + w * sxw
            xv = tl.load(
                x_tap[:, None] + x_c[None, :], mask=ok[:, None] & mask_k[None, :], other=0.0
            )
            wv = tl.load(w_ptr + (r * S + s) * k_count + k, mask=mask_k, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]

    y_rows = (
        n * _aligned(stride_yn, VEC) + p * _aligned(stride_yh, VEC) + q * _aligned(stride_yw, VEC)
    )
    y_offs = y_rows[:, None] + k[None, :]
    mask = mask_p[:, None] & mask_k[None, :]
    acc = fused_epilogue(
        acc, k[None, :], mask_k[None, :], y_offs, mask,
        scale_ptr, bias_ptr, residual_ptr, preact_ptr, negative_slope,
        HAS_SCALE, HAS_BIAS and HAS_SCALE, HAS_RESIDUAL, SAVE_PREACT, ACTIVATION,
    )  # fmt: skip
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- dgrad


@triton.jit
def _depthwise_dgrad_kernel(
    gy_ptr,
    w_ptr,
    gx_ptr,
    N,
    H,
    W,
    P,
    Q,
    K,
    C_TILED,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    stride_gyn,
    stride_gyp,
    stride_gyq,
    stride_gxn,
    stride_gxh,
    stride_gxw,
    R: tl.constexpr,
    S: tl.constexpr,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    MULT: tl.constexpr,
    INDEX_64: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad_x (N, H, W, C) = sum over taps (r, s) and j < MULT of grad_y[n, p, q, c*MULT + j]
    * w[tap, c*MULT + j], where p*STRIDE_H - pad_h + r*dil_h = h (and likewise q, w).

    grad_y (N, P, Q, K) and grad_x NHWC with unit channel stride; w (R*S, K) contiguous;
    C_TILED = C = K / MULT. A program computes (BLOCK_P input pixels x BLOCK_C channels);
    tap r reaches output row p = (h + pad_h - r*dil_h) / STRIDE_H where that divides and
    0 <= p < P (a per-row test: the strides are constexprs, so no runtime division).
    """
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C_TILED, BLOCK_C)
    pid_c = pid % c_blocks
    pid_p = pid // c_blocks
    if INDEX_64:
        pid_p = pid_p.to(tl.int64)
    rows = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        c = c.to(tl.int64)
    w_in = rows % W
    h_in = (rows // W) % H
    n = (rows // W // H).to(tl.int64)
    mask_p = n < N
    c_count = _aligned(C_TILED, VEC)
    k_count = _aligned(K, VEC)
    mask_c = c < c_count
    gy_rows = gy_ptr + n * _aligned(stride_gyn, VEC)
    sgp = _aligned(stride_gyp, VEC)
    sgq = _aligned(stride_gyq, VEC)
    h_pad = h_in + pad_h
    w_pad = w_in + pad_w

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(R):
        p_num = h_pad - r * dil_h
        p = p_num // STRIDE_H
        ok_h = mask_p & (p_num >= 0) & (p * STRIDE_H == p_num) & (p < P)
        for s in tl.static_range(S):
            q_num = w_pad - s * dil_w
            q = q_num // STRIDE_W
            ok = ok_h & (q_num >= 0) & (q * STRIDE_W == q_num) & (q < Q)
            g_tap = gy_rows + p * sgp + q * sgq
            for j in tl.static_range(MULT):
                kk = c if MULT == 1 else c * MULT + j
                g = tl.load(
                    g_tap[:, None] + kk[None, :], mask=ok[:, None] & mask_c[None, :], other=0.0
                )
                wv = tl.load(w_ptr + (r * S + s) * k_count + kk, mask=mask_c, other=0.0)
                acc += g.to(tl.float32) * wv.to(tl.float32)[None, :]

    gx_rows = (
        gx_ptr
        + n * _aligned(stride_gxn, VEC)
        + h_in * _aligned(stride_gxh, VEC)
        + w_in * _aligned(stride_gxw, VEC)
    )
    tl.store(
        gx_rows[:, None] + c[None, :],
        acc.to(gx_ptr.dtype.element_ty),
        mask=mask_p[:, None] & mask_c[None, :],
    )


# --------------------------------------------------------------------------- wgrad


@triton.jit
def _depthwise_wgrad_kernel(
    gy_ptr,
    x_ptr,
    dw_ptr,
    db_ptr,
    H,
    W,
    P,
    Q,
    K,
    C_TILED,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    rows_per_slice,
    slices,
    q_blocks,
    stride_gyn,
    stride_gyp,
    stride_gyq,
    stride_xn,
    stride_xh,
    stride_xw,
    R: tl.constexpr,
    S: tl.constexpr,
    MULT: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    INDEX_64: tl.constexpr,
    VEC: tl.constexpr,
    Q_BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial grad_w (PARTS, R*S, K) and grad_b (PARTS, K) in fp32, one part per program.

    grad_w[r*S + s, k] = sum over (n, p, q) of g[n, p, q, k] * x[n, p*stride_h - pad_h +
    r*dil_h, q*stride_w - pad_w + s*dil_w, k // MULT] (zero outside the image), grad_b[k] =
    sum of g[., k]. g = grad_y (N, P, Q, K) and x (N, H, W, K/MULT) NHWC, unit channel
    stride; C_TILED = K. A part is (image n, slice of rows_per_slice output rows, block of
    Q_BLOCK output columns); grid: cdiv(K, BLOCK_C) * N * slices * q_blocks programs,
    channel blocks fastest. A step covers BLOCK_P / Q_BLOCK output rows of the block's
    columns, so the image, the columns and their w masks are fixed per program and a step
    only moves down the rows: no division and no 64-bit index math in the loop. The taps
    are unrolled around the row loop: each accumulates a (BLOCK_P, BLOCK_C) fp32 tile summed
    over the pixels once, after its loop (the part's g is re-read from L1/L2 by every tap);
    the bias gradient is a second accumulator in the first tap's loop.
    """
    ROWS: tl.constexpr = BLOCK_P // Q_BLOCK  # output rows a step
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(K, BLOCK_C)
    pid_c = pid % c_blocks
    part = pid // c_blocks
    lane = tl.arange(0, BLOCK_P)
    k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        part = part.to(tl.int64)
        lane = lane.to(tl.int64)
        k = k.to(tl.int64)
    q_block = part % q_blocks
    p_start = (part // q_blocks) % slices * rows_per_slice
    n = (part // q_blocks // slices).to(tl.int64)
    p_end = tl.minimum(p_start + rows_per_slice, P)
    row = lane // Q_BLOCK  # of the step
    q = q_block * Q_BLOCK + lane % Q_BLOCK
    q_ok = q < Q
    k_count = _aligned(K, VEC)
    mask_k = k < k_count
    x_c = k if MULT == 1 else k // MULT
    gy_img = gy_ptr + n * _aligned(stride_gyn, VEC)
    x_img = x_ptr + n * _aligned(stride_xn, VEC)
    sgp = _aligned(stride_gyp, VEC)
    sxh = _aligned(stride_xh, VEC)
    g_cols = q * _aligned(stride_gyq, VEC)

    if BIAS_GRAD:
        acc_b = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in tl.static_range(R * S):
        h_tap = (tap // S) * dil_h - pad_h
        w = q * stride_w + ((tap % S) * dil_w - pad_w)
        w_ok = q_ok & (w >= 0) & (w < W)
        x_cols = w * _aligned(stride_xw, VEC)
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for p0 in range(p_start, p_end, ROWS):
            p = p0 + row
            p_ok = p < p_end
            g = tl.load(
                gy_img + (p * sgp + g_cols)[:, None] + k[None, :],
                mask=(p_ok & q_ok)[:, None] & mask_k[None, :],
                other=0.0,
            )
            g = g.to(tl.float32)
            h = p * stride_h + h_tap
            ok = p_ok & w_ok & (h >= 0) & (h < H)
            xv = tl.load(
                x_img + (h * sxh + x_cols)[:, None] + x_c[None, :],
                mask=ok[:, None] & mask_k[None, :],
                other=0.0,
            )
            acc += xv.to(tl.float32) * g
            if BIAS_GRAD:  # noqa: SIM102 (constexpr tests: no bias code in the other taps)
                if tap == 0:
                    acc_b += g
        dw_offs = (part * (R * S) + tap) * k_count + k
        tl.store(dw_ptr + dw_offs, tl.sum(acc, axis=0), mask=mask_k)
    if BIAS_GRAD:
        tl.store(db_ptr + part * k_count + k, tl.sum(acc_b, axis=0), mask=mask_k)


# --------------------------------------------------------------------------- autotuners

_DIRECT_KEY = ["N", "H", "W", "P", "Q", "K", "C_TILED", "R", "S", "MULT"]
_WGRAD_KEY = ["P", "Q", "K", "R", "S", "MULT", "rows_per_slice", "q_blocks"]
_PRUNE = {"early_config_prune": _prune}
# One autotuner per kernel and dtype kind (the autotuner adds the dtypes to the key).
_TUNED_FWD = {
    kind: triton.autotune(depthwise_configs("direct", kind), _DIRECT_KEY, prune_configs_by=_PRUNE)(
        _depthwise_fwd_kernel
    )
    for kind in DIRECT_TILES
}
_TUNED_DGRAD = {
    kind: triton.autotune(depthwise_configs("direct", kind), _DIRECT_KEY, prune_configs_by=_PRUNE)(
        _depthwise_dgrad_kernel
    )
    for kind in DIRECT_TILES
}
_TUNED_WGRAD = {
    kind: triton.autotune(depthwise_configs("wgrad", kind), _WGRAD_KEY, prune_configs_by=_PRUNE)(
        _depthwise_wgrad_kernel
    )
    for kind in WGRAD_TILES
}


# --------------------------------------------------------------------------- launchers


def depthwise_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    output_size: Pair,
    epilogue: Epilogue = IDENTITY,
    config: triton.Config | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``act(conv2d(x, weight, groups=C) * scale + bias + residual)``: x (N, C, H, W), weight
    (K, 1, R, S) with K = m*C (output channel k reads input channel k // m), bias (K,) or
    None -> (N, K, P, Q); ``epilogue`` as in ``conv2d.conv2d_fwd`` ((y, z) with save_preact).

    ``padding`` is the top/left padding; ``output_size`` (P, Q) implies the bottom/right
    one. y has x's dtype and memory format; the kernel reads x channels-last (a copy when it
    is not) and writes an NCHW result through a channels-last buffer copied back.
    ``config`` runs that autotune config instead of the autotuner's choice.
    """
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    if weight.shape[1] != 1 or k % c:
        raise ValueError(
            f"depthwise_fwd needs a weight (m*C, 1, R, S) for C = {c} input channels, got "
            f"{tuple(weight.shape)}"
        )
    p, q = output_size
    y, y_nhwc = nhwc_output((n, k, p, q), x)
    if y.numel() == 0:
        return (y, y_nhwc) if epilogue.save_preact else y
    x_nhwc = nhwc(x)
    w_taps = _taps_by_channel(weight)
    vec = _vec(k, c, *nhwc_strides(x_nhwc), *nhwc_strides(y_nhwc))

    def grid(meta):
        tiles = cdiv(n * p * q, meta["BLOCK_P"]) * cdiv(k, meta["BLOCK_C"])
        return checked_grid((tiles,), "depthwise conv2d forward")

    scale, residual, preact = epilogue.operands(y_nhwc)
    args = (
        x_nhwc, w_taps, bias.contiguous() if bias is not None else w_taps, y_nhwc,
        scale, residual, y_nhwc if preact is None else preact, epilogue.negative_slope,
        n, h, w, p, q, k, k, *stride, *padding, *dilation,
        *nhwc_strides(x_nhwc), *nhwc_strides(y_nhwc),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, MULT=k // c, HAS_BIAS=bias is not None, **epilogue.meta(),
        INDEX_64=needs_int64(n * p * q, x_nhwc, y_nhwc), VEC=vec,
    )  # fmt: skip
    launch(_TUNED_FWD[_kind(x.dtype)], _depthwise_fwd_kernel, config, grid, args, meta)
    y = y if y is y_nhwc else y.copy_(y_nhwc)
    return (y, preact) if epilogue.save_preact else y


def depthwise_bwd_input(
    grad_y: Tensor,
    weight: Tensor,
    input_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    config: triton.Config | None = None,
) -> Tensor:
    """grad_x (N, C, H, W) of the depthwise conv from grad_y (N, K, P, Q) and weight
    (K, 1, R, S), K = m*C; ``grad_y`` has a fused ReLU's mask already applied. grad_x takes
    grad_y's memory format (channels-last buffer copied back for NCHW). A gather: every
    element is written once, no atomics."""
    n, c, h, w = input_shape
    k, _, r, s = weight.shape
    p, q = grad_y.shape[2:]
    grad_x, grad_x_nhwc = nhwc_output((n, c, h, w), grad_y)
    if grad_x.numel() == 0:
        return grad_x
    if grad_y.numel() == 0:
        return grad_x.zero_()
    gy = nhwc(grad_y)
    w_taps = _taps_by_channel(weight)
    vec = _vec(k, c, *nhwc_strides(gy), *nhwc_strides(grad_x_nhwc))

    def grid(meta):
        tiles = cdiv(n * h * w, meta["BLOCK_P"]) * cdiv(c, meta["BLOCK_C"])
        return checked_grid((tiles,), "depthwise conv2d input gradient")

    args = (
        gy, w_taps, grad_x_nhwc, n, h, w, p, q, k, c, *padding, *dilation,
        *nhwc_strides(gy), *nhwc_strides(grad_x_nhwc),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, STRIDE_H=stride[0], STRIDE_W=stride[1], MULT=k // c,
        INDEX_64=needs_int64(n * h * w, gy, grad_x_nhwc), VEC=vec,
    )  # fmt: skip
    launch(_TUNED_DGRAD[_kind(grad_y.dtype)], _depthwise_dgrad_kernel, config, grid, args, meta)
    return grad_x if grad_x is grad_x_nhwc else grad_x.copy_(grad_x_nhwc)


def depthwise_partition(
    n: int, p: int, q: int, k: int, taps: int, split: int | None = None
) -> tuple[int, int, int, int]:
    """(Q_BLOCK, q_blocks, rows_per_slice, slices) of wgrad's parts: every image's P output
    rows cut into ``slices`` slices of rows_per_slice rows (the last one shorter), its Q
    columns into q_blocks blocks of Q_BLOCK (a power of 2, at most 16, so that every config's
    BLOCK_P holds whole rows of a block).

    ``split`` asks for that many slices per image (tests take the one-slice and many-slice
    paths); None aims at about WGRAD_TARGET_PROGRAMS programs (counting 64-channel blocks)
    and an fp32 workspace of at most WGRAD_MAX_WORKSPACE elements. No slice is empty.
    """
    q_block = min(triton.next_power_of_2(q), 16)
    q_blocks = cdiv(q, q_block)
    images = n * q_blocks
    if split is None:
        per_slice = cdiv(k, _NOMINAL_BLOCK_C) * images
        split = min(
            max(1, WGRAD_TARGET_PROGRAMS // per_slice),
            max(1, WGRAD_MAX_WORKSPACE // max(1, images * k * (taps + 1))),
        )
    elif split < 1:
        raise ValueError(f"split must be at least 1, got split={split}")
    rows_per_slice = cdiv(p, min(split, p))
    return q_block, q_blocks, rows_per_slice, cdiv(p, rows_per_slice)


def depthwise_bwd_weight(
    grad_y: Tensor,
    x: Tensor,
    weight_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    need_bias_grad: bool,
    config: triton.Config | None = None,
    split: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(grad_w (K, 1, R, S), grad_b (K,) or None) of the depthwise conv from grad_y
    (N, K, P, Q) (ReLU mask applied) and x (N, C, H, W), K = m*C.

    Deterministic: per-program partial sums in an fp32 workspace (PARTS, R*S, K), summed
    afterwards and cast to x's dtype; grad_w is channels-last, like every convolution's
    weight gradient (its memory is the contiguous one: C is 1). ``split`` overrides the number
    of row slices per image (see :func:`depthwise_partition`), ``config`` the autotuner.
    """
    n, c, h, w = x.shape
    k, _, r, s = weight_shape
    p, q = grad_y.shape[2:]
    rows = n * p * q
    taps = r * s
    if rows == 0 or k * taps == 0:
        grad_w = alloc.zeros((k, r, s, 1), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
        grad_b = alloc.zeros((k,), dtype=x.dtype, device=x.device) if need_bias_grad else None
        return grad_w, grad_b
    gy, x_nhwc = nhwc(grad_y), nhwc(x)
    q_block, q_blocks, rows_per_slice, slices = depthwise_partition(n, p, q, k, taps, split)
    parts = n * slices * q_blocks
    # Every element of the workspaces is written by exactly one program: no zero-fill.
    parts_w = alloc.empty((parts, taps, k), dtype=torch.float32, device=x.device)
    parts_b = (
        alloc.empty((parts, k), dtype=torch.float32, device=x.device) if need_bias_grad else parts_w
    )
    vec = _vec(k, c, *nhwc_strides(gy), *nhwc_strides(x_nhwc))

    def grid(meta):
        return checked_grid((cdiv(k, meta["BLOCK_C"]) * parts,), "depthwise conv2d weight gradient")

    args = (
        gy, x_nhwc, parts_w, parts_b, h, w, p, q, k, k, *stride, *padding, *dilation,
        rows_per_slice, slices, q_blocks, *nhwc_strides(gy), *nhwc_strides(x_nhwc),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, MULT=k // c, BIAS_GRAD=need_bias_grad,
        INDEX_64=needs_int64(rows, gy, x_nhwc, parts_w), VEC=vec, Q_BLOCK=q_block,
    )  # fmt: skip
    launch(_TUNED_WGRAD[_kind(x.dtype)], _depthwise_wgrad_kernel, config, grid, args, meta)
    grad_w = alloc.empty((k, 1, r, s), dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)  # fmt: skip
    grad_w.view(k, r * s).copy_(parts_w.sum(0).t())
    grad_b = parts_b.sum(0).to(x.dtype) if need_bias_grad else None
    return grad_w, grad_b
