"""Reflect, replicate and circular padding of (N, C, H, W) tensors as Triton kernels.

The forward writes the padded copy of x as a dense **channels-last** tensor
(N, C, H + top + bottom, W + left + right), whatever x's layout: the convolution kernels
read channels-last operands, so for an NCHW input this pad replaces the layout copy the
convolution would otherwise make (one pass either way), and for a channels_last input it
is the one pass that padding costs. A padded element (n, c, ho, wo) reads
x[n, c, src(ho - top, H), src(wo - left, W)], where for an index i of an axis of size L:

* ``reflect``: i < 0 -> -i, i >= L -> 2*(L-1) - i (the edge is not repeated; pad < L);
* ``replicate``: clamp(i, 0, L-1);
* ``circular``: i < 0 -> i + L, i >= L -> i - L (pad <= L, so one wrap is enough);

exactly as ``torch.nn.functional.pad``. Each program copies one (BLOCK_W columns x BLOCK_C
channels) tile of one padded row: the source row is one scalar, and the column blocks are
aligned on the *source* columns (block b starts at source column (b - cdiv(left,
BLOCK_W)) * BLOCK_W), so a block that lies inside the image reads an affine, aligned run of
source columns. Channels_last inputs are read along the channels (16-byte vectors when C
and the strides allow); NCHW inputs along W, and Triton transposes the tile through shared
memory before the channels-last store. Blocks that touch the padding read through the
index map above (for NCHW inputs, element gathers).

The backward is a gather, deterministic and without atomics: grad_x[n, c, h, w] is the sum
of grad_y over the padded positions that read (h, w). Along one axis of size L with
paddings (before, after), index i is read at i + before, and

* ``reflect``: also at before - i if 1 <= i <= before, and at before + 2*(L-1) - i if
  L-1-after <= i <= L-2 (at most 3 positions);
* ``circular``: also at i + before - L if i >= L - before, and at i + before + L if
  i < after (at most 3 positions);
* ``replicate``: index 0 at all of [0, before], index L-1 at all of
  [before + L-1, before + L-1 + after] (a strip, walked by a loop over the pad count);

the 2-D sources are the products of the two axes' (at most 9 for reflect and circular).
A program owns (BLOCK_W columns x BLOCK_C channels) of one input row; its row sources are
scalars, so only programs at an image border walk more than one row, and only column
blocks that touch a border load the mirrored columns. Sums are fp32, cast on store.

All four strides of every tensor are passed; the non-contiguous strides are written
``// VEC * VEC`` (the launcher checked the divisibility) so the compiler sees every row
start aligned. Batch offsets are int64; every index is int64 when a tensor or pixel count
can pass 2**31 (:func:`needs_int64`). Grids are one axis, checked.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import alloc
from fastconv.kernels.launch import cdiv, checked_grid, launch, needs_int64

__all__ = ["PAD_MODES", "pad2d_bwd", "pad2d_configs", "pad2d_fwd"]

PAD_MODES = ("reflect", "replicate", "circular")
Padding = tuple[int, int, int, int]  # (left, right, top, bottom), torch.nn.functional.pad's order

# (BLOCK_W columns, BLOCK_C channels, warps). A pure copy: 2,048 elements per program, 16 per
# thread (two 16-byte fp16 vectors); 128x8 (1,024) for inputs of few channels (an RGB image).
TILES = [(32, 64, 4), (64, 32, 4), (128, 8, 4)]
# Under the interpreter an autotuner would time configs with CUDA events: one small config,
# narrow enough that small test images have interior and border blocks.
_INTERPRETER_TILE = (8, 8, 1)
MAX_VEC = 16


def pad2d_configs(interpreter: bool = TRITON_INTERPRETER) -> list[triton.Config]:
    """Autotune configs (BLOCK_W, BLOCK_C) of both pad kernels; ``interpreter=False`` gives
    the GPU list even under the interpreter (tests run every config)."""
    tiles = [_INTERPRETER_TILE] if interpreter else TILES
    return [
        triton.Config({"BLOCK_W": bw, "BLOCK_C": bc}, num_warps=warps, num_stages=1)
        for bw, bc, warps in tiles
    ]


def _prune(configs, named_args: dict, **kwargs):
    """Drop channel tiles wider than the channels (their lanes would be padding)."""
    channels = max(8, triton.next_power_of_2(named_args["C"]))
    return [c for c in configs if c.kwargs["BLOCK_C"] <= channels] or configs


# --------------------------------------------------------------------------- helpers


@triton.jit
def _aligned(stride, VEC: tl.constexpr):
    """``stride`` written so the compiler sees it a multiple of VEC (the launcher checked)."""
    return stride // VEC * VEC


@triton.jit
def _source_index(i, size, MODE: tl.constexpr):
    """The index of an axis of ``size`` that padded index ``i`` (before-padding removed,
    so -pad <= i < size + pad) reads in ``MODE``."""
    if MODE == "reflect":
        i = tl.where(i < 0, -i, i)
        i = tl.where(i >= size, 2 * (size - 1) - i, i)
    elif MODE == "replicate":
        i = tl.minimum(tl.maximum(i, 0), size - 1)
    else:  # circular
        i = tl.where(i < 0, i + size, i)
        i = tl.where(i >= size, i - size, i)
    return i


@triton.jit
def _tile_offsets(w, c, stride_c, stride_w, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr):
    """(BLOCK_W, BLOCK_C) element offsets of columns ``w`` x channels ``c`` within one image
    row. The contiguous axis' stride is 1 (the JIT specializes it); the other is aligned."""
    if CHANNELS_LAST:
        return w[:, None] * _aligned(stride_w, VEC) + c[None, :] * stride_c
    return w[:, None] * stride_w + c[None, :] * _aligned(stride_c, VEC)


# --------------------------------------------------------------------------- forward


@triton.jit
def _pad2d_fwd_kernel(
    # pointers
    x_ptr,
    y_ptr,
    # shapes
    C,
    H,
    W,
    HP,
    WP,
    top,
    left,
    # strides
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    # meta-parameters
    MODE: tl.constexpr,
    X_CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    VEC_X: tl.constexpr,
    VEC_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y[n, ho, wo, c] = x[n, c, src(ho - top, H), src(wo - left, W)] (see the module doc).

    x: (N, C, H, W), any strides (channels-contiguous when ``X_CHANNELS_LAST``); y: dense
    (N, HP, WP, C), HP = H + top + bottom, WP = W + left + right. A program copies BLOCK_W
    columns x BLOCK_C channels of padded row (n, ho); grid: N*HP * column blocks * channel
    blocks, channel blocks fastest. Column block b covers source columns
    (b - cdiv(left, BLOCK_W)) * BLOCK_W + [0, BLOCK_W); a block inside the image copies them
    as they are, the others map them and mask the columns outside [0, WP).
    """
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    c_blocks = tl.cdiv(C, BLOCK_C)
    blocks_before = tl.cdiv(left, BLOCK_W)
    col_blocks = blocks_before + tl.cdiv(WP - left, BLOCK_W)
    pid_c = pid % c_blocks
    col_block = (pid // c_blocks) % col_blocks
    row = pid // c_blocks // col_blocks  # n * HP + ho
    ho = row % HP
    n = (row // HP).to(tl.int64)

    first = (col_block - blocks_before) * BLOCK_W  # source column of the first lane
    ws = first + tl.arange(0, BLOCK_W)
    wo = ws + left
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_count = C // VEC_C * VEC_C
    c_ok = c < c_count
    hs = _source_index(ho - top, H, MODE)
    x_row = x_ptr + n * _aligned(stride_xn, VEC_X) + hs * _aligned(stride_xh, VEC_X)
    y_offs = ((row * WP + wo) * c_count)[:, None] + c[None, :]
    if (first >= 0) & (first + BLOCK_W <= W):  # inside the image: an affine, aligned run
        x_offs = _tile_offsets(ws, c, stride_xc, stride_xw, X_CHANNELS_LAST, VEC_X)
        values = tl.load(x_row + x_offs, mask=c_ok[None, :])
        tl.store(y_ptr + y_offs, values, mask=c_ok[None, :])
    else:
        x_offs = _tile_offsets(
            _source_index(ws, W, MODE), c, stride_xc, stride_xw, X_CHANNELS_LAST, VEC_X
        )
        mask = ((wo >= 0) & (wo < WP))[:, None] & c_ok[None, :]
        values = tl.load(x_row + x_offs, mask=mask)
        tl.store(y_ptr + y_offs, values, mask=mask)


# --------------------------------------------------------------------------- backward


@triton.jit
def _gather_columns(
    acc,
    gy_row,
    w,
    w_ok,
    c,
    c_ok,
    first,
    W,
    WP,
    left,
    stride_gyc,
    stride_gyw,
    MODE: tl.constexpr,
    GY_CHANNELS_LAST: tl.constexpr,
    VEC_GY: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """``acc`` plus, for input columns ``w`` (the block starting at ``first``), the grad_y of
    padded row ``gy_row`` at every padded column that reads w (see the module doc)."""
    right = WP - W - left
    ok = w_ok[:, None] & c_ok[None, :]
    offs = _tile_offsets(w + left, c, stride_gyc, stride_gyw, GY_CHANNELS_LAST, VEC_GY)
    acc += tl.load(gy_row + offs, mask=ok, other=0.0).to(tl.float32)
    if MODE == "replicate":
        if first == 0:  # the block holds column 0: it also reads the left strip [0, left)
            edge = ok & (w == 0)[:, None]
            for column in range(0, left):
                offs = _tile_offsets(
                    w * 0 + column, c, stride_gyc, stride_gyw, GY_CHANNELS_LAST, VEC_GY
                )
                acc += tl.load(gy_row + offs, mask=edge, other=0.0).to(tl.float32)
        if first + BLOCK_W >= W:  # the block holds column W-1: the right strip
            edge = ok & (w == W - 1)[:, None]
            for column in range(left + W, WP):
                offs = _tile_offsets(
                    w * 0 + column, c, stride_gyc, stride_gyw, GY_CHANNELS_LAST, VEC_GY
                )
                acc += tl.load(gy_row + offs, mask=edge, other=0.0).to(tl.float32)
    else:
        if MODE == "reflect":
            low, low_ok = left - w, (w >= 1) & (w <= left)
            high, high_ok = left + 2 * (W - 1) - w, (w >= W - 1 - right) & (w <= W - 2)
            touches_low = first <= left
            touches_high = first + BLOCK_W > W - 1 - right
        else:  # circular
            low, low_ok = w + left - W, w >= W - left
            high, high_ok = w + left + W, w < right
            touches_low = first + BLOCK_W > W - left
            touches_high = first < right
        if touches_low:
            offs = _tile_offsets(low, c, stride_gyc, stride_gyw, GY_CHANNELS_LAST, VEC_GY)
            mask = ok & low_ok[:, None]
            acc += tl.load(gy_row + offs, mask=mask, other=0.0).to(tl.float32)
        if touches_high:
            offs = _tile_offsets(high, c, stride_gyc, stride_gyw, GY_CHANNELS_LAST, VEC_GY)
            mask = ok & high_ok[:, None]
            acc += tl.load(gy_row + offs, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _pad2d_bwd_kernel(
    # pointers
    gy_ptr,
    gx_ptr,
    # shapes
    C,
    H,
    W,
    HP,
    WP,
    top,
    left,
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
    MODE: tl.constexpr,
    GY_CHANNELS_LAST: tl.constexpr,
    GX_CHANNELS_LAST: tl.constexpr,
    INDEX_64: tl.constexpr,
    VEC_GY: tl.constexpr,
    VEC_GX: tl.constexpr,
    VEC_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad_x[n, c, h, w] = sum of grad_y[n, c, ho, wo] over the padded (ho, wo) that read
    (h, w): the product of each axis' sources (see the module doc).

    grad_y: (N, C, HP, WP), grad_x: (N, C, H, W), any strides (channels-contiguous when
    ``*_CHANNELS_LAST``). A program writes BLOCK_W columns x BLOCK_C channels of input row
    (n, h); grid: N*H * cdiv(W, BLOCK_W) * channel blocks, channel blocks fastest. The row
    sources are scalars: up to 3 rows for reflect and circular, a range for replicate.
    """
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    c_blocks = tl.cdiv(C, BLOCK_C)
    col_blocks = tl.cdiv(W, BLOCK_W)
    pid_c = pid % c_blocks
    first = (pid // c_blocks) % col_blocks * BLOCK_W
    row = pid // c_blocks // col_blocks  # n * H + h
    h = row % H
    n = (row // H).to(tl.int64)

    w = first + tl.arange(0, BLOCK_W)
    w_ok = w < (W if GX_CHANNELS_LAST else W // VEC_GX * VEC_GX)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C // VEC_C * VEC_C
    gy_image = gy_ptr + n * _aligned(stride_gyn, VEC_GY)
    stride_rows = _aligned(stride_gyh, VEC_GY)
    acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    if MODE == "replicate":
        first_row = tl.where(h == 0, 0, h + top)
        end_row = tl.where(h == H - 1, HP, h + top + 1)
        for ho in range(first_row, end_row):
            acc = _gather_columns(
                acc, gy_image + ho * stride_rows, w, w_ok, c, c_ok, first, W, WP, left,
                stride_gyc, stride_gyw, MODE, GY_CHANNELS_LAST, VEC_GY, BLOCK_W,
            )  # fmt: skip
    else:
        bottom = HP - H - top
        if MODE == "reflect":
            low, low_ok = top - h, (h >= 1) & (h <= top)
            high, high_ok = top + 2 * (H - 1) - h, (h >= H - 1 - bottom) & (h <= H - 2)
        else:  # circular
            low, low_ok = h + top - H, h >= H - top
            high, high_ok = h + top + H, h < bottom
        acc = _gather_columns(
            acc, gy_image + (h + top) * stride_rows, w, w_ok, c, c_ok, first, W, WP, left,
            stride_gyc, stride_gyw, MODE, GY_CHANNELS_LAST, VEC_GY, BLOCK_W,
        )  # fmt: skip
        if low_ok:
            acc = _gather_columns(
                acc, gy_image + low * stride_rows, w, w_ok, c, c_ok, first, W, WP, left,
                stride_gyc, stride_gyw, MODE, GY_CHANNELS_LAST, VEC_GY, BLOCK_W,
            )  # fmt: skip
        if high_ok:
            acc = _gather_columns(
                acc, gy_image + high * stride_rows, w, w_ok, c, c_ok, first, W, WP, left,
                stride_gyc, stride_gyw, MODE, GY_CHANNELS_LAST, VEC_GY, BLOCK_W,
            )  # fmt: skip
    gx_row = gx_ptr + n * _aligned(stride_gxn, VEC_GX) + h * _aligned(stride_gxh, VEC_GX)
    gx_offs = _tile_offsets(w, c, stride_gxc, stride_gxw, GX_CHANNELS_LAST, VEC_GX)
    tl.store(
        gx_row + gx_offs,
        acc.to(gx_ptr.dtype.element_ty),
        mask=w_ok[:, None] & c_ok[None, :],
    )


# --------------------------------------------------------------------------- autotuners

_KEY = ["C", "H", "W", "HP", "WP", "top", "left", "MODE"]
_PRUNE = {"early_config_prune": _prune}
_TUNED_FWD = triton.autotune(pad2d_configs(), [*_KEY, "X_CHANNELS_LAST"], prune_configs_by=_PRUNE)(
    _pad2d_fwd_kernel
)
_TUNED_BWD = triton.autotune(
    pad2d_configs(), [*_KEY, "GY_CHANNELS_LAST", "GX_CHANNELS_LAST"], prune_configs_by=_PRUNE
)(_pad2d_bwd_kernel)


# --------------------------------------------------------------------------- launchers


def _strides(t: Tensor) -> tuple[int, int, int, int]:
    """``t``'s (n, c, h, w) strides with 0 along size-1 dims (whose index is always 0), so
    torch's arbitrary strides there do not hide the alignment of the others."""
    return tuple(0 if size == 1 else step for size, step in zip(t.shape, t.stride(), strict=True))


def _channels_contiguous(t: Tensor) -> bool:
    """Whether a kernel reads ``t`` along its channels (else along W)."""
    return t.shape[1] > 1 and t.stride(1) == 1


def _vec(*values: int) -> int:
    """The largest power of 2 (at most MAX_VEC) dividing every value (0 divides by anything)."""
    g = math.gcd(*values)
    return min(g & -g, MAX_VEC) if g else MAX_VEC


def _row_vec(t: Tensor, channels_last: bool) -> int:
    """VEC of ``t``'s strides other than its contiguous axis' (and, read along W, of W:
    a mask on w must be constant over runs of VEC columns)."""
    n, c, h, w = _strides(t)
    return _vec(n, h, w) if channels_last else _vec(n, c, h, t.shape[3])


def _check_mode(mode: str) -> None:
    """The kernels compile one branch per mode: an unknown name must not reach them."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")


def pad2d_fwd(
    x: Tensor, padding: Padding, mode: str, config: triton.Config | None = None
) -> Tensor:
    """``F.pad(x, padding, mode)`` for x (N, C, H, W) of any strides, ``padding`` (left,
    right, top, bottom) valid for ``mode`` (checked by :func:`fastconv.padding.pad2d`).

    Returns (N, C, H + top + bottom, W + left + right), dense channels-last, x's dtype.
    ``config`` runs that autotune config instead of the autotuner's choice.
    """
    _check_mode(mode)
    n, c, h, w = x.shape
    left, right, top, bottom = padding
    hp, wp = h + top + bottom, w + left + right
    y = alloc.empty(
        (n, c, hp, wp), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    if y.numel() == 0:
        return y
    channels_last = _channels_contiguous(x)

    def grid(meta):
        block_w = meta["BLOCK_W"]
        col_blocks = cdiv(left, block_w) + cdiv(w + right, block_w)
        programs = n * hp * col_blocks * cdiv(c, meta["BLOCK_C"])
        return checked_grid((programs,), "pad2d forward")

    args = (x, y, c, h, w, hp, wp, top, left, *_strides(x))
    meta = dict(
        MODE=mode, X_CHANNELS_LAST=channels_last, INDEX_64=needs_int64(n * hp * wp, x, y),
        VEC_X=_row_vec(x, channels_last), VEC_C=_vec(c),
    )  # fmt: skip
    launch(_TUNED_FWD, _pad2d_fwd_kernel, config, grid, args, meta)
    return y


def pad2d_bwd(
    grad_y: Tensor,
    input_shape: torch.Size | tuple[int, int, int, int],
    padding: Padding,
    mode: str,
    memory_format: torch.memory_format = torch.contiguous_format,
    config: triton.Config | None = None,
) -> Tensor:
    """grad_x (N, C, H, W) of :func:`pad2d_fwd` from grad_y (N, C, H + top + bottom,
    W + left + right) of any strides, allocated in ``memory_format``. A gather: every
    element is written once, summed in fp32, no atomics (deterministic)."""
    _check_mode(mode)
    n, c, h, w = input_shape
    left, right, top, bottom = padding
    hp, wp = h + top + bottom, w + left + right
    if tuple(grad_y.shape) != (n, c, hp, wp):
        raise ValueError(
            f"grad_y of shape {tuple(grad_y.shape)} does not match the padded input shape "
            f"{(n, c, hp, wp)}"
        )
    grad_x = alloc.empty(
        (n, c, h, w), dtype=grad_y.dtype, device=grad_y.device, memory_format=memory_format
    )
    if grad_x.numel() == 0:
        return grad_x
    gy_channels_last = _channels_contiguous(grad_y)
    gx_channels_last = _channels_contiguous(grad_x)

    def grid(meta):
        programs = n * h * cdiv(w, meta["BLOCK_W"]) * cdiv(c, meta["BLOCK_C"])
        return checked_grid((programs,), "pad2d backward")

    args = (grad_y, grad_x, c, h, w, hp, wp, top, left, *_strides(grad_y), *_strides(grad_x))
    meta = dict(
        MODE=mode, GY_CHANNELS_LAST=gy_channels_last, GX_CHANNELS_LAST=gx_channels_last,
        INDEX_64=needs_int64(n * hp * wp, grad_y, grad_x),
        VEC_GY=_row_vec(grad_y, gy_channels_last), VEC_GX=_row_vec(grad_x, gx_channels_last),
        VEC_C=_vec(c),
    )  # fmt: skip
    launch(_TUNED_BWD, _pad2d_bwd_kernel, config, grid, args, meta)
    return grad_x
