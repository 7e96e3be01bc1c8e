"""Fused conv2d + epilogue as Triton implicit-GEMM kernels: forward and input gradient.

One kernel, :func:`_implicit_gemm_kernel`, computes both on channels-last (NHWC) operands,
accumulating in fp32 and casting on store:

* forward: ``y = act(conv2d(x, w) * scale + b + residual)`` (the epilogue is
  :mod:`fastconv.kernels.epilogue`); M = N*P*Q output pixels, N = K output channels,
  reduction = (r, s) taps x C channels in BLOCK_K chunks.
* dgrad: ``grad_x``; M = the input pixels of one stride phase (h mod stride_h, w mod
  stride_w), N = C input channels, reduction = the taps that hit that phase x K channels.
  Every step is a whole tile: no tap is tested or skipped inside the loop at stride > 1.

The weight gradient is :mod:`fastconv.kernels.conv2d_wgrad`. Channels are the contiguous
axis of every operand, so the main loop's loads are 16-byte vectors that Triton turns into
asynchronous copies (cp.async / LDGSTS) into a 3-4 stage shared-memory ring feeding wgmma
(sm_90) or mma.sync (sm_80). NCHW tensors are read through one channels-last copy and NCHW
results written through one: an NCHW loader/storer in the kernel gathers 2-byte elements
and kept the loop synchronous (see docs/decisions.md for the figures).

The backward kernels take the gradient of the pre-activation, computed once by
:func:`fastconv.kernels.epilogue.activation_bwd`.

fp32 inputs use tf32 tensor cores exactly when ``torch.backends.cudnn.allow_tf32`` is on
(as cuDNN does) and IEEE fp32 otherwise. Batch offsets are always int64; when a pixel count
or a tensor's element span can pass 2**31 (:func:`needs_int64`), the launchers set
``INDEX_64`` and every pixel and channel index is int64 too (int32 otherwise: fewer
registers). The grid is one axis (below 2**31 programs, checked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import conv2d_wgrad
from fastconv.kernels.conv2d_depthwise import (
    depthwise_bwd_input,
    depthwise_bwd_weight,
    depthwise_fwd,
    is_depthwise,
)
from fastconv.kernels.conv2d_stem import conv2d_stem_fwd, uses_stem_path
from fastconv.kernels.conv2d_tma import TmaForward, TmaInputGrad, tma_applies
from fastconv.kernels.conv2d_wgrad import wgrad_configs, wgrad_partition, wgrad_split
from fastconv.kernels.epilogue import IDENTITY, Epilogue, fused_epilogue, tile_fits_epilogue
from fastconv.kernels.launch import (
    INTERPRETER_CONFIGS,
    WIDE_TILES_ENABLED,
    cdiv,
    checked_grid,
    dot_kind,
    input_precision,
    needs_int64,
    tile_config,
)
from fastconv.kernels.layout import nhwc, nhwc_output, nhwc_strides
from fastconv.kernels.plans import PlanCache, TunedLaunch, dot_precision, signature
from fastconv.kernels.taps import dgrad_taps, forward_taps, load_phase_taps

__all__ = [
    "conv2d_bwd_input",
    "conv2d_bwd_weight",
    "conv2d_fwd",
    "conv_configs",
    "needs_int64",
    "wgrad_configs",
    "wgrad_partition",
    "wgrad_split",
]

Pair = tuple[int, int]

# --------------------------------------------------------------------------- autotune configs

# (BLOCK_M pixels, BLOCK_N output channels, BLOCK_K reduction channels, stages, warps) per
# dot kind. One warpgroup (4 warps) per tile, so a 64xN tile is one wgmma of width N on
# sm_90: N = 128 tiles for the channel counts of real networks (64-512), narrow ones for few
# output channels (a 3-channel dgrad, a 32-channel stem), which the pruner keeps only there.
TILES = {
    "fp16": [  # fp16 and bf16
        (128, 128, 32, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 64, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (64, 32, 32, 4, 4),
    ],
    "tf32": [  # half the fp16 BLOCK_K: the same bytes per stage; 128x128 spilled (4 warps)
        (64, 128, 32, 4, 4),
        (128, 64, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (64, 32, 16, 4, 4),
    ],
    "ieee": [  # fp32 with tf32 off: FMA dots keep operands in registers, small tiles
        (64, 64, 16, 3, 4),
        (64, 32, 16, 4, 4),
    ],
}
# Two warpgroups (8 warps), appended behind the wide-tiles switch (launch.WIDE_TILES_ENABLED):
# 128 accumulator registers per thread, as 128x128 at 4 warps. BLOCK_K 32: at 64 (3 stages)
# 256x128 spilled 32 bytes on sm_80. tf32 has none: 128x256 and 256x128 spilled on sm_80 and
# sm_90 at BLOCK_K 32 and 16 alike (8-288 bytes; compile gate, docs/decisions.md).
WIDE_TILES = {
    "fp16": [(128, 256, 32, 4, 8), (256, 128, 32, 4, 8)],
    "tf32": [],
    "ieee": [],  # FMA dots: no warpgroup MMA to widen
}


def conv_configs(
    kind: str = "fp16", interpreter: bool = TRITON_INTERPRETER, wide: bool = WIDE_TILES_ENABLED
) -> list[triton.Config]:
    """Configs of the implicit-GEMM kernel (forward and dgrad share it) for a dot ``kind``:
    "fp16" (fp16 and bf16), "tf32" or "ieee" (fp32 with tf32 off). ``interpreter=False``
    gives the GPU list even under the interpreter (tests run every config); ``wide`` appends
    the 8-warp tiles (default: the ``FASTCONV_WIDE_TILES`` switch)."""
    if interpreter:
        return INTERPRETER_CONFIGS
    return [tile_config(*tile) for tile in TILES[kind] + (WIDE_TILES[kind] if wide else [])]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop the tiles much wider than the output channels (their columns would be padding),
    and the largest ones where the epilogue holds a second tile (``tile_fits_epilogue``)."""
    cout = named_args["COUT"]

    def useful(c: triton.Config) -> bool:
        block_m, block_n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        return block_n <= max(32, 2 * cout) and tile_fits_epilogue(block_m * block_n, kwargs)

    return [c for c in configs if useful(c)] or configs


# --------------------------------------------------------------------------- kernel


@triton.jit
def _implicit_gemm_kernel(
    # pointers
    a_ptr,
    b_ptr,
    bias_ptr,
    out_ptr,
    taps_ptr,
    scale_ptr,
    residual_ptr,
    preact_ptr,
    negative_slope,
    # shapes
    N,
    ROWS_H,
    ROWS_W,
    A_H,
    A_W,
    CIN,
    COUT,
    OUT_H,
    OUT_W,
    PHASES,
    GROUPS,
    # geometry
    row_step_h,
    row_step_w,
    tap_step_h,
    tap_step_w,
    weight_step_r,
    weight_step_s,
    out_step_h,
    out_step_w,
    # strides (a and out are channels-last: channel stride 1)
    stride_an,
    stride_ah,
    stride_aw,
    stride_bg,
    stride_bo,
    stride_bc,
    stride_br,
    stride_bs,
    stride_on,
    stride_oh,
    stride_ow,
    # meta-parameters
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
    """out (N, G*COUT, OUT_H, OUT_W) = act(sum over taps of a[tap-shifted rows] @ b[tap]
    * scale + bias + residual), the epilogue of :func:`fastconv.kernels.epilogue.fused_epilogue`
    (dgrad: none).

    One implicit GEMM for the forward and the input gradient: a (N, A_H, A_W, G*CIN)
    channels-contiguous, b (G, COUT, R, S, CIN) at strides (stride_bg, stride_bo, stride_br,
    stride_bs, stride_bc), G = GROUPS independent GEMMs (grouped convolution): group g reads
    a's channels [g*CIN, (g+1)*CIN) and b's group g and writes output channels [g*COUT,
    (g+1)*COUT).
    A program computes a (BLOCK_M rows x BLOCK_N output channels) tile of one group, a row
    being the pixel (n, i, j) of an (N, ROWS_H, ROWS_W) grid. Its taps come from row
    ``phase`` of the int32 table ``taps_ptr`` (PHASES, 8): (r0, count_r, h0, s0, count_s,
    w0, out_h0, out_w0). Tap
    (t, u), 0 <= t < count_r, 0 <= u < count_s, multiplies the a pixel at
        h = i*row_step_h + h0 + t*tap_step_h,   w = j*row_step_w + w0 + u*tap_step_w
    (zero outside 0 <= h < A_H, 0 <= w < A_W) by the weight tap
        (r0 + t*weight_step_r, s0 + u*weight_step_s),
    and the row's result goes to out[n, :, out_h0 + i*out_step_h, out_w0 + j*out_step_w]
    where that is inside (OUT_H, OUT_W).

    Forward: a = x, b = w as (K, R, S, C) (stride_bc 1), rows = output pixels (n, p, q), one
    phase (0, R, -pad_h, 0, S, -pad_w, 0, 0), row steps = stride, tap steps = dilation.
    dgrad: a = grad_y, b = w as (C, R, S, K): the channels-last weight read in place
    (stride_bo 1, stride_bc its K stride) or a transposed copy, rows = the input pixels of
    one stride phase (h = out_h0 + i*stride_h), taps = the (r, s) whose stride phase hits it
    (a progression), so no tap is skipped inside the loop and every step is a full tile.

    The main loop walks (t, u, channel chunk) with counters advanced by adds and compares:
    no division; a row's address is its base plus one scalar per tap. Grid: one axis,
    cdiv(N*ROWS_H*ROWS_W, BLOCK_M) * PHASES * GROUPS * cdiv(COUT, BLOCK_N) programs, channel
    tiles fastest (they share the a rows in L2), then groups, then phases.
    """
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(COUT, BLOCK_N)
    pid_n = pid % n_tiles
    group = (pid // n_tiles) % GROUPS
    pid_mp = pid // n_tiles // GROUPS
    phase = pid_mp % PHASES
    pid_m = pid_mp // PHASES
    r0, count_r, h0, s0, count_s, w0, out_h0, out_w0 = load_phase_taps(taps_ptr, phase)

    if INDEX_64:  # a pixel count or an offset within one sample can pass 2**31
        pid_m = pid_m.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row (n, i, j), flattened
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel
    offs_k = tl.arange(0, BLOCK_K)  # reduction channel within a chunk
    if INDEX_64:
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    j = offs_m % ROWS_W
    i = (offs_m // ROWS_W) % ROWS_H
    n = (offs_m // ROWS_W // ROWS_H).to(tl.int64)
    mask_m = n < N  # offs_m < N*ROWS_H*ROWS_W without forming the product
    mask_n = offs_n < COUT
    # Tap (t, u) reads a[n, h_row + dh, w_row + dw] with the scalar (dh, dw) of the tap.
    h_row = i * row_step_h + h0
    w_row = j * row_step_w + w0
    a_rows = a_ptr + group * CIN + n * stride_an + h_row * stride_ah + w_row * stride_aw
    out_channels = group * COUT + offs_n  # of the whole output (and rows of b)
    b_cols = b_ptr + group.to(tl.int64) * stride_bg + offs_n * stride_bo
    b_cols += r0 * stride_br + s0 * stride_bs

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_BIAS and not HAS_SCALE:  # the accumulator starts at the bias
        bias = tl.load(bias_ptr + out_channels, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    c_chunks = tl.cdiv(CIN, BLOCK_K)
    c0 = 0  # channel chunk start
    t = 0  # tap counters
    u = 0
    for _ in range(count_r * count_s * c_chunks):
        dh = t * tap_step_h
        dw = u * tap_step_w
        inside = (h_row >= -dh) & (h_row < A_H - dh) & (w_row >= -dw) & (w_row < A_W - dw)
        c = c0 + offs_k
        mask_c = c < CIN
        a_tap = a_rows + (dh * stride_ah + dw * stride_aw)
        a_tile = tl.load(
            a_tap[:, None] + c[None, :],
            mask=(mask_m & inside)[:, None] & mask_c[None, :],
            other=0.0,
        )
        b_tap = b_cols + (t * weight_step_r * stride_br + u * weight_step_s * stride_bs)
        b_tile = tl.load(
            b_tap[None, :] + c[:, None] * stride_bc,
            mask=mask_c[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(a_tile, b_tile, acc, input_precision=INPUT_PRECISION)
        # Next (t, u, chunk): carries by compare, no division.
        c0 += BLOCK_K
        next_tap = c0 >= CIN
        c0 = tl.where(next_tap, 0, c0)
        u += next_tap.to(tl.int32)
        next_row = u >= count_s
        u = tl.where(next_row, 0, u)
        t += next_row.to(tl.int32)

    out_h = out_h0 + i * out_step_h
    out_w = out_w0 + j * out_step_w
    mask_out = mask_m & (out_h < OUT_H) & (out_w < OUT_W)
    out_rows = n * stride_on + out_h * stride_oh + out_w * stride_ow
    out_offs = out_rows[:, None] + out_channels[None, :]
    mask = mask_out[:, None] & mask_n[None, :]
    acc = fused_epilogue(
        acc, out_channels[None, :], mask_n[None, :], out_offs, mask,
        scale_ptr, bias_ptr, residual_ptr, preact_ptr, negative_slope,
        HAS_SCALE, HAS_BIAS and HAS_SCALE, HAS_RESIDUAL, SAVE_PREACT, ACTIVATION,
    )  # fmt: skip
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# One autotuner per dot kind, keyed on the problem geometry (the autotuner adds the dtypes);
# the pruner drops tiles much wider than COUT.
_KEY = ["N", "ROWS_H", "ROWS_W", "CIN", "COUT", "PHASES", "row_step_h", "row_step_w"]
_TUNED = {
    kind: triton.autotune(
        conv_configs(kind), _KEY, prune_configs_by={"early_config_prune": _prune_configs}
    )(_implicit_gemm_kernel)
    for kind in TILES
}


# --------------------------------------------------------------------------- launchers


def _b_strides(b: Tensor, groups: int, transposed: bool) -> tuple[int, int, int, int, int]:
    """(group, output, reduction, r, s) strides of the GEMM's b from ``b`` (rows, cols, R, S),
    a weight-shaped tensor with unit ``cols`` stride: its rows are the GEMM's outputs and its
    cols the reduction; ``transposed`` (the input gradient reading the weight in place) swaps
    the two. A size-1 tap dimension's stride is 0 (see :func:`nhwc_strides`)."""
    rows_stride, cols_stride, r_stride, s_stride = b.stride()
    tap_strides = tuple(0 if b.shape[d] == 1 else b.stride(d) for d in (2, 3))
    if transposed:
        return (b.shape[0] // groups * rows_stride, cols_stride, rows_stride, *tap_strides)
    return (b.shape[0] // groups * rows_stride, rows_stride, 1, *tap_strides)


class _ImplicitGemm:
    """The cp.async implicit GEMM of one call signature: its grid, scalar arguments,
    constexprs and autotuned tile, computed from the first call's tensors.

    ``rows`` = (N, ROWS_H, ROWS_W), ``steps`` = (row, tap, weight, out) steps, each an (h, w)
    pair; ``b`` a weight-shaped tensor with unit channel stride, read transposed when
    ``transposed`` (:func:`_b_strides`); the rest as in the kernel's docstring. ``config``
    fixes the tile (tests).
    """

    def __init__(
        self, a, b, transposed, has_bias, out, taps, rows, steps, groups, epilogue, config, what
    ):
        n, rows_h, rows_w = rows
        row_step, tap_step, weight_step, out_step = steps
        phases = taps.shape[0]
        cout = out.shape[1] // groups
        self.taps = taps
        self.scalars = (
            n, rows_h, rows_w, a.shape[2], a.shape[3], a.shape[1] // groups, cout,
            out.shape[2], out.shape[3], phases, groups,
            *row_step, *tap_step, *weight_step, *out_step,
            *nhwc_strides(a), *_b_strides(b, groups, transposed), *nhwc_strides(out),
        )  # fmt: skip
        meta = dict(
            HAS_BIAS=has_bias, **epilogue.meta(), INPUT_PRECISION=input_precision(a.dtype),
            INDEX_64=needs_int64(n * rows_h * rows_w, a, b, out),
        )  # fmt: skip

        def grid(meta):
            m_tiles = cdiv(n * rows_h * rows_w, meta["BLOCK_M"])
            return checked_grid((m_tiles * phases * groups * cdiv(cout, meta["BLOCK_N"]),), what)

        kernel = _implicit_gemm_kernel
        self.launch = TunedLaunch(_TUNED[dot_kind(a.dtype)], kernel, grid, meta, config)

    def __call__(self, a, b, bias, out, epilogue: Epilogue) -> Tensor | None:
        """Launch on this call's tensors; the pre-activation buffer when
        ``epilogue.save_preact``, else None."""
        scale, residual, preact = epilogue.operands(out)
        self.launch(
            a, b, b if bias is None else bias, out, self.taps,
            scale, residual, out if preact is None else preact, epilogue.negative_slope,
            *self.scalars,
        )  # fmt: skip
        return preact


class _GemmForward:
    """The cp.async forward of one call signature: ``forward(x, weight, bias, epilogue)``."""

    def __init__(self, stride, padding, dilation, output_size, groups, config):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.output_size, self.groups, self.config = output_size, groups, config
        self.gemm: _ImplicitGemm | None = None

    def __call__(self, x, weight, bias, epilogue: Epilogue) -> Tensor | tuple[Tensor, Tensor]:
        n = x.shape[0]
        k, _, r, s = weight.shape
        p, q = self.output_size
        y, y_nhwc = nhwc_output((n, k, p, q), x)
        if y.numel() == 0:
            return (y, y_nhwc) if epilogue.save_preact else y
        a, b = nhwc(x), nhwc(weight)
        if self.gemm is None:
            self.gemm = _ImplicitGemm(
                a, b, False, bias is not None, y_nhwc, forward_taps((r, s), self.padding, x),
                (n, p, q), (self.stride, self.dilation, (1, 1), (1, 1)), self.groups,
                epilogue, self.config, "conv2d forward",
            )  # fmt: skip
        preact = self.gemm(a, b, bias, y_nhwc, epilogue)
        y = y if y is y_nhwc else y.copy_(y_nhwc)
        return (y, preact) if epilogue.save_preact else y


class _GemmInputGrad:
    """The cp.async input gradient of one call signature: ``input_grad(grad_y, weight)``.

    A weight with unit channel stride (channels-last) whose C/groups rows are 16-byte
    multiples is read in place, transposed (its tiles load as 16-byte vectors along C); any
    other through a (C, K/groups, R, S) channels-last copy of its transpose, whose K rows
    load so (narrower C rows read in place compiled to synchronous loads: compile gate).
    """

    def __init__(self, input_shape, stride, padding, dilation, groups, config):
        self.input_shape = tuple(input_shape)
        self.geometry = (stride, padding, dilation)
        self.groups, self.config = groups, config
        self.gemm: _ImplicitGemm | None = None

    def _b(self, weight: Tensor) -> Tensor:
        if weight.stride(1) == 1 and weight.shape[1] * weight.element_size() % 16 == 0:
            return weight
        # group g's (C/groups, K/groups) block of the transposed weight, groups stacked
        c, groups = self.input_shape[1], self.groups
        k, c_g, r, s = weight.shape
        b = weight.view(groups, k // groups, c_g, r, s).transpose(1, 2)
        return b.reshape(c, k // groups, r, s).contiguous(memory_format=torch.channels_last)

    def __call__(self, grad_y: Tensor, weight: Tensor) -> Tensor:
        n, c, h, w = self.input_shape
        grad_x, grad_x_nhwc = nhwc_output(self.input_shape, grad_y)
        if grad_x.numel() == 0:
            return grad_x
        if grad_y.numel() == 0:
            return grad_x.zero_()
        a, b = nhwc(grad_y), self._b(weight)
        if self.gemm is None:
            stride, padding, dilation = self.geometry
            taps, rows_hw, tap_step, weight_step = dgrad_taps(
                (h, w), weight.shape[2:], stride, padding, dilation, grad_y
            )
            self.gemm = _ImplicitGemm(
                a, b, b is weight, False, grad_x_nhwc, taps, (n, *rows_hw),
                ((1, 1), tap_step, weight_step, stride), self.groups, IDENTITY, self.config,
                "conv2d input gradient",
            )  # fmt: skip
        self.gemm(a, b, None, grad_x_nhwc, IDENTITY)
        return grad_x if grad_x is grad_x_nhwc else grad_x.copy_(grad_x_nhwc)


def _forward_plan(x, weight, stride, padding, dilation, output_size, groups, config):
    """The path of a forward call: ``forward(x, weight, bias, epilogue)``."""
    geometry = (stride, padding, dilation, output_size)
    if config is None and is_depthwise(x.shape[1], weight.shape, groups):
        return lambda x, w, b, epilogue: depthwise_fwd(x, w, b, *geometry, epilogue)
    if groups == 1 and uses_stem_path(x.shape[1]):
        return lambda x, w, b, epilogue: conv2d_stem_fwd(x, w, b, *geometry, epilogue, config)
    if groups == 1 and config is None and tma_applies(x, weight, stride, padding, dilation, False):
        return TmaForward(*geometry, None)
    return _GemmForward(*geometry, groups, config)


def _input_grad_plan(grad_y, weight, input_shape, stride, padding, dilation, groups, config):
    """The path of an input-gradient call: ``input_grad(grad_y, weight)``."""
    geometry = (stride, padding, dilation)
    if config is None and is_depthwise(input_shape[1], weight.shape, groups):
        return lambda g, w: depthwise_bwd_input(g, w, input_shape, *geometry)
    if groups == 1 and config is None and tma_applies(grad_y, weight, *geometry, True):
        return TmaInputGrad(input_shape, *geometry, None)
    return _GemmInputGrad(input_shape, *geometry, groups, config)


_FORWARD_PLANS = PlanCache()
_INPUT_GRAD_PLANS = PlanCache()


def conv2d_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    output_size: Pair,
    epilogue: Epilogue = IDENTITY,
    groups: int = 1,
    config: triton.Config | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``act(conv2d(x, weight) * scale + bias + residual)`` as ``epilogue`` says: x (N, C,
    H, W), weight (K, C/groups, R, S) -> y (N, K, P, Q); ``groups`` as in torch (each group
    a GEMM of the same kernel). With ``epilogue.save_preact`` returns (y, z), z the value
    before the activation (in the kernel's channels-last layout).

    ``padding`` is the top/left padding; ``output_size`` (P, Q) implies the bottom/right one.
    The output has x's dtype and memory format (NCHW or channels_last); the kernel reads x
    and the weight channels-last (copied once when they are not). A depthwise convolution
    runs :func:`fastconv.kernels.conv2d_depthwise.depthwise_fwd`, an input of at most 8
    channels :func:`fastconv.kernels.conv2d_stem.conv2d_stem_fwd`; on sm_90 a stride-1
    convolution whose input rows are 16-byte multiples runs the TMA kernel
    (:mod:`fastconv.kernels.conv2d_tma`). ``config`` runs that autotune config of this
    module's kernel instead of the autotuner's choice.

    The path and its launch are planned once per signature of the call (:mod:`fastconv.
    kernels.plans`); a call with ``config`` plans afresh.
    """
    geometry = (stride, padding, dilation, output_size, groups)
    if config is not None:
        return _forward_plan(x, weight, *geometry, config)(x, weight, bias, epilogue)
    key = (
        signature(x), signature(weight), *geometry, bias is None, epilogue.signature(),
        dot_precision(x.dtype),
    )  # fmt: skip
    plan = _FORWARD_PLANS.get(key)
    if plan is None:
        plan = _FORWARD_PLANS.put(key, _forward_plan(x, weight, *geometry, None))
    return plan(x, weight, bias, epilogue)


def conv2d_bwd_input(
    grad_y: Tensor,
    weight: Tensor,
    input_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int = 1,
    config: triton.Config | None = None,
) -> Tensor:
    """grad_x (N, C, H, W) of the conv from grad_y (N, K, P, Q) and weight (K, C/groups, R, S).

    ``grad_y`` is the gradient of the pre-activation (``fastconv.kernels.epilogue.
    activation_bwd`` applied it). grad_x takes grad_y's memory format; the kernel reads
    grad_y channels-last (copied once when it is not) and the weight as (C, R, S, K): a
    channels-last weight in place, any other through a transposed copy. On sm_90, grad_y
    rows of 16-byte multiples take the TMA kernel (:mod:`fastconv.kernels.conv2d_tma`)
    unless ``config`` is given. Planned once per signature, like :func:`conv2d_fwd`.
    """
    geometry = (tuple(input_shape), stride, padding, dilation, groups)
    if config is not None:
        return _input_grad_plan(grad_y, weight, *geometry, config)(grad_y, weight)
    key = (signature(grad_y), signature(weight), *geometry, dot_precision(grad_y.dtype))
    plan = _INPUT_GRAD_PLANS.get(key)
    if plan is None:
        plan = _INPUT_GRAD_PLANS.put(key, _input_grad_plan(grad_y, weight, *geometry, None))
    return plan(grad_y, weight)


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
    """(grad_w, grad_b or None) of the conv: a depthwise convolution's from its direct kernel
    (:mod:`fastconv.kernels.conv2d_depthwise`), any other's from the implicit-GEMM wgrad
    (:func:`fastconv.kernels.conv2d_wgrad.conv2d_bwd_weight`, which ``split`` and ``config``
    go to)."""
    if split is None and config is None and is_depthwise(x.shape[1], weight_shape, groups):
        return depthwise_bwd_weight(
            grad_y, x, weight_shape, stride, padding, dilation, need_bias_grad
        )
    return conv2d_wgrad.conv2d_bwd_weight(
        grad_y, x, weight_shape, stride, padding, dilation, need_bias_grad, groups, split, config
    )
