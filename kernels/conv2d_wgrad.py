"""Weight gradient of conv2d (and the bias gradient in the same pass) as a Triton kernel.

``grad_w`` is a GEMM with M = K output channels, N = C*R*S and the reduction over the N*P*Q
output pixels, split across programs (split-K) into an fp32 workspace that is summed
afterwards, which keeps the result deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import alloc
from fastconv.kernels.launch import (
    INTERPRETER_CONFIGS,
    MAX_GRID,
    checked_grid,
    input_precision,
    launch,
    needs_int64,
    tile_config,
)

__all__ = ["conv2d_bwd_weight", "wgrad_configs", "wgrad_partition", "wgrad_split"]

Pair = tuple[int, int]

# Split-K: rows (output pixels) reduced by one program at least, and the programs aimed for,
# counted in nominal 64 x 64 tiles of the (K, C*R*S) gradient.
WGRAD_ROWS_PER_SPLIT = 64 if TRITON_INTERPRETER else 512
WGRAD_TARGET_PROGRAMS = 1024
WGRAD_NOMINAL_TILE = 64 * 64
# Cap on the fp32 wgrad workspace (elements) so huge weights do not split needlessly.
WGRAD_MAX_WORKSPACE = 1 << 26

WGRAD_TILES = [  # (output channels, C*R*S, output pixels, stages, warps)
    (64, 64, 16, 3, 4),
    (64, 32, 32, 4, 4),  # few output channels
    (32, 64, 16, 4, 4),
]
# IEEE fp32 dots run on FMA units and hold more registers per tile: BLOCK_K 16 avoids spills.
_IEEE_BLOCK_K = 16


def wgrad_configs(
    ieee: bool = False, interpreter: bool = TRITON_INTERPRETER
) -> list[triton.Config]:
    """wgrad configs; ``interpreter=False`` gives the GPU list even under the interpreter."""
    if interpreter:
        return INTERPRETER_CONFIGS
    return [
        tile_config(m, n, min(k, _IEEE_BLOCK_K) if ieee else k, s, w)
        for m, n, k, s, w in WGRAD_TILES
    ]


@triton.jit
def _conv2d_bwd_weight_kernel(
    # pointers
    dy_ptr,
    x_ptr,
    dw_ptr,
    db_ptr,
    # shapes
    N,
    C,
    H,
    W,
    K,
    P,
    Q,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    rows_per_split,
    # strides
    stride_dyn,
    stride_dyk,
    stride_dyp,
    stride_dyq,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    # meta-parameters
    R: tl.constexpr,
    S: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """Partial grad_w (SPLIT, K, C*R*S) and grad_b (SPLIT, K) in fp32 over a slice of N*P*Q.

    grad_w[k, c, r, s] = sum_{n, p, q} g[n, k, p, q] * x[n, c, p*stride_h - pad_h + r*dil_h,
    q*stride_w - pad_w + s*dil_w] and grad_b[k] = sum_{n, p, q} g[n, k, p, q], with g =
    grad_y (N, K, P, Q) (ReLU-masked by the caller) and x (N, C, H, W).
    Program z of grid axis 2 reduces rows [z*rows_per_split, (z+1)*rows_per_split) of the
    N*P*Q pixels; the caller sums the SPLIT partial results. Grid: (cdiv(K, BLOCK_M),
    cdiv(C*R*S, BLOCK_N), SPLIT). grad_b is written by the programs with pid_n == 0.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    CRS = C * R * S
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel k
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (c, r, s), flattened
    offs_k = tl.arange(0, BLOCK_K)  # output pixel (n, p, q) within a chunk
    if INDEX_64:  # channel * channel-stride can pass 2**31 within one sample too
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)  # rows = row0 + offs_k in int64 whatever row0's type
    mask_m = offs_m < K
    mask_n = offs_n < CRS
    s = offs_n % S
    r = (offs_n // S) % R
    c = offs_n // (R * S)
    if INDEX_64:  # N*P*Q or an offset within one sample can pass 2**31: pixel math in i64
        pid_z = pid_z.to(tl.int64)
        rows_total = tl.cast(N, tl.int64) * P * Q
    else:
        rows_total = N * P * Q
    row_start = pid_z * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, rows_total)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for row0 in range(row_start, row_end, BLOCK_K):
        rows = row0 + offs_k
        mask_rows = rows < row_end
        q = rows % Q
        p = (rows // Q) % P
        n = (rows // Q // P).to(tl.int64)
        # g^T tile (BLOCK_M channels, BLOCK_K pixels)
        mask_g = mask_m[:, None] & mask_rows[None, :]
        dy_pix = n * stride_dyn + p * stride_dyp + q * stride_dyq
        g = tl.load(dy_ptr + offs_m[:, None] * stride_dyk + dy_pix[None, :], mask=mask_g, other=0.0)
        # x tile (BLOCK_K pixels, BLOCK_N taps)
        h = (p * stride_h - pad_h)[:, None] + (r * dil_h)[None, :]
        w = (q * stride_w - pad_w)[:, None] + (s * dil_w)[None, :]
        mask_x = mask_rows[:, None] & mask_n[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        x_offs = (n * stride_xn)[:, None] + (c * stride_xc)[None, :] + h * stride_xh
        x_tile = tl.load(x_ptr + x_offs + w * stride_xw, mask=mask_x, other=0.0)
        acc = tl.dot(g.to(x_tile.dtype), x_tile, acc, input_precision=INPUT_PRECISION)
        if BIAS_GRAD:
            bias_acc += tl.sum(g.to(tl.float32), axis=1)

    dw_ptrs = dw_ptr + pid_z * K * CRS + offs_m[:, None] * CRS + offs_n[None, :]
    tl.store(dw_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])
    if BIAS_GRAD:
        tl.store(db_ptr + pid_z * K + offs_m, bias_acc, mask=mask_m & (pid_n == 0))


_WGRAD_KEY = ["C", "K", "P", "Q", "R", "S", "rows_per_split"]
_conv2d_wgrad_tuned = triton.autotune(wgrad_configs(), _WGRAD_KEY)(_conv2d_bwd_weight_kernel)
_conv2d_wgrad_tuned_ieee = triton.autotune(wgrad_configs(ieee=True), _WGRAD_KEY)(
    _conv2d_bwd_weight_kernel
)


def wgrad_split(rows: int, weight_numel: int) -> int:
    """How many programs share the N*P*Q reduction of wgrad (split-K), at least 1."""
    weight_numel = max(1, weight_numel)
    by_rows = triton.cdiv(rows, WGRAD_ROWS_PER_SPLIT)
    by_workspace = WGRAD_MAX_WORKSPACE // weight_numel
    by_programs = WGRAD_TARGET_PROGRAMS * WGRAD_NOMINAL_TILE // weight_numel
    return max(1, min(by_rows, by_workspace, by_programs, MAX_GRID[2]))


def wgrad_partition(rows: int, weight_numel: int, split: int | None = None) -> tuple[int, int]:
    """(rows per program, programs) of wgrad's split-K over ``rows`` = N*P*Q output pixels.

    ``split`` asks for that many programs (tests pass it to take the split and the no-split
    path on any device); None lets :func:`wgrad_split` choose. Every program gets
    ``cdiv(rows, split)`` consecutive rows, the last one the remainder, and none is empty, so
    fewer programs run when ``split`` does not fit ``rows`` (10 rows with split=4: 3 + 3 + 3
    + 1 rows, 4 programs; with split=6: 2 rows each, 5 programs). ``rows`` must be positive.
    """
    if split is None:
        split = wgrad_split(rows, weight_numel)
    elif split < 1:
        raise ValueError(f"split must be at least 1, got split={split}")
    # The split is grid axis 2: at most 65,535 programs, whatever was asked for.
    rows_per_split = triton.cdiv(rows, min(split, rows, MAX_GRID[2]))
    return rows_per_split, triton.cdiv(rows, rows_per_split)


def conv2d_bwd_weight(
    grad_y: Tensor,
    x: Tensor,
    weight_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    need_bias_grad: bool,
    split: int | None = None,
    config: triton.Config | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(grad_w (K, C, R, S), grad_b (K,) or None) from grad_y (N, K, P, Q) and x (N, C, H, W).

    ``grad_y`` is the gradient of the convolution's output (a fused ReLU's mask already
    applied: :func:`fastconv.kernels.conv2d.relu_grad`). The N*P*Q reduction is split
    across programs into an fp32 workspace, then summed and cast to x's dtype; ``split``
    overrides the number of programs (see :func:`wgrad_partition`) and
    ``config`` the autotuner's choice of config.
    """
    n, c, h, w = x.shape
    k, _, r, s = weight_shape
    p, q = grad_y.shape[2:]
    rows = n * p * q
    crs = c * r * s
    if rows == 0 or k * crs == 0:  # an empty reduction or an empty weight
        grad_w = alloc.zeros((k, c, r, s), dtype=x.dtype, device=x.device)
        grad_b = alloc.zeros((k,), dtype=x.dtype, device=x.device) if need_bias_grad else None
        return grad_w, grad_b
    rows_per_split, split = wgrad_partition(rows, k * crs, split)
    # Every element of the workspaces is written by exactly one program: no zero-fill needed.
    grad_w_parts = alloc.empty((split, k, crs), dtype=torch.float32, device=x.device)
    grad_b_parts = (  # with no bias gradient, an unwritten stand-in pointer
        alloc.empty((split, k), dtype=torch.float32, device=x.device)
        if need_bias_grad
        else grad_w_parts
    )

    def grid(meta):
        grid = triton.cdiv(k, meta["BLOCK_M"]), triton.cdiv(crs, meta["BLOCK_N"]), split
        return checked_grid(grid, "conv2d weight gradient")

    precision = input_precision(x.dtype)
    tuned = _conv2d_wgrad_tuned_ieee if precision == "ieee" else _conv2d_wgrad_tuned
    args = (
        grad_y, x, grad_w_parts, grad_b_parts,
        n, c, h, w, k, p, q, *stride, *padding, *dilation, rows_per_split,
        *grad_y.stride(), *x.stride(),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, BIAS_GRAD=need_bias_grad,
        INPUT_PRECISION=precision, INDEX_64=needs_int64(rows, grad_y, x, grad_w_parts),
    )  # fmt: skip
    launch(tuned, _conv2d_bwd_weight_kernel, config, grid, args, meta)
    grad_w = grad_w_parts.sum(0).view(k, c, r, s).to(x.dtype)
    grad_b = grad_b_parts.sum(0).to(x.dtype) if need_bias_grad else None
    return grad_w, grad_b
