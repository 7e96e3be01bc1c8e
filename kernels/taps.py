"""The tap tables of the implicit-GEMM convolution kernels: which (r, s) taps reach a stride
phase of the input gradient, and where (shared by the cp.async and the TMA kernels)."""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastconv.kernels.launch import cdiv

__all__ = ["dgrad_taps", "forward_taps", "load_phase_taps", "phase_table", "tap_rows"]

Pair = tuple[int, int]


@functools.lru_cache(maxsize=256)
def tap_rows(stride: int, pad: int, dil: int, taps: int) -> tuple[tuple[int, int, int, int], ...]:
    """dgrad's taps along one axis, per stride phase: (first tap, count, offset, phase start).

    Input pixel h = ph + i*stride (phase ph) receives output pixel p = (h + pad - r*dil) /
    stride from tap r exactly where stride divides (ph + pad - r*dil): those taps form a
    progression r0, r0 + step, ... with step = stride / gcd(stride, dil), and p = i + offset
    - t * (step*dil/stride) for the t-th of them.
    """
    out = []
    for ph in range(stride):
        hits = [r for r in range(taps) if (ph + pad - r * dil) % stride == 0]
        first = hits[0] if hits else 0
        out.append((first, len(hits), (ph + pad - first * dil) // stride, ph))
    return tuple(out)


def phase_table(rows_h, rows_w, like: Tensor) -> Tensor:
    """The (PHASES, 8) int32 tap table of the implicit-GEMM kernels on ``like``'s device
    (cached: a layer copies its table to the device once, not at every call)."""
    return _device_phase_table(rows_h, rows_w, like.device)


@functools.lru_cache(maxsize=256)
def _device_phase_table(rows_h, rows_w, device: torch.device) -> Tensor:
    table = [(*h[:3], *w[:3], h[3], w[3]) for h in rows_h for w in rows_w]
    return torch.tensor(table, dtype=torch.int32).to(device)


def forward_taps(kernel_hw: Pair, padding: Pair, like: Tensor) -> Tensor:
    """The forward's one-phase table: every tap r < R from h = p*stride - pad_h (likewise s)."""
    (r, s), (pad_h, pad_w) = kernel_hw, padding
    return phase_table(((0, r, -pad_h, 0),), ((0, s, -pad_w, 0),), like)


def dgrad_taps(
    input_hw: Pair, kernel_hw: Pair, stride: Pair, padding: Pair, dilation: Pair, like: Tensor
) -> tuple[Tensor, Pair, Pair, Pair]:
    """dgrad's geometry: (tap table, rows per phase (H, W), tap step, weight step).

    Input pixels are grouped by stride phase (h mod stride_h); the t-th tap of a phase reads
    grad_y at p = i + offset + t*tap_step with weight tap r0 + t*weight_step (:func:`tap_rows`).
    """
    (h, w), (r, s), (sh, sw), (ph, pw), (dh, dw) = input_hw, kernel_hw, stride, padding, dilation
    taps = phase_table(tap_rows(sh, ph, dh, r), tap_rows(sw, pw, dw, s), like)
    step_r, step_s = sh // math.gcd(sh, dh), sw // math.gcd(sw, dw)
    tap_step = (-(step_r * dh) // sh, -(step_s * dw) // sw)
    return taps, (cdiv(h, sh), cdiv(w, sw)), tap_step, (step_r, step_s)


@triton.jit
def load_phase_taps(taps_ptr, phase):
    """Row ``phase`` of a (PHASES, 8) int32 tap table: (r0, count_r, h0, s0, count_s, w0,
    out_h0, out_w0)."""
    taps = taps_ptr + phase * 8
    return (
        tl.load(taps),
        tl.load(taps + 1),
        tl.load(taps + 2),
        tl.load(taps + 3),
        tl.load(taps + 4),
        tl.load(taps + 5),
        tl.load(taps + 6),
        tl.load(taps + 7),
    )
