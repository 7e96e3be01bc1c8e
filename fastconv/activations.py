"""The activations a fused convolution epilogue applies, by name, with torch's semantics.

``y = act(z)`` for ``z = conv2d(x, w) * scale + bias [+ residual]``. Each name maps to the
torch function it reproduces (NaN handling included) and to what its backward reads:

* ``"output"``: the gradient is a function of ``y`` alone (identity, relu, relu6,
  leaky_relu with a non-negative slope, sigmoid), so the forward saves nothing extra;
* ``"preact"``: it needs ``z`` (silu, hardswish, both gelus, leaky_relu with a negative
  slope, whose sign flip makes ``y`` ambiguous), so the kernel also stores ``z``.

See docs/decisions.md ("Fused epilogues") for why the backward never recomputes the
convolution instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "check_activation",
    "reference_activation",
    "saved_for_backward",
]

# name -> torch reference of act(z, negative_slope)
_REFERENCES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "identity": lambda z, slope: z,
    "relu": lambda z, slope: F.relu(z),
    "relu6": lambda z, slope: F.relu6(z),
    "leaky_relu": lambda z, slope: F.leaky_relu(z, slope),
    "silu": lambda z, slope: F.silu(z),
    "hardswish": lambda z, slope: F.hardswish(z),
    "gelu": lambda z, slope: F.gelu(z),
    "gelu_tanh": lambda z, slope: F.gelu(z, approximate="tanh"),
    "sigmoid": lambda z, slope: torch.sigmoid(z),
}
ACTIVATIONS = tuple(_REFERENCES)
_FROM_OUTPUT = frozenset({"identity", "relu", "relu6", "sigmoid"})


def check_activation(activation: str, negative_slope: float) -> None:
    """Raise a ValueError naming the argument if ``activation``/``negative_slope`` is invalid."""
    if activation not in _REFERENCES:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, int | float):
        raise TypeError(f"negative_slope must be a float, got {negative_slope!r}")
    if not -math.inf < negative_slope < math.inf:  # NaN fails too (comparisons trace in dynamo)
        raise ValueError(f"negative_slope must be finite, got {negative_slope!r}")


def reference_activation(z: Tensor, activation: str, negative_slope: float = 0.01) -> Tensor:
    """``act(z)`` computed by torch: what the fused kernels must reproduce."""
    return _REFERENCES[activation](z, negative_slope)


def saved_for_backward(activation: str, negative_slope: float = 0.01) -> str:
    """``"output"`` if the activation's gradient follows from its output, else ``"preact"``."""
    if activation in _FROM_OUTPUT or (activation == "leaky_relu" and negative_slope >= 0):
        return "output"
    return "preact"
