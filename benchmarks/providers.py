"""The implementations compared on each case, by name.

* ``fastconv``: fastconv's functional API with the Triton backend forced (no silent torch
  fallback: a forced backend that cannot run raises).
* ``eager``: what users write today, ``F.relu(F.conv2d(x, w, b))`` (cuDNN) or
  ``F.max_pool2d(x)`` etc. A fused epilogue's eager code runs each step as its own op:
  ``act(F.conv2d(x, w, None) * scale.view(1, -1, 1, 1) + b.view(1, -1, 1, 1) + residual)``,
  or ``act(F.conv2d(x, w, b))`` without a scale. The BatchNorm is written as that scale and
  bias rather than ``F.batch_norm`` in eval mode so that eager, compile and fastconv share
  the operands (scale, bias) and their gradients; in eager this costs a multiply and an add
  where eval ``F.batch_norm`` is one pass.
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

from benchmarks.shapes import ConvShape, FusedConvCase, PadShape, PoolShape
from fastconv import functional as FC
from fastconv.activations import reference_activation
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


def compiled(fn: Callable, provider: str) -> Callable:
    """``torch.compile`` of ``fn`` (a function or module) in ``provider``'s mode, from a reset
    dynamo, specialised to the shapes it is called with."""
    torch._dynamo.reset()
    return torch.compile(fn, mode=COMPILE_MODES[provider], dynamic=False)


def conv_op(provider: str, shape: ConvShape) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``op(x, w, b) -> relu(conv2d(x, w) + b)`` as ``provider`` computes it."""
    stride, padding, dilation, groups = shape.stride, shape.padding, shape.dilation, shape.groups
    if provider == "fastconv":
        return lambda x, w, b: FC.conv2d_bias_relu(x, w, b, stride, padding, dilation, groups)

    def conv_bias_relu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))

    return conv_bias_relu if provider == EAGER else compiled(conv_bias_relu, provider)


def torch_preactivation(
    x: Tensor,
    w: Tensor,
    b: Tensor,
    shape: ConvShape,
    scale: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """``conv2d(x, w) [* scale] + b [+ residual]`` as separate torch ops (the bias goes into
    ``F.conv2d`` when there is no scale)."""
    conv_args = (shape.stride, shape.padding, shape.dilation, shape.groups)
    if scale is None:
        z = F.conv2d(x, w, b, *conv_args)
    else:
        z = F.conv2d(x, w, None, *conv_args) * scale.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    return z if residual is None else z + residual


def fused_conv_op(provider: str, case: FusedConvCase) -> Callable[..., Tensor]:
    """``op(x, w, b, *epilogue operands) -> act(conv2d(x, w) * scale + b + residual)`` as
    ``provider`` computes it (operands as ``case.epilogue.operand_names``)."""
    shape, epilogue = case.shape, case.epilogue
    if provider == "fastconv":

        def fastconv_fused_conv(x: Tensor, w: Tensor, b: Tensor, *operands: Tensor) -> Tensor:
            return FC.fused_conv2d(
                x,
                w,
                b,
                shape.stride,
                shape.padding,
                shape.dilation,
                shape.groups,
                activation=epilogue.activation,
                **epilogue.operand_kwargs(operands),
            )

        return fastconv_fused_conv

    def conv_epilogue(x: Tensor, w: Tensor, b: Tensor, *operands: Tensor) -> Tensor:
        z = torch_preactivation(x, w, b, shape, **epilogue.operand_kwargs(operands))
        return reference_activation(z, epilogue.activation)

    return conv_epilogue if provider == EAGER else compiled(conv_epilogue, provider)


def pool_op(provider: str, shape: PoolShape) -> Callable[[Tensor], Tensor]:
    """``op(x) -> pooled x`` as ``provider`` computes it."""
    kwargs = shape.kwargs
    if provider == "fastconv":
        fastconv_pool = getattr(FC, shape.op)
        return lambda x: fastconv_pool(x, **kwargs)
    torch_pool = getattr(F, shape.op)

    def pool(x: Tensor) -> Tensor:
        return torch_pool(x, **kwargs)

    return pool if provider == EAGER else compiled(pool, provider)


def pad_op(provider: str, shape: PadShape) -> Callable[[Tensor], Tensor]:
    """``op(x) -> F.pad(x, shape.padding, shape.mode)`` as ``provider`` computes it
    (fastconv: its Triton pad, which writes channels-last)."""
    if provider == "fastconv":
        from fastconv.padding import pad2d

        return lambda x: pad2d(x, shape.padding, shape.mode)

    def pad(x: Tensor) -> Tensor:
        return F.pad(x, shape.padding, mode=shape.mode)

    return pad if provider == EAGER else compiled(pad, provider)
