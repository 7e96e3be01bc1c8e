"""The implementations compared on each case, by name.

* ``fastconv``: fastconv's functional API with the Triton backend forced (no silent torch
  fallback: a forced backend that cannot run raises).
* ``eager``: what users write today, ``F.relu(F.conv2d(x, w, b))`` (cuDNN) or
  ``F.max_pool2d(x)`` etc.
* ``compile``: ``torch.compile`` of that same eager code (default mode), and with
  ``--max-autotune`` also ``compile-max-autotune`` (``mode="max-autotune"``).

Each compiled provider starts from ``torch._dynamo.reset()`` with ``dynamic=False``, so every
case gets a graph specialised to its shapes and never hits dynamo's recompile limit (past
which it would silently run eager code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.shapes import ConvShape, PoolShape
from fastconv import functional as FC
from fastconv.backend import use_backend

EAGER = "eager"
COMPILE_MODES = {"compile": "default", "compile-max-autotune": "max-autotune"}


def provider_names(max_autotune: bool) -> list[str]:
    """Provider names in run order: eager first, so the other providers reuse its timing."""
    names = [EAGER, "fastconv", "compile"]
    return [*names, "compile-max-autotune"] if max_autotune else names


@contextlib.contextmanager
def provider_backend(provider: str) -> Iterator[None]:
    """fastconv runs with the Triton backend forced; the others need no set-up."""
    if provider == "fastconv":
        with use_backend("triton"):
            yield
    else:
        yield


def _compiled(fn: Callable, provider: str) -> Callable:
    torch._dynamo.reset()
    return torch.compile(fn, mode=COMPILE_MODES[provider], dynamic=False)


def conv_op(provider: str, shape: ConvShape) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``op(x, w, b) -> relu(conv2d(x, w) + b)`` as ``provider`` computes it."""
    stride, padding, dilation, groups = shape.stride, shape.padding, shape.dilation, shape.groups
    if provider == "fastconv":
        return lambda x, w, b: FC.conv2d_bias_relu(x, w, b, stride, padding, dilation, groups)

    def conv_bias_relu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))

    return conv_bias_relu if provider == EAGER else _compiled(conv_bias_relu, provider)


def pool_op(provider: str, shape: PoolShape) -> Callable[[Tensor], Tensor]:
    """``op(x) -> pooled x`` as ``provider`` computes it."""
    kwargs = shape.kwargs
    if provider == "fastconv":
        fastconv_pool = getattr(FC, shape.op)
        return lambda x: fastconv_pool(x, **kwargs)
    torch_pool = getattr(F, shape.op)

    def pool(x: Tensor) -> Tensor:
        return torch_pool(x, **kwargs)

    return pool if provider == EAGER else _compiled(pool, provider)
