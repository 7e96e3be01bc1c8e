"""The fused convolution epilogue: ``y = act(acc * scale + bias + residual)``, and its backward.

Every forward convolution kernel (implicit GEMM, TMA, stem, depthwise) ends with
:func:`fused_epilogue` on its fp32 accumulator tile before the single store, so a
BatchNorm folded into (scale, bias), a ResNet block's skip connection and the activation
cost no extra pass over the output. The activations and their NaN behaviour are torch's
(:mod:`fastconv.activations`); ``ACTIVATION`` is a constexpr string, so each kernel compiles
only the one it applies.

The backward needs ``grad_z = grad_y * act'(z)`` once, for both gradient kernels:
:func:`activation_bwd` computes it in one elementwise pass from whichever tensor the
activation's derivative reads: the output ``y`` (relu, relu6, sigmoid, leaky_relu with a
non-negative slope) or the pre-activation ``z``, which the forward kernel then also
stores (``SAVE_PREACT``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import triton
import triton.language as tl
from torch import Tensor

from fastconv.backend import TRITON_INTERPRETER
from fastconv.kernels import alloc
from fastconv.kernels.launch import cdiv, checked_grid, needs_int64
from fastconv.kernels.layout import memory_format_of

__all__ = [
    "IDENTITY",
    "RELU",
    "Epilogue",
    "activation_bwd",
    "apply_activation",
    "fused_epilogue",
    "tile_fits_epilogue",
]

_SQRT_2_OVER_PI = tl.constexpr(math.sqrt(2.0 / math.pi))
_INV_SQRT_2 = tl.constexpr(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))
_GELU_TANH_CUBIC = tl.constexpr(0.044715)


class Epilogue(NamedTuple):
    """What a forward kernel applies after the reduction, before its store.

    ``scale`` (K,) multiplies each output channel before ``bias``; ``residual`` has the
    output's shape (N, K, P, Q); ``activation`` is a name of
    :data:`fastconv.activations.ACTIVATIONS` (``negative_slope`` is leaky_relu's). With
    ``save_preact`` the launcher also returns ``z``, the value before the activation. A
    NamedTuple: one is made per call, and a frozen dataclass took several times as long.
    """

    activation: str = "identity"
    negative_slope: float = 0.01
    scale: Tensor | None = None
    residual: Tensor | None = None
    save_preact: bool = False

    def operands(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(scale, residual, preact) pointers for a kernel writing ``out``: the residual in
        ``out``'s strides (copied when it is not), a new ``preact`` buffer like ``out``, and
        ``out`` standing in for each absent operand (never read without its flag)."""
        scale = out if self.scale is None else self.scale.contiguous()
        residual = out if self.residual is None else _like(self.residual, out)
        preact = None
        if self.save_preact:
            preact = alloc.empty(
                out.shape, dtype=out.dtype, device=out.device, memory_format=memory_format_of(out)
            )
        return scale, residual, preact

    def signature(self) -> tuple:
        """What a launch plan reads from the epilogue (:mod:`fastconv.kernels.plans`): the
        activation and which operands there are; the tensors and the slope are per call."""
        return self.activation, self.scale is None, self.residual is None, self.save_preact

    def meta(self) -> dict:
        """The constexpr flags of :func:`fused_epilogue` for a kernel's launch."""
        return dict(
            ACTIVATION=self.activation,
            HAS_SCALE=self.scale is not None,
            HAS_RESIDUAL=self.residual is not None,
            SAVE_PREACT=self.save_preact,
        )


IDENTITY = Epilogue()
RELU = Epilogue("relu")

# A residual or a stored pre-activation puts a second fp32 tile in registers at the store:
# tiles of 128x128 accumulators then spill at 4 warps (compile gate, fp16 with erf GELU:
# 255 registers and 344-512 B of stack on sm_90 TMA and sm_80 cp.async), 64x128 do not
# (176 registers). The pruners keep the tiles at most this large for such epilogues.
MAX_TILE_WITH_SECOND_OPERAND = 64 * 128


def tile_fits_epilogue(tile_elements: int, launch_kwargs: dict) -> bool:
    """Whether a tile of ``tile_elements`` accumulators suits the epilogue named by a
    launch's constexpr flags (``HAS_RESIDUAL``, ``SAVE_PREACT``)."""
    second_operand = launch_kwargs.get("HAS_RESIDUAL") or launch_kwargs.get("SAVE_PREACT")
    return not second_operand or tile_elements <= MAX_TILE_WITH_SECOND_OPERAND


def _like(t: Tensor, out: Tensor) -> Tensor:
    """``t`` laid out as ``out`` (same memory format, dense), so one offset addresses both."""
    memory_format = memory_format_of(out)
    if t.is_contiguous(memory_format=memory_format):
        return t
    return t.contiguous(memory_format=memory_format)


# --------------------------------------------------------------------------- device functions


@triton.jit
def apply_activation(z, ACTIVATION: tl.constexpr, negative_slope):
    """``act(z)`` on an fp32 tile, with torch's NaN behaviour (a NaN stays NaN)."""
    if ACTIVATION == "relu":  # tl.maximum compiles to a NaN-dropping max.f32: compare instead
        z = tl.where(z < 0.0, 0.0, z)
    elif ACTIVATION == "relu6":
        z = tl.where(z < 0.0, 0.0, tl.where(z > 6.0, 6.0, z))
    elif ACTIVATION == "leaky_relu":
        z = tl.where(z > 0.0, z, z * negative_slope)
    elif ACTIVATION == "silu":
        z = z * tl.sigmoid(z)
    elif ACTIVATION == "hardswish":  # z * clamp(z + 3, 0, 6) / 6
        z = z * tl.where(z < -3.0, 0.0, tl.where(z > 3.0, 6.0, z + 3.0)) / 6.0
    elif ACTIVATION == "gelu":  # z * Phi(z), Phi the normal CDF
        z = 0.5 * z * (1.0 + tl.erf(z * _INV_SQRT_2))
    elif ACTIVATION == "gelu_tanh":  # 0.5 z (1 + tanh(u)) = z * sigmoid(2u)
        u = _SQRT_2_OVER_PI * (z + _GELU_TANH_CUBIC * z * z * z)
        z = z * tl.sigmoid(2.0 * u)
    elif ACTIVATION == "sigmoid":
        z = tl.sigmoid(z)
    return z


@triton.jit
def fused_epilogue(
    acc,
    channels,
    mask_channels,
    offsets,
    mask,
    scale_ptr,
    bias_ptr,
    residual_ptr,
    preact_ptr,
    negative_slope,
    HAS_SCALE: tl.constexpr,
    ADD_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    ACTIVATION: tl.constexpr,
):
    """``act(acc * scale[channels] + bias[channels] + residual[offsets])`` on an fp32 tile.

    ``channels``/``mask_channels`` broadcast against the tile (a row of output channels);
    ``offsets``/``mask`` address the tile's elements in the output, which the residual and
    the pre-activation buffer share. ``ADD_BIAS`` is false when the kernel started its
    accumulator at the bias (no scale). With ``SAVE_PREACT`` the value before the
    activation is stored at ``preact_ptr + offsets``.
    """
    if HAS_SCALE:
        scale = tl.load(scale_ptr + channels, mask=mask_channels, other=0.0)
        acc = acc * scale.to(tl.float32)
    if ADD_BIAS:
        acc += tl.load(bias_ptr + channels, mask=mask_channels, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        acc += tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if SAVE_PREACT:
        tl.store(preact_ptr + offsets, acc.to(preact_ptr.dtype.element_ty), mask=mask)
    return apply_activation(acc, ACTIVATION, negative_slope)


@triton.jit
def _activation_grad(grad, saved, ACTIVATION: tl.constexpr, negative_slope):
    """``grad * act'(z)`` from ``saved``: the output y or the pre-activation z (see module)."""
    if ACTIVATION == "relu":  # threshold_backward: the gradient passes where y is NaN
        grad = tl.where(saved <= 0.0, 0.0, grad)
    elif ACTIVATION == "relu6":  # hardtanh_backward: 0 < z < 6 <=> 0 < y < 6
        grad = tl.where((saved > 0.0) & (saved < 6.0), grad, 0.0)
    elif ACTIVATION == "leaky_relu":  # y > 0 <=> z > 0 for a slope >= 0; else saved is z
        grad = tl.where(saved > 0.0, grad, grad * negative_slope)
    elif ACTIVATION == "sigmoid":  # saved is y
        grad = grad * saved * (1.0 - saved)
    elif ACTIVATION == "silu":
        s = tl.sigmoid(saved)
        grad = grad * s * (1.0 + saved * (1.0 - s))
    elif ACTIVATION == "hardswish":  # torch's bounds: 0 at z <= -3, 1 from z >= 3 (or NaN)
        slope = tl.where(saved <= -3.0, 0.0, tl.where(saved < 3.0, saved / 3.0 + 0.5, 1.0))
        grad = grad * slope
    elif ACTIVATION == "gelu":  # Phi(z) + z * phi(z)
        cdf = 0.5 * (1.0 + tl.erf(saved * _INV_SQRT_2))
        pdf = tl.exp(-0.5 * saved * saved) * _INV_SQRT_2PI
        grad = grad * (cdf + saved * pdf)
    elif ACTIVATION == "gelu_tanh":  # s = sigmoid(2u): s + z * 2 s (1 - s) u'(z)
        z2 = saved * saved
        u = _SQRT_2_OVER_PI * (saved + _GELU_TANH_CUBIC * z2 * saved)
        s = tl.sigmoid(2.0 * u)
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_CUBIC * z2)
        grad = grad * (s + saved * 2.0 * s * (1.0 - s) * du)
    return grad


@triton.jit
def _activation_bwd_kernel(
    grad_y_ptr,
    saved_ptr,
    grad_z_ptr,
    numel,
    negative_slope,
    ACTIVATION: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad_z[i] = grad_y[i] * act'(z[i]) over ``numel`` elements of three tensors with the
    same dense layout (flat offsets); ``saved`` is y or z as :func:`_activation_grad` reads.
    Grid: cdiv(numel, BLOCK) programs of BLOCK contiguous elements."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    grad = tl.load(grad_y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    saved = tl.load(saved_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = _activation_grad(grad, saved, ACTIVATION, negative_slope)
    tl.store(grad_z_ptr + offs, grad.to(grad_z_ptr.dtype.element_ty), mask=mask)


# 1024 elements = 2 KB of fp16 per operand per program, 8 per thread at 4 warps (16-byte
# vectors); under the interpreter fewer, larger programs are faster.
_BLOCK = 4096 if TRITON_INTERPRETER else 1024


def activation_bwd(
    grad_y: Tensor, saved: Tensor, activation: str, negative_slope: float, block: int = _BLOCK
) -> Tensor:
    """``grad_z = grad_y * act'(z)``: ``saved`` is the forward's output y or its
    pre-activation z, as :func:`fastconv.activations.saved_for_backward` says for
    ``activation``. grad_z (N, K, P, Q) takes ``saved``'s memory format; ``grad_y`` is
    copied to it when its layout differs (an expanded gradient, say)."""
    memory_format = memory_format_of(saved)
    grad_y = grad_y.contiguous(memory_format=memory_format)
    saved = saved.contiguous(memory_format=memory_format)
    grad_z = alloc.empty(
        saved.shape, dtype=grad_y.dtype, device=grad_y.device, memory_format=memory_format
    )
    numel = saved.numel()
    if numel == 0:
        return grad_z
    grid = checked_grid((cdiv(numel, block),), "activation backward")
    _activation_bwd_kernel[grid](
        grad_y, saved, grad_z, numel, float(negative_slope),
        ACTIVATION=activation, INDEX_64=needs_int64(numel), BLOCK=block, num_warps=4,
    )  # fmt: skip
    return grad_z
