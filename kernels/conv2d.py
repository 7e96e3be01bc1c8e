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

When the ReLU was fused, :func:`relu_grad` masks ``grad_y`` once (where the saved output
``y <= 0``) for both backward kernels. NaN follows torch: ``relu(NaN) = NaN`` and the
gradient passes where ``y`` is NaN (threshold_backward).

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
from fastconv.kernels.conv2d_wgrad import (
    conv2d_bwd_weight,
    wgrad_configs,
    wgrad_partition,
    wgrad_split,
)
from fastconv.kernels.launch import (
    INTERPRETER_CONFIGS,
    checked_grid,
    input_precision,
    launch,
    needs_int64,
    tile_config,
)
from fastconv.kernels.layout import memory_format_of

__all__ = [
    "conv2d_bwd_input",
    "conv2d_bwd_weight",
    "conv2d_fwd",
    "dgrad_configs",
    "fwd_configs",
    "needs_int64",
    "relu_grad",
    "wgrad_configs",
    "wgrad_partition",
    "wgrad_split",
]

Pair = tuple[int, int]

# --------------------------------------------------------------------------- autotune configs


# IEEE fp32 dots run on FMA units and hold more registers per tile: BLOCK_K 16 avoids spills.
_IEEE_BLOCK_K = 16


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


def _configs(
    tiles: list[tuple[int, int, int, int, int]], ieee: bool, interpreter: bool
) -> list[triton.Config]:
    if interpreter:
        return INTERPRETER_CONFIGS
    return [
        tile_config(m, n, min(k, _IEEE_BLOCK_K) if ieee else k, s, w) for m, n, k, s, w in tiles
    ]


def fwd_configs(ieee: bool = False, interpreter: bool = TRITON_INTERPRETER) -> list[triton.Config]:
    """Forward configs; ``interpreter=False`` gives the GPU list even under the interpreter."""
    return _configs(FWD_TILES, ieee, interpreter)


def dgrad_configs(
    ieee: bool = False, interpreter: bool = TRITON_INTERPRETER
) -> list[triton.Config]:
    """dgrad configs; ``interpreter=False`` gives the GPU list even under the interpreter."""
    return _configs(DGRAD_TILES, ieee, interpreter)


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
    stride_dxn,
    stride_dxc,
    stride_dxh,
    stride_dxw,
    # meta-parameters
    R: tl.constexpr,
    S: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """grad_x (N, C, H, W) from grad_y (N, K, P, Q) and w (K, C, R, S).

    grad_x[n, c, h, w] = sum_{k, r, s} g[n, k, p, q] * w[k, c, r, s] over the taps with
    h = p*stride_h - pad_h + r*dil_h (likewise w, q) and 0 <= p < P, 0 <= q < Q, where
    g = grad_y (a fused ReLU's mask already applied). Grid: (cdiv(N*cdiv(H, stride_h)*
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


# --------------------------------------------------------------------------- autotuners

# One autotuner per kernel and dot precision, keyed on the problem geometry (the autotuner
# adds the tensors' dtypes to the key). "ieee" serves fp32 with tf32 off.
_FWD_KEY = ["C", "K", "P", "Q", "R", "S", "stride_h", "stride_w"]
_DGRAD_KEY = ["C", "K", "H", "W", "R", "S", "stride_h", "stride_w"]
_conv2d_fwd_tuned = triton.autotune(fwd_configs(), _FWD_KEY)(_conv2d_fwd_kernel)
_conv2d_fwd_tuned_ieee = triton.autotune(fwd_configs(ieee=True), _FWD_KEY)(_conv2d_fwd_kernel)
_conv2d_dgrad_tuned = triton.autotune(dgrad_configs(), _DGRAD_KEY)(_conv2d_bwd_input_kernel)
_conv2d_dgrad_tuned_ieee = triton.autotune(dgrad_configs(ieee=True), _DGRAD_KEY)(
    _conv2d_bwd_input_kernel
)


# --------------------------------------------------------------------------- launchers


def _empty_like_format(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An empty (N, C, H, W) tensor of ``shape`` in ``like``'s memory format, dtype and device."""
    return alloc.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(like)
    )


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
        return checked_grid(grid, "conv2d forward")

    precision = input_precision(x.dtype)
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
    launch(tuned, _conv2d_fwd_kernel, config, grid, args, meta)
    return y


def conv2d_bwd_input(
    grad_y: Tensor,
    weight: Tensor,
    input_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    config: triton.Config | None = None,
) -> Tensor:
    """grad_x (N, C, H, W) of the conv from grad_y (N, K, P, Q) and weight (K, C, R, S).

    ``grad_y`` has a fused ReLU's mask already applied (:func:`relu_grad`). grad_x takes
    grad_y's memory format.
    """
    n, c, h, w = input_shape
    k, _, r, s = weight.shape
    p, q = grad_y.shape[2:]
    grad_x = _empty_like_format((n, c, h, w), grad_y)
    if grad_x.numel() == 0:
        return grad_x
    if grad_y.numel() == 0:
        return grad_x.zero_()
    pixels_per_phase = n * triton.cdiv(h, stride[0]) * triton.cdiv(w, stride[1])

    def grid(meta):
        grid = (
            triton.cdiv(pixels_per_phase, meta["BLOCK_M"]) * stride[0] * stride[1],
            triton.cdiv(c, meta["BLOCK_N"]),
        )
        return checked_grid(grid, "conv2d input gradient")

    precision = input_precision(grad_y.dtype)
    tuned = _conv2d_dgrad_tuned_ieee if precision == "ieee" else _conv2d_dgrad_tuned
    args = (
        grad_y, weight, grad_x,
        n, c, h, w, k, p, q, *stride, *padding, *dilation,
        *grad_y.stride(), *weight.stride(), *grad_x.stride(),
    )  # fmt: skip
    meta = dict(
        R=r, S=s, INPUT_PRECISION=precision,
        INDEX_64=needs_int64(pixels_per_phase, grad_y, weight, grad_x),
    )  # fmt: skip
    launch(tuned, _conv2d_bwd_input_kernel, config, grid, args, meta)
    return grad_x


def relu_grad(grad_y: Tensor, relu_output: Tensor) -> Tensor:
    """``grad_y`` where the fused ReLU's output ``relu_output > 0`` (or NaN), else 0.

    torch's threshold_backward: the gradient passes where y is NaN. Computed once per
    backward for both gradient kernels, in grad_y's memory format.
    """
    return torch.where(relu_output <= 0, 0.0, grad_y)
