"""The implicit GEMM of :mod:`fastconv.kernels.conv2d` with TMA tensor-descriptor loads (sm_90+).

Where the a-operand's rows are a unit-step box of one image, a program's A tile is one TMA
box: the forward at stride 1 (any padding and dilation) and the input gradient at any stride
(its rows are the input pixels of one stride phase, and the t-th tap reads grad_y at
``p = i + offset - t*step``: unit step in i). A program owns a BP x BQ box of pixels
(BLOCK_M = BP*BQ rows) of one image and a BLOCK_N channel tile, and walks (tap row, tap
column, channel chunk) exactly like :func:`fastconv.kernels.conv2d._implicit_gemm_kernel`,
with the same per-phase tap table (:func:`fastconv.kernels.taps.phase_table`). Each step
loads

* the pixels: the box ``[1, BP, BQ, BLOCK_K]`` of the NHWC a-operand at (n, i0 + h0 +
  t*tap_step_h, j0 + w0 + u*tap_step_w, c0). TMA zero-fills every element outside the tensor
  (negative coordinates included), so the padding costs no compare, no mask and no per-row
  address;
* the weight: a box of the channels-last weight itself, read as the 2-D (K, R*S*C) matrix
  it is in memory: ``[BLOCK_N, BLOCK_K]`` at (n0, tap*C + c0) for the forward, and for the
  input gradient ``[BLOCK_K, BLOCK_N]`` at (k0, tap*C + c0), transposed in shared memory. A
  chunk may run past its tap's C channels into the next tap's: those columns meet pixel
  channels that TMA zero-fills (forward) or land in output channels past C that are never
  stored (input gradient), so they add nothing, and past the last tap TMA zero-fills. No
  padded copy is made (an NCHW weight is copied to channels-last per call, like an NCHW
  input); a 3-D (K, R*S, C) box would zero the chunk's tail itself, but its reshape to 2-D
  sends wgmma's A operand through registers (one wgmma wait per instruction).

The product is computed transposed, ``acc^T (BLOCK_N x BLOCK_M) += w (BLOCK_N x BLOCK_K) @
pixels^T``: wgmma reads its A operand from shared memory only when it comes straight from a
load, and the (1, BP, BQ, BLOCK_K) -> (BLOCK_M, BLOCK_K) reshape of the pixel box sent it
through registers (LDSM, one wgmma wait per instruction); as the B operand the reshape and
transpose fold into the shared-memory descriptor. The pixel box is thus wgmma's N: a 64 x
256 tile (BLOCK_N = 64 channels, a 16 x 16 box) is one HGMMA.64x256 per k-step. Both are
host-side :class:`triton.tools.tensor_descriptor.TensorDescriptor` arguments whose
``block_shape`` an autotune ``pre_hook`` sets per config (Triton's persistent-matmul tutorial
does the same) and, once the autotuner has chosen, the signature's plan (:class:`_TmaGemm`);
no device allocator is needed. The epilogue (bias in the initial
accumulator, ReLU with torch's NaN semantics, masked NHWC store of the partial box) is the
generic kernel's. TMA needs every stride but the last to be a multiple of 16 bytes and a
16-byte-aligned base: :func:`tma_applies` says when a call qualifies; the caller falls back
to the generic kernel otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels.epilogue import IDENTITY, Epilogue, fused_epilogue, tile_fits_epilogue
from fastconv.kernels.launch import (
    WIDE_TILES_ENABLED,
    cdiv,
    checked_grid,
    dot_kind,
    input_precision,
    needs_int64,
)
from fastconv.kernels.layout import nhwc, nhwc_output, nhwc_strides
from fastconv.kernels.plans import TunedLaunch
from fastconv.kernels.taps import dgrad_taps, forward_taps, load_phase_taps

__all__ = [
    "TmaForward",
    "TmaInputGrad",
    "conv2d_bwd_input_tma",
    "conv2d_fwd_tma",
    "tma_applies",
    "tma_configs",
]

Pair = tuple[int, int]

# --------------------------------------------------------------------------- autotune configs

# (BP, BQ, BLOCK_N, BLOCK_K, stages, warps): a BP x BQ pixel box (BLOCK_M = BP*BQ rows) x
# BLOCK_N channels, one warpgroup; wgmma's M is the channels (64 per instruction), its N the
# pixels. 128 x 256 and 256 x 128 are out of reach at 4 warps: their fp32 accumulator alone
# is 256 registers per thread (the limit is 255); 64 x 256 is one HGMMA.64x256.
TMA_TILES = {
    "fp16": [  # fp16 and bf16
        (8, 16, 128, 64, 4, 4),
        (16, 16, 64, 64, 4, 4),
        (16, 8, 128, 64, 4, 4),
        (8, 8, 128, 64, 4, 4),
        (8, 16, 64, 64, 4, 4),
        (8, 8, 64, 64, 4, 4),
    ],
    "tf32": [  # half the fp16 BLOCK_K: the same bytes per stage
        (8, 16, 128, 32, 4, 4),
        (16, 16, 64, 32, 4, 4),
        (8, 8, 128, 32, 4, 4),
        (8, 16, 64, 32, 4, 4),
        (8, 8, 64, 32, 4, 4),
    ],
}
# Two warpgroups (8 warps), appended behind the wide-tiles switch (launch.WIDE_TILES_ENABLED):
# 128 pixels (an 8 x 16 box) x 256 channels and 256 pixels (16 x 16) x 128 channels, 128
# accumulator registers per thread.
TMA_WIDE_TILES = {
    "fp16": [(8, 16, 256, 64, 4, 8), (16, 16, 128, 64, 4, 8)],
    "tf32": [(8, 16, 256, 32, 4, 8), (16, 16, 128, 32, 4, 8)],
}
_MAX_BLOCK_K = 64

# Under the interpreter an autotuner would time configs with CUDA events: one config only.
_INTERPRETER_TILE = (4, 8, 16, 16, 1, 1)


def _set_block_shapes(nargs: dict) -> None:
    """Autotune pre_hook: the descriptors' boxes follow the config's tile."""
    nargs["a_desc"].block_shape, nargs["b_desc"].block_shape = _boxes(nargs)


def _tma_config(bp, bq, block_n, block_k, stages, warps) -> triton.Config:
    meta = {"BP": bp, "BQ": bq, "BLOCK_N": block_n, "BLOCK_K": block_k}
    return triton.Config(meta, num_stages=stages, num_warps=warps, pre_hook=_set_block_shapes)


def tma_configs(
    kind: str = "fp16", interpreter: bool = TRITON_INTERPRETER, wide: bool = WIDE_TILES_ENABLED
) -> list[triton.Config]:
    """Configs of the TMA implicit GEMM for a dot ``kind``: "fp16" (fp16, bf16) or "tf32".
    ``interpreter=False`` gives the GPU list even under the interpreter (tests run them all);
    ``wide`` appends the 8-warp tiles (default: the ``FASTCONV_WIDE_TILES`` switch)."""
    if interpreter:
        return [_tma_config(*_INTERPRETER_TILE)]
    tiles = TMA_TILES[kind] + (TMA_WIDE_TILES[kind] if wide else [])
    return [_tma_config(*tile) for tile in tiles]


def _fit_block_k(config: triton.Config, cpad: int) -> triton.Config:
    """``config`` with BLOCK_K at most CPAD (CPAD is a multiple of every smaller BLOCK_K)."""
    if config.kwargs["BLOCK_K"] <= cpad:
        return config
    meta = {**config.kwargs, "BLOCK_K": cpad}
    return _tma_config(*(meta[k] for k in ("BP", "BQ", "BLOCK_N", "BLOCK_K")),
                       config.num_stages, config.num_warps)  # fmt: skip


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop tiles much wider than the output channels, boxes mostly outside the image and
    the largest tiles where the epilogue holds a second tile (``tile_fits_epilogue``);
    shrink BLOCK_K to CPAD for few input channels (its columns past CIN would be zeros)."""
    cout, rows_h, rows_w = named_args["COUT"], named_args["ROWS_H"], named_args["ROWS_W"]

    def useful(c: triton.Config) -> bool:
        bp, bq, block_n = c.kwargs["BP"], c.kwargs["BQ"], c.kwargs["BLOCK_N"]
        covered = cdiv(rows_h, bp) * bp * cdiv(rows_w, bq) * bq
        return (
            block_n <= max(64, 2 * cout)
            and covered <= 2 * rows_h * rows_w
            and tile_fits_epilogue(bp * bq * block_n, kwargs)
        )

    kept = [c for c in configs if useful(c)] or configs
    return [_fit_block_k(c, _channel_pad(named_args["CIN"])) for c in kept]


# --------------------------------------------------------------------------- kernel


@triton.jit
def _tma_implicit_gemm_kernel(
    # descriptors and pointers
    a_desc,  # (N, A_H, A_W, CIN), box [1, BP, BQ, BLOCK_K]
    b_desc,  # the weight (K, R*S*C): box [BLOCK_N, BLOCK_K] (transposed: [BLOCK_K, BLOCK_N])
    bias_ptr,
    out_ptr,
    taps_ptr,
    scale_ptr,
    residual_ptr,
    preact_ptr,
    negative_slope,
    # shapes
    ROWS_H,
    ROWS_W,
    CIN,
    TAP_COLUMNS,
    S,
    COUT,
    OUT_H,
    OUT_W,
    PHASES,
    # geometry
    tap_step_h,
    tap_step_w,
    weight_step_r,
    weight_step_s,
    out_step_h,
    out_step_w,
    # output strides (channel stride 1)
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
    WEIGHT_TRANSPOSED: tl.constexpr,
    BP: tl.constexpr,
    BQ: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INDEX_64: tl.constexpr = False,
):
    """The generic implicit GEMM's contract (same tap table, steps and output mapping) with
    row step 1 and a program's rows a BP x BQ box (i0.., j0..) of image n.

    Tap (t, u) reads the pixel box at (n, i0 + h0 + t*tap_step_h, j0 + w0 + u*tap_step_w,
    c0) and the weight box at (n0, (r*S + s)*TAP_COLUMNS + c0), or at (c0, (r*S + s)*
    TAP_COLUMNS + n0) transposed when ``WEIGHT_TRANSPOSED`` (the input gradient: b is then
    the weight's transpose), TAP_COLUMNS being the weight's C, with (r, s) = (r0 +
    t*weight_step_r, s0 + u*weight_step_s); TMA zero-fills what lies outside either tensor.
    The accumulator is the transposed tile (BLOCK_N x BLOCK_M), so the reshaped pixel box is
    wgmma's B operand, read from shared memory. Row (i, j) of the box goes to
    out[n, out_h0 + i*out_step_h, out_w0 + j*out_step_w, :] where that is inside. Grid: one
    axis, N * cdiv(ROWS_H, BP) * cdiv(ROWS_W, BQ) * PHASES * cdiv(COUT, BLOCK_N) programs,
    channel tiles fastest, then phases, box columns, box rows, images.
    """
    BLOCK_M: tl.constexpr = BP * BQ
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(COUT, BLOCK_N)
    pid_n = pid % n_tiles
    rest = pid // n_tiles
    phase = rest % PHASES
    rest = rest // PHASES
    boxes_w = tl.cdiv(ROWS_W, BQ)
    box_j = rest % boxes_w
    rest = rest // boxes_w
    boxes_h = tl.cdiv(ROWS_H, BP)
    box_i = rest % boxes_h
    n = rest // boxes_h
    r0, count_r, h0, s0, count_s, w0, out_h0, out_w0 = load_phase_taps(taps_ptr, phase)

    i0 = box_i * BP
    j0 = box_j * BQ
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < COUT

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # transposed: channels x pixels
    if HAS_BIAS and not HAS_SCALE:  # the accumulator starts at the bias
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[:, None]
    c_chunks = tl.cdiv(CIN, BLOCK_K)
    # Box corner and weight column of the current step, carried by adds: no division.
    a_h = i0 + h0
    a_w = j0 + w0
    w_row = (r0 * S + s0) * TAP_COLUMNS  # weight column of tap (t, 0)
    w_col = w_row  # of tap (t, u)
    c0 = 0
    u = 0
    for _ in range(count_r * count_s * c_chunks):
        x_tile = a_desc.load([n, a_h, a_w, c0]).reshape(BLOCK_M, BLOCK_K)
        if WEIGHT_TRANSPOSED:  # a (k, c) box: b's (c, k) tile transposed
            w_tile = b_desc.load([c0, w_col + n0]).T
        else:
            w_tile = b_desc.load([n0, w_col + c0])
        acc = tl.dot(w_tile, x_tile.T, acc, input_precision=INPUT_PRECISION)
        # Next (t, u, chunk): carries by compare, no division.
        c0 += BLOCK_K
        next_tap = c0 >= CIN
        c0 = tl.where(next_tap, 0, c0)
        u += next_tap.to(tl.int32)
        a_w += tl.where(next_tap, tap_step_w, 0)
        w_col += tl.where(next_tap, weight_step_s * TAP_COLUMNS, 0)
        next_row = u >= count_s
        u = tl.where(next_row, 0, u)
        a_w = tl.where(next_row, j0 + w0, a_w)
        a_h += tl.where(next_row, tap_step_h, 0)
        w_row += tl.where(next_row, weight_step_r * S * TAP_COLUMNS, 0)
        w_col = tl.where(next_row, w_row, w_col)

    offs_m = tl.arange(0, BLOCK_M)
    i = i0 + offs_m // BQ  # constexpr BQ: a shift
    j = j0 + offs_m % BQ
    if INDEX_64:  # an offset within one image of the output can pass 2**31
        i = i.to(tl.int64)
        j = j.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    out_h = out_h0 + i * out_step_h
    out_w = out_w0 + j * out_step_w
    mask_out = (i < ROWS_H) & (j < ROWS_W) & (out_h < OUT_H) & (out_w < OUT_W)
    out_rows = n.to(tl.int64) * stride_on + out_h * stride_oh + out_w * stride_ow
    out_offs = out_rows[:, None] + offs_n[None, :]
    mask = mask_out[:, None] & mask_n[None, :]
    out = fused_epilogue(
        tl.trans(acc), offs_n[None, :], mask_n[None, :], out_offs, mask,
        scale_ptr, bias_ptr, residual_ptr, preact_ptr, negative_slope,
        HAS_SCALE, HAS_BIAS and HAS_SCALE, HAS_RESIDUAL, SAVE_PREACT, ACTIVATION,
    )  # fmt: skip
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


_KEY = ["ROWS_H", "ROWS_W", "CIN", "S", "COUT", "PHASES"]
_TUNED = {
    kind: triton.autotune(
        tma_configs(kind), _KEY, prune_configs_by={"early_config_prune": _prune_configs}
    )(_tma_implicit_gemm_kernel)
    for kind in TMA_TILES
}

# --------------------------------------------------------------------------- applicability

# TMA coordinates are int32 and a global dimension at most 2**32; stay well inside int32
# for every coordinate a box corner can take (a dimension plus the padding and tap reach).
_COORD_LIMIT = 2**31 - 2**20
_STRIDE_BYTES_LIMIT = 2**40  # cuTensorMapEncodeTiled: global strides below 2**40 bytes


def _tma_device(t: Tensor) -> bool:
    if t.device.type == "cuda":
        return torch.cuda.get_device_capability(t.device)[0] >= 9
    return TRITON_INTERPRETER and t.device.type == "cpu"


def _descriptor_ok(t: Tensor) -> bool:
    """Whether ``t`` (N, C, H, W), read through :func:`layout.nhwc`, is a valid TMA tensor:
    16-byte-aligned base, channel stride 1, other strides multiples of 16 bytes."""
    item = t.element_size()
    if t.shape[1] * item % 16:
        return False
    if t.stride(1) != 1:  # nhwc() makes a fresh, dense channels-last copy
        return True
    if t.data_ptr() % 16:
        return False
    for dim in (0, 2, 3):
        if t.shape[dim] > 1 and (t.stride(dim) * item % 16 or t.stride(dim) <= 0):
            return False
        if t.shape[dim] > 1 and t.stride(dim) * item >= _STRIDE_BYTES_LIMIT:
            return False
    return True


def _weight_ok(weight: Tensor) -> bool:
    """Whether ``weight`` (K, C, R, S), read as the (K, R*S*C) matrix of its channels-last
    memory, is a valid TMA tensor: C a multiple of 16 bytes, and a 16-byte-aligned base when
    it is read in place (already channels-last; otherwise a fresh copy is read)."""
    if weight.shape[1] * weight.element_size() % 16:
        return False
    in_place = weight.is_contiguous(memory_format=torch.channels_last)
    return not in_place or weight.data_ptr() % 16 == 0


def tma_applies(
    a: Tensor, weight: Tensor, stride: Pair, padding: Pair, dilation: Pair, transposed: bool
) -> bool:
    """Whether the TMA kernel can run this call: ``a`` is x for the forward
    (``transposed=False``, stride 1 only) or grad_y for the input gradient
    (``transposed=True``, any stride); ``weight`` is (K, C, R, S).

    Needs an sm_90+ CUDA device (or the interpreter, for tests), fp16/bf16 or fp32 with tf32
    allowed, ``a``'s channels a multiple of 16 bytes (8 fp16/bf16 or 4 fp32 channels: the
    TMA stride rule) with a 16-byte-aligned base when ``a`` is already channels-last, and
    every box coordinate inside int32. The weight is read as the (K, R*S*C) matrix of its
    channels-last memory, so its C rows must be 16-byte multiples too (the forward's C is
    ``a``'s; the input gradient's is the other channel count) with an aligned base.
    """
    if a.dtype not in (torch.float16, torch.bfloat16, torch.float32) or weight.dtype != a.dtype:
        return False
    if a.dtype == torch.float32 and input_precision(a.dtype) != "tf32":
        return False
    if not (_tma_device(a) and a.device == weight.device):
        return False
    if not transposed and tuple(stride) != (1, 1):
        return False
    if a.numel() == 0 or weight.numel() == 0:
        return False
    k, c, r, s = weight.shape
    if not (_descriptor_ok(a) and _weight_ok(weight)):
        return False
    reach_h = a.shape[2] + padding[0] + dilation[0] * r + (stride[0] + 1) * 256
    reach_w = a.shape[3] + padding[1] + dilation[1] * s + (stride[1] + 1) * 256
    dims = (a.shape[0], a.shape[1], k, c, reach_h, reach_w)
    return max(dims) < _COORD_LIMIT


# --------------------------------------------------------------------------- launchers


def _pixel_layout(t: Tensor) -> tuple[list[int], list[int]]:
    """(shape, strides) of (N, C, H, W) channels-contiguous ``t`` as a 4-D (N, H, W, C)
    descriptor. Size-1 dims get a dense stride (any value is valid for them; TMA wants a
    positive multiple of 16 bytes)."""
    n, c, h, w = t.shape
    sn, sh, sw = nhwc_strides(t)
    sw = sw or c
    sh = sh or sw * w
    sn = sn or sh * h
    return [n, h, w, c], [sn, sh, sw, 1]


def _channel_pad(cin: int) -> int:
    """CPAD: CIN rounded up to 16, 32 or a multiple of 64 (_MAX_BLOCK_K): the pruner shrinks
    BLOCK_K to it, so that few input channels do not load chunks of mostly zeros."""
    for size in (16, 32):
        if cin <= size:
            return size
    return cdiv(cin, _MAX_BLOCK_K) * _MAX_BLOCK_K


def _boxes(meta: dict) -> tuple[list[int], list[int]]:
    """The (pixel, weight) descriptor boxes of a launch's tile: ``meta`` holds the config's BP,
    BQ, BLOCK_N, BLOCK_K and the launch's WEIGHT_TRANSPOSED."""
    block_k, block_n = meta["BLOCK_K"], meta["BLOCK_N"]
    weight_box = [block_k, block_n] if meta["WEIGHT_TRANSPOSED"] else [block_n, block_k]
    return [1, meta["BP"], meta["BQ"], block_k], weight_box


# Boxes of the descriptors that a signature's first launch builds before the autotuner has
# chosen its tile (its pre_hook, _set_block_shapes, then sets the real ones).
_UNTUNED_BOXES = ([1, 1, 1, 16], [16, 16])


class _TmaGemm:
    """The TMA implicit GEMM of one call signature: its grid, scalar arguments, constexprs,
    descriptor layouts and autotuned tile, computed from the first call's tensors.

    ``a`` is the (N, C, H, W) a-operand with unit channel stride, ``weight`` the (K, C, R, S)
    channels-last weight, read transposed for the input gradient (``transposed``); ``rows`` =
    (N, ROWS_H, ROWS_W), ``steps`` = (tap, weight, out) steps, each an (h, w) pair (the row
    step is 1); ``out`` the channels-last output. ``config`` fixes the tile (tests).
    """

    def __init__(
        self, a, weight, transposed, has_bias, out, taps, rows, steps, epilogue, config, what
    ):
        n, rows_h, rows_w = rows
        tap_step, weight_step, out_step = steps
        phases = taps.shape[0]
        cout = out.shape[1]
        k, c, r, s = weight.shape
        self.taps = taps
        self.pixel_layout = _pixel_layout(a)
        self.weight_layout = ([k, r * s * c], [r * s * c, 1])  # its channels-last memory
        self.scalars = (
            rows_h, rows_w, a.shape[1], c, s, cout, out.shape[2], out.shape[3], phases,
            *tap_step, *weight_step, *out_step, *nhwc_strides(out),
        )  # fmt: skip
        meta = dict(
            HAS_BIAS=has_bias, **epilogue.meta(), INPUT_PRECISION=input_precision(a.dtype),
            WEIGHT_TRANSPOSED=transposed, INDEX_64=needs_int64(n * rows_h * rows_w, out),
        )  # fmt: skip

        def grid(meta):
            boxes = cdiv(rows_h, meta["BP"]) * cdiv(rows_w, meta["BQ"])
            return checked_grid((n * boxes * phases * cdiv(cout, meta["BLOCK_N"]),), what)

        if config is not None:
            config = _fit_block_k(config, _channel_pad(a.shape[1]))
        kernel = _tma_implicit_gemm_kernel
        self.launch = TunedLaunch(_TUNED[dot_kind(a.dtype)], kernel, grid, meta, config)
        self.boxes = _boxes(self.launch.meta) if config is not None else _UNTUNED_BOXES

    def __call__(self, a, weight, bias, out, epilogue: Epilogue) -> Tensor | None:
        """Launch on this call's tensors; the pre-activation buffer when
        ``epilogue.save_preact``, else None."""
        pixel_box, weight_box = self.boxes
        a_desc = TensorDescriptor(a, *self.pixel_layout, pixel_box)
        b_desc = TensorDescriptor(weight, *self.weight_layout, weight_box)
        scale, residual, preact = epilogue.operands(out)
        self.launch(
            a_desc, b_desc, out if bias is None else bias, out, self.taps,
            scale, residual, out if preact is None else preact, epilogue.negative_slope,
            *self.scalars,
        )  # fmt: skip
        if self.boxes is _UNTUNED_BOXES and self.launch.config is not None:  # tile chosen
            self.boxes = _boxes(self.launch.meta)
        return preact


class TmaForward:
    """:func:`conv2d_fwd_tma` for one call signature (``fastconv.kernels.conv2d`` keeps one per
    signature): ``forward(x, weight, bias, epilogue)``."""

    def __init__(self, stride: Pair, padding: Pair, dilation: Pair, output_size: Pair, config):
        if tuple(stride) != (1, 1):
            raise ValueError("conv2d_fwd_tma: the forward's TMA boxes need stride 1")
        self.padding, self.dilation, self.output_size = padding, dilation, output_size
        self.config = config
        self.gemm: _TmaGemm | None = None

    def __call__(self, x, weight, bias, epilogue: Epilogue) -> Tensor | tuple[Tensor, Tensor]:
        n = x.shape[0]
        k, _, r, s = weight.shape
        p, q = self.output_size
        y, y_nhwc = nhwc_output((n, k, p, q), x)
        if y.numel() == 0:
            return (y, y_nhwc) if epilogue.save_preact else y
        a, weight = nhwc(x), weight.contiguous(memory_format=torch.channels_last)
        if self.gemm is None:
            self.gemm = _TmaGemm(
                a, weight, False, bias is not None, y_nhwc,
                forward_taps((r, s), self.padding, x), (n, p, q),
                (self.dilation, (1, 1), (1, 1)), epilogue, self.config, "conv2d forward (TMA)",
            )  # fmt: skip
        preact = self.gemm(a, weight, bias, y_nhwc, epilogue)
        y = y if y is y_nhwc else y.copy_(y_nhwc)
        return (y, preact) if epilogue.save_preact else y


class TmaInputGrad:
    """:func:`conv2d_bwd_input_tma` for one call signature: ``input_grad(grad_y, weight)``."""

    def __init__(self, input_shape, stride: Pair, padding: Pair, dilation: Pair, config):
        self.input_shape = tuple(input_shape)
        self.geometry = (stride, padding, dilation)
        self.config = config
        self.gemm: _TmaGemm | None = None

    def __call__(self, grad_y: Tensor, weight: Tensor) -> Tensor:
        n, c, h, w = self.input_shape
        grad_x, grad_x_nhwc = nhwc_output(self.input_shape, grad_y)
        if grad_x.numel() == 0:
            return grad_x
        if grad_y.numel() == 0:
            return grad_x.zero_()
        a, weight = nhwc(grad_y), weight.contiguous(memory_format=torch.channels_last)
        if self.gemm is None:
            stride, padding, dilation = self.geometry
            taps, rows_hw, tap_step, weight_step = dgrad_taps(
                (h, w), weight.shape[2:], stride, padding, dilation, grad_y
            )
            self.gemm = _TmaGemm(
                a, weight, True, False, grad_x_nhwc, taps, (n, *rows_hw),
                (tap_step, weight_step, stride), IDENTITY, self.config,
                "conv2d input gradient (TMA)",
            )  # fmt: skip
        self.gemm(a, weight, None, grad_x_nhwc, IDENTITY)
        return grad_x if grad_x is grad_x_nhwc else grad_x.copy_(grad_x_nhwc)


def conv2d_fwd_tma(
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
    """:func:`fastconv.kernels.conv2d.conv2d_fwd` through TMA boxes; only where
    ``tma_applies(x, weight, stride, padding, dilation, transposed=False)`` (stride 1)."""
    forward = TmaForward(stride, padding, dilation, output_size, config)
    return forward(x, weight, bias, epilogue)


def conv2d_bwd_input_tma(
    grad_y: Tensor,
    weight: Tensor,
    input_shape: torch.Size | tuple[int, int, int, int],
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    config: triton.Config | None = None,
) -> Tensor:
    """:func:`fastconv.kernels.conv2d.conv2d_bwd_input` through TMA boxes; only where
    ``tma_applies(grad_y, weight, stride, padding, dilation, transposed=True)``."""
    return TmaInputGrad(input_shape, stride, padding, dilation, config)(grad_y, weight)
