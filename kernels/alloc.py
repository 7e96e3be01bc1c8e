"""Allocation of kernel outputs and workspaces, with a debug switch that poisons them.

Every launcher allocates the tensors its kernels write through :func:`empty`. Normally that is
plain ``torch.empty``. With poisoning on, the new buffer is filled before the kernel runs:
floating-point buffers with NaN, integer buffers (max-pool argmax) with the dtype's most
negative value, which no kernel writes (argmax holds ``r*KW + s >= 0``). An element a kernel
forgets to write then shows up as NaN, or as a gradient routed nowhere, instead of whatever
the caching allocator handed back (often zeros or an earlier result, which can pass a test).

Poisoning is on when ``FASTCONV_POISON_ALLOCATIONS`` is ``1``/``true``/``on``/``yes`` (read at
every allocation), or inside ``with poison_allocations():``, which wins over the environment.
The test suite turns it on for every test (``tests/conftest.py``). It costs one fill per
buffer, so it is off by default.

A buffer that a kernel accumulates into (or that must read as zero where no kernel writes) is
allocated with :func:`zeros`, which is never poisoned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from fastconv.backend import env_flag

__all__ = [
    "ENV_VAR",
    "empty",
    "poison_allocations",
    "poison_value",
    "poisoning_enabled",
    "set_poisoning",
    "zeros",
]

ENV_VAR = "FASTCONV_POISON_ALLOCATIONS"
_override: bool | None = None


def poisoning_enabled() -> bool:
    """Whether :func:`empty` poisons: ``set_poisoning``'s value, else the environment's."""
    if _override is not None:
        return _override
    return env_flag(ENV_VAR)


def set_poisoning(enabled: bool | None) -> None:
    """Turn poisoning on or off for this process; None defers to the environment again."""
    global _override
    _override = enabled


@contextlib.contextmanager
def poison_allocations(enabled: bool | None = True) -> Iterator[None]:
    """Poison allocations inside the block (``False``: do not; ``None``: as the environment says).

    The previous setting is restored on exit.
    """
    global _override
    previous = _override
    _override = enabled
    try:
        yield
    finally:
        _override = previous


def poison_value(dtype: torch.dtype) -> float | int | bool:
    """The fill for a poisoned buffer of ``dtype``: NaN, or an integer no kernel writes."""
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    if dtype == torch.bool:
        return True
    info = torch.iinfo(dtype)
    return info.min if info.min < 0 else info.max


def empty(
    shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """``torch.empty``, filled with :func:`poison_value` when poisoning is on."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=memory_format)
    if out.numel() and poisoning_enabled():
        out.fill_(poison_value(dtype))
    return out


def zeros(shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``torch.zeros``: for buffers that must start at zero; never poisoned."""
    return torch.zeros(tuple(shape), dtype=dtype, device=device)
