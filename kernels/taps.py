"""The tap tables of the implicit-GEMM convolution kernels: which (r, s) taps reach a stride
phase of the input gradient, and where (shared by the cp.async and the TMA kernels)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["phase_table", "tap_rows"]


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
