"""Reflect, replicate and circular padding: :func:`pad2d`, ``torch.nn.functional.pad`` for
4-D (and 3-D) inputs on fastconv's Triton kernel.

This is what :class:`fastconv.layers.Conv2d` runs for a ``padding_mode`` other than zeros,
the way ``nn.Conv2d._conv_forward`` runs ``F.pad``: the Triton kernel writes the padded
input channels-last, the layout the convolution kernels read, so an NCHW input costs no
pass more than the convolution's own layout copy (docs/decisions.md, "Padding modes"). The
op itself is ``torch.ops.fastconv.pad2d`` (:mod:`fastconv.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from fastconv import ops
from fastconv.backend import resolve_backend
from fastconv.functional import SUPPORTED_DTYPES

__all__ = ["PAD_MODES", "pad2d"]

PAD_MODES = ("reflect", "replicate", "circular")


def _check_pad_args(input: Tensor, padding: Sequence[int], mode: str) -> tuple[int, ...]:
    """Validate a pad2d call on ``input`` (N, C, H, W); return the padding as a tuple."""
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {', '.join(PAD_MODES)}, got mode={mode!r}")
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(
            f"input must be 3-D or 4-D, got {input.dim()}-D tensor of shape {tuple(input.shape)}"
        )
    if (
        not isinstance(padding, Sequence)
        or len(padding) != 4
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in padding)
    ):
        raise TypeError(f"padding must be 4 ints (left, right, top, bottom), got {padding!r}")
    pads = tuple(int(p) for p in padding)
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got padding={pads}")
    shape = tuple(input.shape)
    if min(shape[-3:]) == 0:
        raise ValueError(f"pad2d: input of shape {shape} has an empty channel or spatial dimension")
    height, width = shape[-2:]
    for name, size, before, after in (
        ("width", width, pads[0], pads[1]),
        ("height", height, pads[2], pads[3]),
    ):
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(
                f"reflect padding must be less than the input {name} {size}: got padding={pads} "
                f"for input of shape {shape}"
            )
        if mode == "circular" and max(before, after) > size:
            raise ValueError(
                f"circular padding must be at most the input {name} {size}: got padding={pads} "
                f"for input of shape {shape}"
            )
    return pads


def pad2d(input: Tensor, padding: Sequence[int], mode: str = "reflect") -> Tensor:
    """``torch.nn.functional.pad(input, padding, mode)`` for ``mode`` "reflect", "replicate"
    or "circular": ``input`` (N, C, H, W) or (C, H, W), ``padding`` (left, right, top,
    bottom) as F.pad orders it -> (N, C, H + top + bottom, W + left + right).

    reflect needs each pad below its dimension's size, circular at most that size. On the
    Triton backend the result is channels-last (what the convolution kernels read) and the
    input gradient takes the input's memory format; the torch backend runs F.pad.
    """
    pads = _check_pad_args(input, padding, mode)
    if resolve_backend(input.device) == "torch":
        return F.pad(input, pads, mode=mode)
    if input.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"input has dtype {input.dtype}; the Triton kernels support float32, float16 and "
            "bfloat16"
        )
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    y = ops.call(ops.pad2d, x, pads, mode)
    return y.squeeze(0) if unbatched else y
