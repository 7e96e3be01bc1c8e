"""Memory-layout helpers shared by the kernel launchers."""

from __future__ import annotations

import torch
from torch import Tensor

from fastconv.kernels import alloc

__all__ = [
    "element_span",
    "empty_like_format",
    "memory_format_of",
    "nhwc",
    "nhwc_output",
    "nhwc_strides",
]


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


def nhwc(t: Tensor) -> Tensor:
    """``t`` (N, C, H, W) with unit channel stride: ``t`` itself when it has one (a
    channels_last tensor, a view of one, an expanded batch), else a channels_last copy."""
    if t.shape[1] == 1 or t.stride(1) == 1:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def nhwc_strides(t: Tensor) -> tuple[int, int, int]:
    """(n, h, w) strides of ``t`` for a kernel that takes the channel stride to be 1, with
    the stride of a size-1 dimension as 0: torch may give those any value, which would hide
    the 16-byte alignment of the rows from Triton's specialization."""
    return tuple(0 if t.shape[dim] == 1 else t.stride(dim) for dim in (0, 2, 3))


def empty_like_format(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An empty (N, C, H, W) tensor of ``shape`` in ``like``'s memory format, dtype and device."""
    return alloc.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=memory_format_of(like)
    )


def nhwc_output(shape: tuple[int, int, int, int], like: Tensor) -> tuple[Tensor, Tensor]:
    """(result in ``like``'s memory format, the channels-last buffer the kernel writes).

    The kernel stores whole channel rows (16-byte vectors); writing NCHW from the
    (pixels x channels) accumulator took a 64-bit address per element and spilled, so an
    NCHW result is one copy of the channels-last buffer (none when its pixels are 1 x 1:
    both layouts are then the same memory).
    """
    result = empty_like_format(shape, like)
    if result.is_contiguous(memory_format=torch.channels_last):  # channels_last, or 1 x 1
        return result, result
    return result, alloc.empty(
        shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last
    )
