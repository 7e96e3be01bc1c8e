"""Forward conv2d + bias + ReLU for few input channels (C <= 8): the stem of a CNN.

The general forward (:mod:`fastconv.kernels.conv2d`) reduces over taps (r, s) and pads C to a
whole BLOCK_K chunk per tap: for a 3-channel image most of its tensor-core work multiplies
zeros (a 7x7 stem reduces over 49 x 16 = 784 columns for 147 real ones), and its 2-byte
gathers are synchronous loads. This kernel folds (r, s, c) into ONE reduction dimension of
length R*S*CP, padded once to a multiple of BLOCK_K (7x7x3 -> 7x7x4 = 196 -> 224).

The launcher makes a zero-padded NHWC copy of x, ``x_pad`` (N, HP, WP, CP): the top/left
padding becomes real zero rows and columns, the channels are padded to CP = 4 (or 8 for
C > 4), so one tap of one pixel is CP consecutive, CP-aligned elements (8 bytes in
fp16/bf16 at CP = 4): the loads are asynchronous copies (cp.async, ``LDGSTS``) instead of
synchronous 2-byte gathers, and no tap needs a bounds test. The weight is reshaped to
``w_pad`` (K_PAD, RSC_PAD), zero in the padded channels, columns and output channels, once
per version of the weight (:class:`fastconv.kernels.plans.WeightCache`).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import alloc
from fastconv.kernels.epilogue import IDENTITY, Epilogue, fused_epilogue
from fastconv.kernels.launch import (
    INTERPRETER_CONFIGS,
    cdiv,
    checked_grid,
    dot_kind,
    input_precision,
    launch,
    needs_int64,
    tile_config,
)
from fastconv.kernels.layout import memory_format_of
from fastconv.kernels.plans import WeightCache

__all__ = [
    "STEM_MAX_CHANNELS",
    "conv2d_stem_fwd",
    "stem_channels",
    "stem_configs",
    "uses_stem_path",
]

Pair = tuple[int, int]

# The stem path serves inputs with at most this many channels.
STEM_MAX_CHANNELS = 8

# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): output pixels, output channels, reduction
# columns (r, s, c). At most 4 warps (launch.MAX_NUM_WARPS). BLOCK_N 64 covers the usual
# stem widths (K = 32, 64) in one tile, so each pixel's window is gathered once.
STEM_TILES = [
    (128, 64, 32, 3, 4),
    (64, 64, 32, 4, 4),
    (128, 64, 16, 3, 4),  # 4 stages would peel a 3-step 3x3 stem's loop away entirely
]
# IEEE fp32 dots run on FMA units: BLOCK_K 16 (as in conv2d.py); 128x64 takes 254 registers
# (no spill, 2 blocks/SM), 64x64 128.
STEM_TILES_IEEE = [
    (128, 64, 16, 3, 4),
    (64, 64, 16, 4, 4),
]
# The weight is padded once for every config: K to a multiple of the largest BLOCK_N, the
# reduction to a multiple of the largest BLOCK_K.
_K_ALIGN = max(t[1] for t in STEM_TILES + STEM_TILES_IEEE)
_RSC_ALIGN = max(t[2] for t in STEM_TILES + STEM_TILES_IEEE)


def uses_stem_path(c: int) -> bool:
    """Whether ``conv2d_fwd`` should run :func:`conv2d_stem_fwd` for ``c`` input channels."""
    return c <= STEM_MAX_CHANNELS


def stem_channels(c: int) -> int:
    """CP, the padded channel count of ``x_pad``: 4 for C <= 4, else 8."""
    return 4 if c <= 4 else 8


def stem_configs(kind: str = "fp16", interpreter: bool = TRITON_INTERPRETER) -> list[triton.Config]:
    """Stem configs for a dot ``kind``: "fp16" (fp16 and bf16), "tf32" (the same list) or
    "ieee" (fp32 with tf32 off). ``interpreter=False`` gives the GPU list even under the
    interpreter."""
    if interpreter:
        return INTERPRETER_CONFIGS
    return [tile_config(*tile) for tile in (STEM_TILES_IEEE if kind == "ieee" else STEM_TILES)]


@triton.jit
def _conv2d_stem_fwd_kernel(
    # pointers
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    scale_ptr,
    residual_ptr,
    preact_ptr,
    negative_slope,
    # shapes
    N,
    K,
    P,
    Q,
    HP,
    WP,
    stride_h,
    stride_w,
    dil_h,
    dil_w,
    # strides of y
    stride_yn,
    stride_yk,
    stride_yp,
    stride_yq,
    # meta-parameters
    R: tl.constexpr,
    S: tl.constexpr,
    CP: tl.constexpr,
    RSC_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    ACTIVATION: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """y (N, K, P, Q) = act(conv2d(x, w) * scale + b + residual), from the padded copies
    of x and w, with :func:`fastconv.kernels.epilogue.fused_epilogue` (residual and
    pre-activation share y's strides).

    x_pad (N, HP, WP, CP) contiguous: x in NHWC, already padded (zero rows/columns for the
    top/left padding, zero channels c >= C), so output pixel (n, p, q) reads
    x_pad[n, p*stride_h + r*dil_h, q*stride_w + s*dil_w, c] for every tap without a bounds
    test. w_pad (K_PAD, RSC_PAD) contiguous: w_pad[k, j] = w[k, c, r, s] for the reduction
    column j = (r*S + s)*CP + c < R*S*CP, zero elsewhere. Then

        y[m, k] = sum_j A[m, j] * w_pad[k, j],   A[m, j] = x_pad[pixel(m) + col(j)],

    a GEMM of M = N*P*Q pixels by K output channels over R*S*CP columns, where the offset
    of A splits into a per-row part, pixel(m) = ((n*HP + p*stride_h)*WP + q*stride_w)*CP,
    and a per-column part, col(j) = (r*dil_h*WP + s*dil_w)*CP + c: each step decomposes
    one BLOCK_K vector of columns (divisions by the constexprs CP and S only) and adds it
    to the BLOCK_M vector of pixels. Every run of CP columns is one tap of one pixel: CP
    consecutive, CP-aligned elements, loaded as one vector. Columns j >= R*S*CP are masked
    (their w_pad is 0, and a masked 0 keeps a NaN or inf of x out of other pixels).
    Grid: one axis of cdiv(N*P*Q, BLOCK_M) * cdiv(K, BLOCK_N) programs, the channel tiles
    fastest (they read the same pixels).
    """
    RSC: tl.constexpr = R * S * CP
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(K, BLOCK_N)
    pid_n = pid % n_tiles
    pid_m = pid // n_tiles
    if INDEX_64:  # N*P*Q or an offset within one sample can pass 2**31: pixel math in i64
        pid_m = pid_m.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixel (n, p, q), flattened
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel k
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = (offs_m // Q // P).to(tl.int64)
    mask_m = n < N  # offs_m < N*P*Q without forming the product, which can pass 2**31
    mask_n = offs_n < K
    pixel = ((p * stride_h) * WP + q * stride_w) * CP
    x_rows = x_ptr + n * HP * WP * CP + pixel  # batch offset always int64
    w_cols = w_ptr + offs_n * RSC_PAD  # w_pad is padded to whole BLOCK_N tiles: no mask

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, RSC, BLOCK_K):
        j = k0 + tl.arange(0, BLOCK_K)  # reduction column (r, s, c)
        if INDEX_64:  # col(j) reaches across one sample, which can pass 2**31 too
            j = j.to(tl.int64)
        c = j % CP
        s = (j // CP) % S
        r = j // (CP * S)
        col = (r * dil_h * WP + s * dil_w) * CP + c
        x_tile = tl.load(
            x_rows[:, None] + col[None, :],
            mask=mask_m[:, None] & (j < RSC)[None, :],
            other=0.0,
        )
        w_tile = tl.load(w_cols[None, :] + j[:, None])
        acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)

    y_rows = n * stride_yn + p * stride_yp + q * stride_yq
    y_offs = y_rows[:, None] + offs_n[None, :] * stride_yk
    mask = mask_m[:, None] & mask_n[None, :]
    acc = fused_epilogue(
        acc, offs_n[None, :], mask_n[None, :], y_offs, mask,
        scale_ptr, b_ptr, residual_ptr, preact_ptr, negative_slope,
        HAS_SCALE, HAS_BIAS, HAS_RESIDUAL, SAVE_PREACT, ACTIVATION,
    )  # fmt: skip
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


_STEM_KEY = ["K", "P", "Q", "R", "S", "CP", "stride_h", "stride_w"]
_TUNED = {
    kind: triton.autotune(stem_configs(kind), _STEM_KEY)(_conv2d_stem_fwd_kernel)
    for kind in ("fp16", "tf32", "ieee")
}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_input(x: Tensor, cp: int, padding: Pair, padded_hw: Pair) -> Tensor:
    """x (N, C, H, W) as a zero-padded NHWC copy (N, HP, WP, CP): x at rows/columns
    ``padding`` on, cut to (HP, WP) where the output does not reach x's bottom/right."""
    n, c, h, w = x.shape
    hp, wp = padded_hw
    pad_h, pad_w = padding
    rows, cols = max(0, min(h, hp - pad_h)), max(0, min(w, wp - pad_w))
    x_pad = alloc.zeros((n, hp, wp, cp), dtype=x.dtype, device=x.device)
    x_pad[:, pad_h : pad_h + rows, pad_w : pad_w + cols, :c] = x[:, :, :rows, :cols].permute(
        0, 2, 3, 1
    )
    return x_pad


def pad_weight(weight: Tensor, cp: int) -> Tensor:
    """weight (K, C, R, S) as w_pad (K_PAD, RSC_PAD): column (r*S + s)*CP + c, zero-padded."""
    k, c, r, s = weight.shape
    w_pad = alloc.zeros(
        (_round_up(k, _K_ALIGN), _round_up(r * s * cp, _RSC_ALIGN)),
        dtype=weight.dtype,
        device=weight.device,
    )
    taps = w_pad[:k, : r * s * cp].view(k, r, s, cp)
    taps[..., :c] = weight.permute(0, 2, 3, 1)
    return w_pad


_PADDED_WEIGHTS = WeightCache()


def conv2d_stem_fwd(
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
    """``act(conv2d(x, weight) * scale + bias + residual)`` for C <= 8: x (N, C, H, W),
    weight (K, C, R, S); ``epilogue`` as in ``conv2d.conv2d_fwd`` ((y, z) with save_preact).

    Same contract as ``conv2d.conv2d_fwd``: ``padding`` is the top/left padding,
    ``output_size`` (P, Q) implies the bottom/right one; the output (N, K, P, Q) has x's
    dtype and memory format. ``config`` runs that autotune config instead of the autotuner's
    choice.
    """
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    p, q = output_size
    if c > STEM_MAX_CHANNELS:
        raise ValueError(f"conv2d stem path: C = {c} > {STEM_MAX_CHANNELS} input channels")
    if config is not None and (
        _K_ALIGN % config.kwargs["BLOCK_N"] or _RSC_ALIGN % config.kwargs["BLOCK_K"]
    ):  # w_pad is padded for these tile sizes: a larger tile would read past it
        raise ValueError(
            f"conv2d stem path: BLOCK_N must divide {_K_ALIGN} and BLOCK_K {_RSC_ALIGN}, "
            f"got {config.kwargs}"
        )
    y = alloc.empty((n, k, p, q), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return (y, y) if epilogue.save_preact else y
    cp = stem_channels(c)
    # Rows/columns the taps reach, from the first padding row/column on.
    hp = (p - 1) * stride[0] + (r - 1) * dilation[0] + 1
    wp = (q - 1) * stride[1] + (s - 1) * dilation[1] + 1
    x_pad = pad_input(x, cp, padding, (hp, wp))
    w_pad = _PADDED_WEIGHTS.get(weight, pad_weight, cp)  # once per version of the weight
    b = w_pad if bias is None else bias  # placeholder pointer, never read without HAS_BIAS

    def grid(meta):
        tiles = cdiv(n * p * q, meta["BLOCK_M"]) * cdiv(k, meta["BLOCK_N"])
        return checked_grid((tiles,), "conv2d stem forward")

    precision = input_precision(x.dtype)
    tuned = _TUNED[dot_kind(x.dtype)]
    scale, residual, preact = epilogue.operands(y)
    args = (
        x_pad, w_pad, b, y, scale, residual, y if preact is None else preact,
        epilogue.negative_slope, n, k, p, q, hp, wp, *stride, *dilation,
        *y.stride(),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, CP=cp, RSC_PAD=w_pad.shape[1], HAS_BIAS=bias is not None,
        **epilogue.meta(), INPUT_PRECISION=precision,
        INDEX_64=needs_int64(n * p * q, x_pad, w_pad, y),
    )  # fmt: skip
    launch(tuned, _conv2d_stem_fwd_kernel, config, grid, args, meta)
    return (y, preact) if epilogue.save_preact else y
