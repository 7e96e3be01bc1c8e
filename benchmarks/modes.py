"""What one timed round runs in each mode: the forward, the backward, or both.

``fwd`` is an inference forward (``torch.no_grad``); ``bwd`` times the backward alone (the
forward that builds its graph runs in the untimed set-up); ``fwd+bwd`` times both. Gradients
are taken with ``torch.autograd.grad`` so nothing accumulates into ``.grad``. Every round
refills the input and the output gradient with fresh random numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.timing import Prepare

MODES = ("fwd", "bwd", "fwd+bwd")


def mode_rounds(
    op: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    grad_output: Tensor,
    mode: str,
) -> tuple[Callable[..., object], Prepare]:
    """(timed function, set-up) for ``mode``; ``inputs[0]`` is refilled every round."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    differentiable = tuple(t for t in inputs if t.requires_grad)

    def refill() -> None:
        with torch.no_grad():
            inputs[0].normal_()
            grad_output.normal_()

    def forward() -> None:
        with torch.no_grad():
            op(*inputs)

    def backward(output: Tensor) -> None:
        torch.autograd.grad(output, differentiable, grad_output)

    def forward_backward() -> None:
        torch.autograd.grad(op(*inputs), differentiable, grad_output)

    def prepare_backward() -> tuple[Tensor]:
        refill()
        return (op(*inputs),)

    def prepare() -> tuple:
        refill()
        return ()

    if mode == "fwd":
        return forward, prepare
    if mode == "bwd":
        return backward, prepare_backward
    return forward_backward, prepare
