"""Weight gradient of conv2d (and the bias gradient in the same launch) as a Triton kernel.

``grad_w`` is a GEMM ``g^T x`` with M = K output channels, N = (tap r, s ; input channel c)
with c fastest, and the reduction over the N*P*Q output pixels, split across programs
(split-K) into an fp32 workspace that is summed afterwards, which keeps the result
deterministic (an unsplit reduction is stored in the operands' dtype directly). The
operands are read in NHWC (channels_last): for one tap, a program's x tile is a box of
pixels x channels, contiguous along the channels, and its g tile a box of pixels x output
channels, so both load as 16-byte vectors that the pipeliner copies asynchronously into
shared memory (``cp.async`` / ``LDGSTS``).
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
    WIDE_TILES_ENABLED,
    cdiv,
    checked_grid,
    dot_kind,
    input_precision,
    needs_int64,
    tile_config,
)
from fastconv.kernels.layout import nhwc, nhwc_strides
from fastconv.kernels.plans import (
    PlanCache,
    TunedLaunch,
    dot_precision,
    planning_tensor,
    signature,
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

WGRAD_TILES = [  # (output channels, input channels of one tap, output pixels, stages, warps)
    (64, 128, 64, 4, 4),  # wgmma 64x128: 4 warps leave 128x128 and 128x64 spilling (sm_80)
    (64, 64, 64, 4, 4),
    (64, 32, 64, 4, 4),  # few input channels (the C=3 stem, padded to 16)
]
# Two warpgroups (8 warps) per dot kind, appended behind the wide-tiles switch
# (launch.WIDE_TILES_ENABLED). BLOCK_K 32 (fp16) and 16 (tf32): at 64 / 32 (3 stages) both
# spilled 24-104 bytes on sm_80; tf32 256x128 spilled 8 bytes on sm_80 even at 16. IEEE fp32
# dots run on FMA units: no warpgroup MMA to widen.
WGRAD_WIDE_TILES = {
    "fp16": [(128, 256, 32, 4, 8), (256, 128, 32, 4, 8)],
    "tf32": [(128, 256, 16, 4, 8)],
    "ieee": [],
}
# The kernel reads channels padded to a multiple of this (see _nhwc).
_CHANNEL_MULTIPLE = 16
# Largest BLOCK_K per dot kind: fp32 operands take twice the shared memory of fp16 per stage
# (tf32 halves BLOCK_K); IEEE fp32 dots run on FMA units and hold more registers per tile
# (BLOCK_K 16 avoids spills).
MAX_BLOCK_K = {"fp16": 64, "tf32": 32, "ieee": 16}


def wgrad_configs(
    kind: str = "fp16", interpreter: bool = TRITON_INTERPRETER, wide: bool = WIDE_TILES_ENABLED
) -> list[triton.Config]:
    """wgrad configs for a dot ``kind``: "fp16" (fp16 and bf16), "tf32" or "ieee" (fp32 with
    tf32 off). ``interpreter=False`` gives the GPU list even under the interpreter; ``wide``
    appends the 8-warp tiles (default: the ``FASTCONV_WIDE_TILES`` switch)."""
    if interpreter:
        return INTERPRETER_CONFIGS
    cap = MAX_BLOCK_K[kind]
    configs = [tile_config(m, n, min(k, cap), s, w) for m, n, k, s, w in WGRAD_TILES]
    return configs + [tile_config(*tile) for tile in (WGRAD_WIDE_TILES[kind] if wide else [])]


@triton.jit
def _rows_to_pixels(rows, P, Q):
    """(n, p, q) of the flattened output pixels ``rows`` = (n*P + p)*Q + q."""
    return rows // Q // P, (rows // Q) % P, rows % Q


@triton.jit
def _next_rows(n, p, q, dn, dp, dq, P, Q):
    """(n, p, q) of the rows BLOCK_K = (dn*P + dp)*Q + dq further on, without division.

    q + dq < 2*Q and p + dp + 1 < 2*P: each coordinate carries at most once.
    """
    q += dq
    q_wraps = q >= Q
    q = tl.where(q_wraps, q - Q, q)
    p += tl.where(q_wraps, dp + 1, dp)
    p_wraps = p >= P
    p = tl.where(p_wraps, p - P, p)
    n += tl.where(p_wraps, dn + 1, dn)
    return n, p, q


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
    GROUPS,
    # strides (the channel strides are 1: NHWC)
    stride_dyn,
    stride_dyp,
    stride_dyq,
    stride_xn,
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
    """Partial grad_w (SPLIT, GROUPS*K, R*S*C) and grad_b (SPLIT, GROUPS*K) in fp32 over a
    slice of N*P*Q, per group of K output and C input channels (grouped convolution).

    With g = grad_y (N, P, Q, K) (ReLU-masked by the caller) and x (N, H, W, C), both NHWC
    with unit channel stride, and the output pixels flattened to rows i = (n*P + p)*Q + q::

        grad_w[k, r, s, c] = sum_i g[i, k] * x[n, p*stride_h - pad_h + r*dil_h,
                                               q*stride_w - pad_w + s*dil_w, c]
        grad_b[k] = sum_i g[i, k]

    (x is zero outside the image). For one tap (r, s) this is the GEMM ``g^T @ X_rs`` with
    X_rs (rows, C) the shifted input. Grid: (GROUPS * cdiv(K, BLOCK_M) * R*S * cdiv(C,
    BLOCK_N), 1, SPLIT). Axis 0 is (group, tap, channel block, output-channel block), the
    output-channel block fastest; program z of axis 2 reduces rows [z*rows_per_split,
    (z+1)*rows_per_split) and the caller sums the SPLIT partial results. Each step of the
    main loop takes BLOCK_K rows: the (BLOCK_M, BLOCK_K) tile g^T and a (BLOCK_K, BLOCK_N)
    tile of x, both contiguous along the channels, and accumulates ``tl.dot(g^T, x)`` into
    a (BLOCK_M, BLOCK_N) fp32 tile. g^T is loaded transposed through its pointers, not
    transposed after the load (``tl.trans`` of a loaded tile kept 4 synchronous loads per
    step on sm_80). The rows' (n, p, q) are decomposed once before the loop and then
    advanced by BLOCK_K rows = (dn images, dp rows, dq columns) per step with compares and
    adds: no division in the loop. grad_b is summed after the main loop, by the programs of
    the first (tap, channel) block only, from the same g rows.
    """
    pid = tl.program_id(0)
    pid_z = tl.program_id(2)
    m_blocks = tl.cdiv(K, BLOCK_M)
    c_blocks = tl.cdiv(C, BLOCK_N)
    per_group = m_blocks * R * S * c_blocks
    group = pid // per_group  # grouped convolution: K and C are one group's channels
    pid = pid % per_group
    dy_ptr += group * K
    x_ptr += group * C
    dw_ptr += (pid_z * GROUPS + group) * K * (R * S * C)
    db_ptr += (pid_z * GROUPS + group) * K
    pid_m = pid % m_blocks
    pid_n = pid // m_blocks  # (tap, channel block), the channel block fastest
    tap = pid_n // c_blocks
    r = tap // S
    s = tap % S
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel k
    offs_c = (pid_n % c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel c
    offs_k = tl.arange(0, BLOCK_K)  # row (output pixel) within a step
    if INDEX_64:  # N*P*Q, a workspace offset or an offset within one sample can pass 2**31
        pid_z = pid_z.to(tl.int64)
        offs_m = offs_m.to(tl.int64)
        offs_c = offs_c.to(tl.int64)
        rows_total = tl.cast(N, tl.int64) * P * Q
    else:
        rows_total = N * P * Q
    mask_m = offs_m < K
    mask_c = offs_c < C
    row_start = pid_z * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, rows_total)

    # (n, p, q) of the first step's rows, and how BLOCK_K rows advance them.
    n, p, q = _rows_to_pixels(row_start + offs_k, P, Q)
    dq = BLOCK_K % Q
    dp = (BLOCK_K // Q) % P
    dn = BLOCK_K // Q // P
    h_tap = r * dil_h - pad_h
    w_tap = s * dil_w - pad_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for row0 in range(row_start, row_end, BLOCK_K):
        mask_rows = offs_k < row_end - row0
        n64 = n.to(tl.int64)  # batch offsets in int64
        # g^T tile (BLOCK_M output channels, BLOCK_K rows), contiguous along the channels
        dy_rows = n64 * stride_dyn + p * stride_dyp + q * stride_dyq
        g_t = tl.load(
            dy_ptr + offs_m[:, None] + dy_rows[None, :],
            mask=mask_m[:, None] & mask_rows[None, :],
            other=0.0,
        )
        # x tile (BLOCK_K rows, BLOCK_N input channels) at tap (r, s), zero in the padding
        h = p * stride_h + h_tap
        w = q * stride_w + w_tap
        mask_x = mask_rows & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        x_rows = n64 * stride_xn + h * stride_xh + w * stride_xw
        x_tile = tl.load(
            x_ptr + x_rows[:, None] + offs_c[None, :],
            mask=mask_x[:, None] & mask_c[None, :],
            other=0.0,
        )
        acc = tl.dot(g_t.to(x_tile.dtype), x_tile, acc, input_precision=INPUT_PRECISION)
        n, p, q = _next_rows(n, p, q, dn, dp, dq, P, Q)

    crs = C * R * S
    dw_offs = offs_m[:, None] * crs + tap * C + offs_c[None, :]
    dw = acc.to(dw_ptr.dtype.element_ty)  # fp32 parts, or the result itself with one slice
    tl.store(dw_ptr + dw_offs, dw, mask=mask_m[:, None] & mask_c[None, :])
    if BIAS_GRAD:  # noqa: SIM102 (a constexpr test alone: no bias code without BIAS_GRAD)
        if pid_n == 0:  # one program per output-channel block sums g over its rows
            bias_acc = tl.zeros((BLOCK_K, BLOCK_M), dtype=tl.float32)
            n, p, q = _rows_to_pixels(row_start + offs_k, P, Q)
            for row0 in range(row_start, row_end, BLOCK_K):
                dy_rows = n.to(tl.int64) * stride_dyn + p * stride_dyp + q * stride_dyq
                mask_g = (offs_k < row_end - row0)[:, None] & mask_m[None, :]
                g = tl.load(dy_ptr + dy_rows[:, None] + offs_m[None, :], mask=mask_g, other=0.0)
                bias_acc += g.to(tl.float32)
                n, p, q = _next_rows(n, p, q, dn, dp, dq, P, Q)
            db = tl.sum(bias_acc, axis=0).to(db_ptr.dtype.element_ty)
            tl.store(db_ptr + offs_m, db, mask=mask_m)


# One autotuner per operand type; the key is what changes the best tile and pipeline (the
# autotuner adds the tensors' dtypes).
_WGRAD_KEY = ["C", "K", "P", "Q", "R", "S", "stride_h", "stride_w", "rows_per_split"]
_TUNED = {
    kind: triton.autotune(wgrad_configs(kind), _WGRAD_KEY)(_conv2d_bwd_weight_kernel)
    for kind in MAX_BLOCK_K
}


def wgrad_split(rows: int, weight_numel: int) -> int:
    """How many programs share the N*P*Q reduction of wgrad (split-K), at least 1."""
    weight_numel = max(1, weight_numel)
    by_rows = cdiv(rows, WGRAD_ROWS_PER_SPLIT)
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
    rows_per_split = cdiv(rows, min(split, rows, MAX_GRID[2]))
    return rows_per_split, cdiv(rows, rows_per_split)


def _nhwc(t: Tensor, groups: int) -> Tensor:
    """``t`` (N, C, H, W) as NHWC with unit channel stride, each group's C/groups channels
    padded to a multiple of 16: (N, groups * padded, H, W).

    A tensor with unit channel stride and groups of a multiple of 16 channels is used as it
    is (views, an expanded batch); otherwise it is copied, the padding channels zero. 16
    channels make every row of a tile 16-byte aligned, so the kernel's loads become
    asynchronous 16-byte copies (unaligned rows compiled to synchronous loads and spilled).
    The copy is up to 16/(C/groups) times the tensor: 4x for ResNeXt's 4-channel groups
    (depthwise convolutions take their own kernel).
    """
    n, c, h, w = t.shape
    per_group = c // groups
    padded_group = cdiv(per_group, _CHANNEL_MULTIPLE) * _CHANNEL_MULTIPLE
    if padded_group == per_group:
        return nhwc(t)
    padded = alloc.zeros((n, h, w, groups, padded_group), dtype=t.dtype, device=t.device)
    padded[..., :per_group] = t.view(n, groups, per_group, h, w).permute(0, 3, 4, 1, 2)
    return padded.view(n, h, w, groups * padded_group).permute(0, 3, 1, 2)


class _Wgrad:
    """The weight gradient of one call signature: its partition, buffers, grid, scalar
    arguments, constexprs and autotuned tile, computed from the first call's tensors (``g``
    and ``x`` as :func:`_nhwc` gives them).

    An unsplit reduction without padding channels writes grad_w and grad_b themselves: the
    kernel's (K, R*S*C) rows are the channels-last (K, C, R, S) weight.
    """

    def __init__(self, g, x, rows, weight_shape, geometry, need_bias_grad, groups, split, config):
        n, _, h, w = x.shape
        k, c, r, s = weight_shape  # c: input channels per group
        p, q = g.shape[2:]
        self.k_pad, self.c_pad = g.shape[1] // groups, x.shape[1] // groups  # per group
        rows_per_split, split = wgrad_partition(rows, k * c * r * s, split)
        self.weight_shape, self.groups, self.need_bias_grad = (k, c, r, s), groups, need_bias_grad
        self.direct = split == 1 and (self.k_pad, self.c_pad) == (k // groups, c)
        # Split-K parts are fp32 and summed afterwards; an unsplit reduction is stored in x's
        # dtype. Every element is written by exactly one program: no zero-fill needed.
        self.parts_shape = (split, groups * self.k_pad, r * s * self.c_pad)
        self.parts_dtype = x.dtype if split == 1 else torch.float32
        self.scalars = (
            n, self.c_pad, h, w, self.k_pad, p, q, *geometry, rows_per_split, groups,
            *nhwc_strides(g), *nhwc_strides(x),
        )  # fmt: skip
        parts = planning_tensor(self.parts_shape, self.parts_dtype)
        meta = dict(
            R=r, S=s, BIAS_GRAD=need_bias_grad, INPUT_PRECISION=input_precision(x.dtype),
            INDEX_64=needs_int64(rows, g, x, parts),
        )  # fmt: skip
        k_pad, c_pad = self.k_pad, self.c_pad

        def grid(meta):
            blocks = cdiv(k_pad, meta["BLOCK_M"]) * r * s * cdiv(c_pad, meta["BLOCK_N"])
            return checked_grid((blocks * groups, 1, split), "conv2d weight gradient")

        tuned = _TUNED[dot_kind(x.dtype)]
        self.launch = TunedLaunch(tuned, _conv2d_bwd_weight_kernel, grid, meta, config)

    def _buffers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(grad_w or its parts, grad_b or its parts; grad_w's buffer without a bias)."""
        k, c, r, s = self.weight_shape
        dtype, device = self.parts_dtype, x.device
        if self.direct:
            grad_w = alloc.empty((k, c, r, s), dtype=dtype, device=device,
                                 memory_format=torch.channels_last)  # fmt: skip
            grad_b = alloc.empty((k,), dtype=dtype, device=device) if self.need_bias_grad else None
            return grad_w, grad_w if grad_b is None else grad_b
        parts_w = alloc.empty(self.parts_shape, dtype=dtype, device=device)
        if not self.need_bias_grad:  # an unwritten stand-in pointer
            return parts_w, parts_w
        return parts_w, alloc.empty(self.parts_shape[:2], dtype=dtype, device=device)

    def __call__(self, g: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(grad_w, grad_b or None) from ``g`` and ``x`` as :func:`_nhwc` gives them."""
        out_dtype = x.dtype
        parts_w, parts_b = self._buffers(x)
        self.launch(g, x, parts_w, parts_b, *self.scalars)
        if self.direct:
            return parts_w, parts_b if self.need_bias_grad else None
        k, c, r, s = self.weight_shape
        k_g = k // self.groups
        grad_w = parts_w[0] if parts_w.shape[0] == 1 else parts_w.sum(0)
        # (K, R, S, C) as reduced is the channels-last (K, C, R, S): padding channels or
        # groups cut out make it one copy
        grad_w = grad_w.view(self.groups, self.k_pad, r, s, self.c_pad)[:, :k_g, :, :, :c]
        grad_w = grad_w.reshape(k, r, s, c).permute(0, 3, 1, 2)
        grad_w = grad_w.contiguous(memory_format=torch.channels_last).to(out_dtype)
        if not self.need_bias_grad:
            return grad_w, None
        grad_b = parts_b[0] if parts_b.shape[0] == 1 else parts_b.sum(0)
        return grad_w, grad_b.view(self.groups, self.k_pad)[:, :k_g].reshape(k).to(out_dtype)


_PLANS = PlanCache()


def conv2d_bwd_weight(
    grad_y: Tensor,
    x: Tensor,
    weight_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    need_bias_grad: bool,
    groups: int = 1,
    split: int | None = None,
    config: triton.Config | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(grad_w (K, C, R, S), grad_b (K,) or None) from grad_y (N, K, P, Q) and x (N, C, H, W).

    ``grad_y`` is the gradient of the convolution's output (a fused activation's
    derivative already applied: :func:`fastconv.kernels.epilogue.activation_bwd`). The
    kernel reads both in NHWC with the channels padded to a multiple of 16 (a copy where
    they are not already). The N*P*Q reduction is split across programs into an fp32
    workspace, then summed and cast to x's dtype (unsplit, the programs store the result in
    x's dtype directly: nothing to sum or cast); ``split`` overrides the number of
    programs (see :func:`wgrad_partition`) and ``config`` the autotuner's choice of config.
    grad_w (K, C, R, S) is channels-last, the order the kernel reduces in: no reordering
    copy (autograd copies it into a contiguous parameter's ``.grad``; a channels_last
    parameter takes it as it is). Planned once per signature of the call
    (:mod:`fastconv.kernels.plans`); a call with ``config`` plans afresh.
    """
    n, _, h, w = x.shape
    k, c, r, s = weight_shape  # c: input channels per group
    p, q = grad_y.shape[2:]
    rows = n * p * q
    if rows == 0 or k * c * r * s == 0:  # an empty reduction or an empty weight
        grad_w = alloc.zeros((k, r, s, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
        grad_b = alloc.zeros((k,), dtype=x.dtype, device=x.device) if need_bias_grad else None
        return grad_w, grad_b
    geometry = (*stride, *padding, *dilation)
    key = (signature(grad_y), signature(x), tuple(weight_shape), geometry, need_bias_grad,
           groups, split, dot_precision(x.dtype))  # fmt: skip
    plan = _PLANS.get(key) if config is None else None
    grad_y, x = _nhwc(grad_y, groups), _nhwc(x, groups)
    if plan is None:
        plan = _Wgrad(
            grad_y, x, rows, (k, c, r, s), geometry, need_bias_grad, groups, split, config
        )
        if config is None:
            _PLANS.put(key, plan)
    return plan(grad_y, x)
