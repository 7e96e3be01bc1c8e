"""Fused conv2d + bias + ReLU as Triton implicit-GEMM kernels, forward and backward.

Three kernels, each a tiled matrix product whose operands are gathered straight from the
4-D tensors (all four strides passed, so NCHW, channels_last and strided views work
without a copy), accumulating in fp32 and casting on store:

* forward: ``y = relu?(conv2d(x, w) + b)``; M = N*P*Q output pixels, N = K output
  channels, reduction = C*R*S (one loop over taps r, s and C in BLOCK_K chunks).
* dgrad: ``grad_x``; M = N*H*W input pixels, N = C input channels, reduction = K*R*S.
  Pixels are grouped by their stride phase (h mod stride_h, w mod stride_w), so every
  (r, s) tap either hits a whole tile or none of it, and the misses are skipped: no work
  is wasted on stride > 1.
* wgrad: ``grad_w`` (and ``grad_b`` in the same pass); M = K, N = C*R*S, reduction =
  N*P*Q split across programs (split-K) into an fp32 workspace summed afterwards, which
  keeps the result deterministic.

When the ReLU was fused, the backward kernels zero ``grad_y`` where ``y <= 0`` as they load
it, from the saved forward output: no masked-gradient tensor is materialized. NaN follows
torch: ``relu(NaN) = NaN`` and the gradient passes where ``y`` is NaN (threshold_backward).

fp32 inputs use tf32 tensor cores exactly when ``torch.backends.cudnn.allow_tf32`` is on
(as cuDNN does) and IEEE fp32 otherwise. Batch offsets are always int64; when a pixel count
or a tensor's element span can pass 2**31 (:func:`needs_int64`), the launchers set
``INDEX_64`` and every pixel and channel index is int64 too (int32 otherwise: fewer
registers). Every grid axis stays within CUDA's limits (x < 2**31, y and z <= 65,535).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import alloc
from fastconv.kernels.layout import element_span, memory_format_of

__all__ = [
    "conv2d_bwd_input",
    "conv2d_bwd_weight",
    "conv2d_fwd",
    "dgrad_configs",
    "fwd_configs",
    "needs_int64",
    "wgrad_configs",
    "wgrad_partition",
    "wgrad_split",
]

Pair = tuple[int, int]

# wgrad split-K: rows (output pixels) reduced by one program at least, and the programs
# aimed for, counted in nominal 64 x 64 tiles of the (K, C*R*S) gradient.
WGRAD_ROWS_PER_SPLIT = 64 if TRITON_INTERPRETER else 512
WGRAD_TARGET_PROGRAMS = 1024
WGRAD_NOMINAL_TILE = 64 * 64
# Cap on the fp32 wgrad workspace (elements) so huge weights do not split needlessly.
WGRAD_MAX_WORKSPACE = 1 << 26


# --------------------------------------------------------------------------- autotune configs


def _config(block_m: int, block_n: int, block_k: int, stages: int, warps: int) -> triton.Config:
    meta = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    return triton.Config(meta, num_stages=stages, num_warps=warps)


# Under the interpreter the autotuner would time configs with CUDA events: one config only.
_INTERPRETER_CONFIGS = [_config(64, 16, 16, 1, 1)]
# IEEE fp32 dots run on FMA units and hold more registers per tile: BLOCK_K 16 avoids spills.
_IEEE_BLOCK_K = 16


# The flattened tap x channel-chunk loops below (``tap = step // c_chunks; r = tap // S``)
# are the loop shape of the Inductor convolution that 8 warps miscompile (pytorch issue
# 173068; Inductor caps those templates at 4 warps): every config here uses 4 warps at most
# (tests/test_autotune_configs.py checks it, docs/decisions.md says why).
MAX_NUM_WARPS = 4

# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps) per kernel.
# 4 warps leave each thread twice the tile of 8: the old 128x64 and 64x128 tiles spilled
# (up to 344 bytes of stack, compile gate), so the big tiles are 64x64 now.
FWD_TILES = [  # output pixels, output channels, input channels
    (64, 64, 16, 3, 4),
    (64, 32, 32, 4, 4),  # small layers
    (32, 64, 32, 4, 4),  # few pixels, many output channels (deep layers)
]
DGRAD_TILES = [  # input pixels, input channels, output channels
    (64, 64, 16, 3, 4),
    (64, 32, 16, 4, 4),
    (32, 64, 16, 4, 4),
]
WGRAD_TILES = [  # output channels, C*R*S, output pixels
    (64, 64, 16, 3, 4),
    (64, 32, 32, 4, 4),  # few output channels
    (32, 64, 16, 4, 4),
]


def _configs(
    tiles: list[tuple[int, int, int, int, int]], ieee: bool, interpreter: bool
) -> list[triton.Config]:
    if interpreter:
        return _INTERPRETER_CONFIGS
    return [_config(m, n, min(k, _IEEE_BLOCK_K) if ieee else k, s, w) for m, n, k, s, w in tiles]


def fwd_configs(ieee: bool = False, interpreter: bool = TRITON_INTERPRETER) -> list[triton.Config]:
    """Forward configs; ``interpreter=False`` gives the GPU list even under the interpreter."""
    return _configs(FWD_TILES, ieee, interpreter)


def dgrad_configs(
    ieee: bool = False, interpreter: bool = TRITON_INTERPRETER
) -> list[triton.Config]:
    """dgrad configs; ``interpreter=False`` gives the GPU list even under the interpreter."""
    return _configs(DGRAD_TILES, ieee, interpreter)


def wgrad_configs(
    ieee: bool = False, interpreter: bool = TRITON_INTERPRETER
) -> list[triton.Config]:
    """wgrad configs; ``interpreter=False`` gives the GPU list even under the interpreter."""
    return _configs(WGRAD_TILES, ieee, interpreter)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _conv2d_fwd_kernel(
    # pointers
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
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
    # strides
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_wk,
    stride_wc,
    stride_wr,
    stride_ws,
    stride_yn,
    stride_yk,
    stride_yp,
    stride_yq,
    # meta-parameters
    R: tl.constexpr,
    S: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    APPLY_RELU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """y (N, K, P, Q) = relu?(conv2d(x (N, C, H, W), w (K, C, R, S)) + b (K,)).

    P = (H + pad_top + pad_bottom - dil_h*(R-1) - 1) // stride_h + 1 (likewise Q); the
    bottom/right padding is implied by P, Q. Grid: (cdiv(N*P*Q, BLOCK_M), cdiv(K, BLOCK_N)).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if INDEX_64:  # N*P*Q or an offset within one sample can pass 2**31: pixel math in i64
        pid_m = pid_m.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixel (n, p, q), flattened
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel k
    offs_k = tl.arange(0, BLOCK_K)  # input channel c within a chunk
    if INDEX_64:  # channel * channel-stride can pass 2**31 within one sample too
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    q = offs_m % Q
    p = (offs_m // Q) % P
    n = (offs_m // Q // P).to(tl.int64)
    mask_m = n < N  # offs_m < N*P*Q without forming the product, which can pass 2**31
    mask_n = offs_n < K
    x_base = x_ptr + n * stride_xn
    h0 = p * stride_h - pad_h
    w0 = q * stride_w - pad_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap r, s) x (channel chunk), so the pipeliner overlaps loads across
    # taps too (a 3-channel first layer has a single chunk per tap).
    c_chunks = tl.cdiv(C, BLOCK_K)
    for step in range(R * S * c_chunks):
        tap = step // c_chunks
        c = (step % c_chunks) * BLOCK_K + offs_k
        r = tap // S
        s = tap % S
        h = h0 + r * dil_h
        w = w0 + s * dil_w
        mask_hw = mask_m & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        mask_c = c < C
        x_offs = (h * stride_xh + w * stride_xw)[:, None] + c[None, :] * stride_xc
        x_tile = tl.load(
            x_base[:, None] + x_offs, mask=mask_hw[:, None] & mask_c[None, :], other=0.0
        )
        w_offs = r * stride_wr + s * stride_ws + c[:, None] * stride_wc
        w_tile = tl.load(
            w_ptr + w_offs + offs_n[None, :] * stride_wk,
            mask=mask_c[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(x_tile, w_tile, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if APPLY_RELU:  # torch's relu keeps NaN; tl.maximum compiles to a NaN-dropping max.f32
        acc = tl.where(acc < 0.0, 0.0, acc)
    y_offs = n * stride_yn + p * stride_yp + q * stride_yq
    y_ptrs = y_ptr + y_offs[:, None] + offs_n[None, :] * stride_yk
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv2d_bwd_input_kernel(
    # pointers
    dy_ptr,
    w_ptr,
    y_ptr,
    dx_ptr,
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
    # strides
    stride_dyn,
    stride_dyk,
    stride_dyp,
    stride_dyq,
    stride_wk,
    stride_wc,
    stride_wr,
    stride_ws,
    stride_yn,
    stride_yk,
    stride_yp,
    stride_yq,
    stride_dxn,
    stride_dxc,
    stride_dxh,
    stride_dxw,
    # meta-parameters
    R: tl.constexpr,
    S: tl.constexpr,
    RELU_MASK: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """grad_x (N, C, H, W) from grad_y (N, K, P, Q) and w (K, C, R, S).

    grad_x[n, c, h, w] = sum_{k, r, s} g[n, k, p, q] * w[k, c, r, s] over the taps with
    h = p*stride_h - pad_h + r*dil_h (likewise w, q) and 0 <= p < P, 0 <= q < Q, where
    g = grad_y * !(y <= 0) if RELU_MASK else grad_y. Grid: (cdiv(N*cdiv(H, stride_h)*
    cdiv(W, stride_w), BLOCK_M) * stride_h*stride_w, cdiv(C, BLOCK_N)): axis 0 is (pixel
    tile, stride phase (h mod stride_h, w mod stride_w)), the phase shared by the tile's
    pixels, so a tap r either divides (h + pad_h - r*dil_h) by stride_h for the whole tile or
    for none of it.
    """
    # Axis 0 holds (pixel tile, phase) with the phase fastest: stride_h*stride_w can pass
    # the 65,535 limit of grid axes 1 and 2. With stride 1 both divisions fold away.
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = pid % (stride_h * stride_w)
    pid_m = pid // (stride_h * stride_w)
    phase_h = phase // stride_w
    phase_w = phase % stride_w
    H_phase = tl.cdiv(H, stride_h)  # pixels per phase row (an upper bound, masked below)
    W_phase = tl.cdiv(W, stride_w)
    if INDEX_64:  # N*H*W or an offset within one sample can pass 2**31: pixel math in i64
        pid_m = pid_m.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixel of this phase, flattened
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel c
    offs_k = tl.arange(0, BLOCK_K)  # output channel k within a chunk
    if INDEX_64:  # channel * channel-stride can pass 2**31 within one sample too
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    j = offs_m % W_phase
    i = (offs_m // W_phase) % H_phase
    n = (offs_m // W_phase // H_phase).to(tl.int64)
    h = phase_h + i * stride_h
    w = phase_w + j * stride_w
    mask_m = (n < N) & (h < H) & (w < W)  # n < N: offs_m < N*H_phase*W_phase, no product
    mask_n = offs_n < C
    dy_base = dy_ptr + n * stride_dyn
    y_base = y_ptr + n * stride_yn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap r, s) x (output-channel chunk), as in the forward.
    k_chunks = tl.cdiv(K, BLOCK_K)
    for step in range(R * S * k_chunks):
        tap = step // k_chunks
        k = (step % k_chunks) * BLOCK_K + offs_k
        r = tap // S
        s = tap % S
        # Does stride_h divide (h + pad_h - r*dil_h)? Written with non-negative operands.
        hit_h = (phase_h + pad_h + r * dil_h * (stride_h - 1)) % stride_h == 0
        hit_w = (phase_w + pad_w + s * dil_w * (stride_w - 1)) % stride_w == 0
        p = (h + pad_h - r * dil_h) // stride_h  # exact where hit_h: same in C and Python
        q = (w + pad_w - s * dil_w) // stride_w
        mask_pq = mask_m & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        # A tap whose stride phase misses the tile's is skipped. With stride 1 the JIT
        # specializes stride_h == 1, so the test folds away and the loop has no branch.
        if hit_h & hit_w:
            mask_k = k < K
            mask_g = mask_pq[:, None] & mask_k[None, :]
            g = tl.load(
                dy_base[:, None]
                + (p * stride_dyp + q * stride_dyq)[:, None]
                + k[None, :] * stride_dyk,
                mask=mask_g,
                other=0.0,
            )
            if RELU_MASK:
                y = tl.load(
                    y_base[:, None]
                    + (p * stride_yp + q * stride_yq)[:, None]
                    + k[None, :] * stride_yk,
                    mask=mask_g,
                    other=0.0,
                )
                g = tl.where(y <= 0, 0.0, g)  # as torch's threshold_backward: y = NaN passes g
            w_offs = r * stride_wr + s * stride_ws + k[:, None] * stride_wk
            w_tile = tl.load(
                w_ptr + w_offs + offs_n[None, :] * stride_wc,
                mask=mask_k[:, None] & mask_n[None, :],
                other=0.0,
            )
            acc = tl.dot(g.to(w_tile.dtype), w_tile, acc, input_precision=INPUT_PRECISION)

    dx_offs = n * stride_dxn + h * stride_dxh + w * stride_dxw
    dx_ptrs = dx_ptr + dx_offs[:, None] + offs_n[None, :] * stride_dxc
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _conv2d_bwd_weight_kernel(
    # pointers
    dy_ptr,
    x_ptr,
    y_ptr,
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
    stride_yn,
    stride_yk,
    stride_yp,
    stride_yq,
    # meta-parameters
    R: tl.constexpr,
    S: tl.constexpr,
    RELU_MASK: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """Partial grad_w (SPLIT, K, C*R*S) and grad_b (SPLIT, K) in fp32 over a slice of N*P*Q.

    grad_w[k, c, r, s] = sum_{n, p, q} g[n, k, p, q] * x[n, c, p*stride_h - pad_h + r*dil_h,
    q*stride_w - pad_w + s*dil_w] and grad_b[k] = sum_{n, p, q} g[n, k, p, q], with
    g = grad_y * !(y <= 0) if RELU_MASK else grad_y (grad_y, y: (N, K, P, Q); x: (N, C, H, W)).
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
        if RELU_MASK:
            y_pix = n * stride_yn + p * stride_yp + q * stride_yq
            y = tl.load(
                y_ptr + offs_m[:, None] * stride_yk + y_pix[None, :], mask=mask_g, other=0.0
            )
            g = tl.where(y <= 0, 0.0, g)  # as torch's threshold_backward: y = NaN passes g
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


# --------------------------------------------------------------------------- autotuners

# One autotuner per kernel and dot precision, keyed on the problem geometry (the autotuner
# adds the tensors' dtypes to the key). "ieee" serves fp32 with tf32 off.
_FWD_KEY = ["C", "K", "P", "Q", "R", "S", "stride_h", "stride_w"]
_DGRAD_KEY = ["C", "K", "H", "W", "R", "S", "stride_h", "stride_w"]
_WGRAD_KEY = ["C", "K", "P", "Q", "R", "S", "rows_per_split"]
_conv2d_fwd_tuned = triton.autotune(fwd_configs(), _FWD_KEY)(_conv2d_fwd_kernel)
_conv2d_fwd_tuned_ieee = triton.autotune(fwd_configs(ieee=True), _FWD_KEY)(_conv2d_fwd_kernel)
_conv2d_dgrad_tuned = triton.autotune(dgrad_configs(), _DGRAD_KEY)(_conv2d_bwd_input_kernel)
_conv2d_dgrad_tuned_ieee = triton.autotune(dgrad_configs(ieee=True), _DGRAD_KEY)(
    _conv2d_bwd_input_kernel
)
_conv2d_wgrad_tuned = triton.autotune(wgrad_configs(), _WGRAD_KEY)(_conv2d_bwd_weight_kernel)
_conv2d_wgrad_tuned_ieee = triton.autotune(wgrad_configs(ieee=True), _WGRAD_KEY)(
    _conv2d_bwd_weight_kernel
)


# --------------------------------------------------------------------------- launchers


# Hardware grid limits (CUDA): axis 0 below 2**31, axes 1 and 2 at most 65,535.
MAX_GRID = (2**31 - 1, 65_535, 65_535)


def _checked_grid(grid: tuple[int, ...], what: str) -> tuple[int, ...]:
    """``grid``, or a ValueError naming the axis that passes its hardware limit."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID, strict=False)):
        if size > limit:
            raise ValueError(
                f"{what}: grid axis {axis} needs {size} programs, past the limit of {limit}"
            )
    return grid


def needs_int64(pixels: int, *tensors: Tensor) -> bool:
    """Whether a kernel must do its pixel and offset math in int64 (``INDEX_64``).

    ``pixels`` is the flattened pixel count the kernel walks (N*P*Q, or N*H*W for dgrad).
    Conservative by a factor of two: a tile or split-K slice past the end (a masked lane, or
    ``row_start + rows_per_split``) stays below 2**31 too, so a masked lane cannot wrap round
    to a negative index that its mask would accept.
    """
    largest = max([pixels, *(element_span(t) for t in tensors)])
    return 2 * largest + 4096 >= 2**31


def _launch(tuned, kernel, config: triton.Config | None, grid, args, meta) -> None:
    """Launch through the autotuner, or with exactly ``config`` (tests run every config)."""
    if config is None:
        tuned[grid](*args, **meta)
    else:
        kernel[grid](
            *args, **meta, **config.kwargs,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip


def _input_precision(dtype: torch.dtype) -> str:
    """tf32 for fp32 exactly when cuDNN may use it; fp16/bf16 dots are unaffected."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def _empty_like_format(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An empty (N, C, H, W) tensor of ``shape`` in ``like``'s memory format, dtype and device."""
    return alloc.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(like)
    )


def _relu_output_or_placeholder(relu_output: Tensor | None, grad_y: Tensor) -> Tensor:
    """The saved output for the ReLU mask, or ``grad_y`` as an unread stand-in pointer."""
    return grad_y if relu_output is None else relu_output


def conv2d_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    output_size: Pair,
    apply_relu: bool,
    config: triton.Config | None = None,
) -> Tensor:
    """``relu?(conv2d(x, weight) + bias)``: x (N, C, H, W), weight (K, C, R, S) -> (N, K, P, Q).

    ``padding`` is the top/left padding; ``output_size`` (P, Q) implies the bottom/right one.
    The output has x's dtype and memory format (NCHW or channels_last). ``config`` runs that
    autotune config instead of the autotuner's choice.
    """
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    p, q = output_size
    y = _empty_like_format((n, k, p, q), x)
    if y.numel() == 0:
        return y
    b = weight if bias is None else bias  # placeholder pointer, never read without HAS_BIAS

    def grid(meta):
        grid = triton.cdiv(n * p * q, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_N"])
        return _checked_grid(grid, "conv2d forward")

    precision = _input_precision(x.dtype)
    tuned = _conv2d_fwd_tuned_ieee if precision == "ieee" else _conv2d_fwd_tuned
    args = (
        x, weight, b, y,
        n, c, h, w, k, p, q, *stride, *padding, *dilation,
        *x.stride(), *weight.stride(), *y.stride(),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, HAS_BIAS=bias is not None, APPLY_RELU=apply_relu,
        INPUT_PRECISION=precision, INDEX_64=needs_int64(n * p * q, x, weight, y),
    )  # fmt: skip
    _launch(tuned, _conv2d_fwd_kernel, config, grid, args, meta)
    return y


def conv2d_bwd_input(
    grad_y: Tensor,
    weight: Tensor,
    relu_output: Tensor | None,
    input_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    config: triton.Config | None = None,
) -> Tensor:
    """grad_x (N, C, H, W) of the conv from grad_y (N, K, P, Q) and weight (K, C, R, S).

    ``relu_output`` is the forward output y when the ReLU was fused (grad_y is zeroed where
    y <= 0 inside the kernel), else None. grad_x takes grad_y's memory format.
    """
    n, c, h, w = input_shape
    k, _, r, s = weight.shape
    p, q = grad_y.shape[2:]
    grad_x = _empty_like_format((n, c, h, w), grad_y)
    if grad_x.numel() == 0:
        return grad_x
    if grad_y.numel() == 0:
        return grad_x.zero_()
    y = _relu_output_or_placeholder(relu_output, grad_y)
    pixels_per_phase = n * triton.cdiv(h, stride[0]) * triton.cdiv(w, stride[1])

    def grid(meta):
        grid = (
            triton.cdiv(pixels_per_phase, meta["BLOCK_M"]) * stride[0] * stride[1],
            triton.cdiv(c, meta["BLOCK_N"]),
        )
        return _checked_grid(grid, "conv2d input gradient")

    precision = _input_precision(grad_y.dtype)
    tuned = _conv2d_dgrad_tuned_ieee if precision == "ieee" else _conv2d_dgrad_tuned
    args = (
        grad_y, weight, y, grad_x,
        n, c, h, w, k, p, q, *stride, *padding, *dilation,
        *grad_y.stride(), *weight.stride(), *y.stride(), *grad_x.stride(),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, RELU_MASK=relu_output is not None, INPUT_PRECISION=precision,
        INDEX_64=needs_int64(pixels_per_phase, grad_y, weight, y, grad_x),
    )  # fmt: skip
    _launch(tuned, _conv2d_bwd_input_kernel, config, grid, args, meta)
    return grad_x


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
    relu_output: Tensor | None,
    weight_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    need_bias_grad: bool,
    split: int | None = None,
    config: triton.Config | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(grad_w (K, C, R, S), grad_b (K,) or None) from grad_y (N, K, P, Q) and x (N, C, H, W).

    ``relu_output`` is the forward output y when the ReLU was fused, else None. The N*P*Q
    reduction is split across programs into an fp32 workspace, then summed and cast to x's
    dtype; ``split`` overrides the number of programs (see :func:`wgrad_partition`) and
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
    y = _relu_output_or_placeholder(relu_output, grad_y)

    def grid(meta):
        grid = triton.cdiv(k, meta["BLOCK_M"]), triton.cdiv(crs, meta["BLOCK_N"]), split
        return _checked_grid(grid, "conv2d weight gradient")

    precision = _input_precision(x.dtype)
    tuned = _conv2d_wgrad_tuned_ieee if precision == "ieee" else _conv2d_wgrad_tuned
    args = (
        grad_y, x, y, grad_w_parts, grad_b_parts,
        n, c, h, w, k, p, q, *stride, *padding, *dilation, rows_per_split,
        *grad_y.stride(), *x.stride(), *y.stride(),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, RELU_MASK=relu_output is not None, BIAS_GRAD=need_bias_grad,
        INPUT_PRECISION=precision, INDEX_64=needs_int64(rows, grad_y, x, y, grad_w_parts),
    )  # fmt: skip
    _launch(tuned, _conv2d_bwd_weight_kernel, config, grid, args, meta)
    grad_w = grad_w_parts.sum(0).view(k, c, r, s).to(x.dtype)
    grad_b = grad_b_parts.sum(0).to(x.dtype) if need_bias_grad else None
    return grad_w, grad_b
