"""Memory-layout helpers shared by the kernel launchers."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["element_span", "has_nhwc_samples", "memory_format_of", "nhwc", "nhwc_strides"]


def memory_format_of(t: Tensor) -> torch.memory_format:
    """channels_last when ``t`` (N, C, H, W) is laid out channels-last, else contiguous.

    Outputs are allocated in this format, so they keep the input's layout; strided views
    whose channel stride is the smallest count as channels-last.
    """
    if t.is_contiguous():
        return torch.contiguous_format
    if t.is_contiguous(memory_format=torch.channels_last) or t.stride(1) < min(
        t.stride(2), t.stride(3)
    ):
        return torch.channels_last
    return torch.contiguous_format


def element_span(t: Tensor) -> int:
    """One past the largest element offset into ``t`` (0 for an empty tensor).

    What a kernel's index math must reach: a strided view of few elements can still span
    past 2**31.
    """
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(step) for size, step in zip(t.shape, t.stride(), strict=True))


def has_nhwc_samples(t: Tensor) -> bool:
    """Whether each sample of ``t`` (N, C, H, W) is dense channels-last (any batch stride)."""
    _, c, h, w = t.shape
    return all(
        size == 1 or t.stride(dim) == step
        for dim, size, step in ((1, c, 1), (3, w, c), (2, h, w * c))
    )


def nhwc(t: Tensor) -> Tensor:
    """``t`` with dense channels-last samples: ``t`` itself when its samples already are (an
    expanded batch included), else a channels-last copy."""
    return t if has_nhwc_samples(t) else t.contiguous(memory_format=torch.channels_last)


def nhwc_strides(t: Tensor) -> tuple[int, int, int]:
    """(n, h, w) strides of ``t`` with dense channels-last samples, from its shape: torch may
    give size-1 dimensions any stride, which would hide the 16-byte alignment of rows."""
    _, c, h, w = t.shape
    return t.stride(0) if t.shape[0] > 1 else h * w * c, w * c, c
