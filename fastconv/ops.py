"""fastconv's Triton kernels as ``torch.library`` ops in the ``fastconv`` namespace.

Every kernel entry point is an op with a schema, a fake (meta) implementation that gives the
real output's shape, dtype and memory format, and, for the forwards, a registered autograd
formula whose backward calls the backward ops: ``torch.compile(fullgraph=True)`` and
``torch.export`` see ``torch.ops.fastconv.*`` nodes (no graph break, nothing traced into
Triton), and ``torch.library.opcheck`` can check each one. The ops are opaque
``custom_op``\\ s on every device (docs/decisions.md, "Ops": why not ``triton_op``).

The ops take already validated, already resolved arguments (pairs as lists, padding as the
top/left amount, the output size); :mod:`fastconv.functional` is the user API that
validates, applies autocast, picks the backend and calls them. Importing this module
registers the ops, so a program that loads an exported graph must import fastconv first.

Ops (forward -> its backward ops):

* ``conv2d(x, w, bias?, scale?, residual?, ...) -> (y, preact)``: ``y = act(conv2d(x, w) *
  scale + bias + residual)``; ``preact`` is z (channels-last) when ``save_preact``, else an
  empty tensor -> ``activation_backward``, ``conv2d_input_grad``, ``conv2d_weight_grad``.
* ``max_pool2d -> (y, argmax)`` -> ``max_pool2d_backward``; ``avg_pool2d`` ->
  ``avg_pool2d_backward``; ``adaptive_avg_pool2d`` -> ``adaptive_avg_pool2d_backward``.
* ``pad2d`` (reflect, replicate, circular; channels-last result) -> ``pad2d_backward``.

Two ways in, the same kernels and gradient formulas: :func:`call` runs a forward op through
its registered op while a graph is traced (torch.compile, torch.export, fake tensors), and
eagerly through an ``autograd.Function`` (or, with no gradient needed, a direct call): a
custom op's dispatch costs several times a Function's per call (docs/decisions.md, "Eager
calls skip the custom-op dispatch").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.library import custom_op

from fastconv.backend import TRITON_AVAILABLE
from fastconv.kernels.layout import memory_format_of

if TRITON_AVAILABLE:  # without triton every op runs torch's reference (fastconv.backend)
    from fastconv.kernels import conv2d as conv_kernels
    from fastconv.kernels import epilogue as epilogue_kernels
    from fastconv.kernels import pad2d as pad_kernels
    from fastconv.kernels import pool2d as pool_kernels

__all__ = [
    "activation_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "max_pool2d",
    "max_pool2d_backward",
    "pad2d",
    "pad2d_backward",
]

Ints = Sequence[int]


def _nothing(like: Tensor) -> Tensor:
    """The empty tensor an op returns in place of an output it was not asked for."""
    return like.new_empty(0)


def _empty(shape: Ints, like: Tensor, memory_format: torch.memory_format, dtype=None) -> Tensor:
    return torch.empty(
        tuple(shape), dtype=dtype or like.dtype, device=like.device, memory_format=memory_format
    )


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


# --------------------------------------------------------------------------- convolution


def _conv2d_impl(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    scale: Tensor | None,
    residual: Tensor | None,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
    output_size: Ints,
    activation: str,
    negative_slope: float,
    save_preact: bool,
) -> tuple[Tensor, Tensor]:
    """(y, preact): y (N, K, P, Q) in x's memory format; preact channels-last or empty."""
    epilogue = epilogue_kernels.Epilogue(activation, negative_slope, scale, residual, save_preact)
    geometry = (tuple(stride), tuple(padding), tuple(dilation), tuple(output_size))
    result = conv_kernels.conv2d_fwd(x, weight, bias, *geometry, epilogue, groups)
    if not save_preact:
        return result, _nothing(x)
    y, preact = result
    if preact.numel() == 0 or preact is y:  # an empty output: the launcher returns y twice
        return y, _empty(y.shape, y, torch.channels_last)
    return y, preact.contiguous(memory_format=torch.channels_last)


conv2d = custom_op("fastconv::conv2d", _conv2d_impl, mutates_args=())


@conv2d.register_fake
def _(x, weight, bias, scale, residual, stride, padding, dilation, groups, output_size,
      activation, negative_slope, save_preact):  # fmt: skip
    shape = (x.shape[0], weight.shape[0], *output_size)
    y = _empty(shape, x, memory_format_of(x))
    return y, (_empty(shape, x, torch.channels_last) if save_preact else _nothing(x))


def _activation_backward_impl(
    grad_y: Tensor, saved: Tensor, activation: str, negative_slope: float
) -> Tensor:
    """grad_z = grad_y * act'(z) from the saved output or pre-activation, saved's format."""
    return epilogue_kernels.activation_bwd(grad_y, saved, activation, negative_slope)


activation_backward = custom_op(
    "fastconv::activation_backward", _activation_backward_impl, mutates_args=()
)


@activation_backward.register_fake
def _(grad_y, saved, activation, negative_slope):
    return _empty(saved.shape, grad_y, memory_format_of(saved))


def _conv2d_input_grad_impl(
    grad: Tensor,
    weight: Tensor,
    input_shape: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
) -> Tensor:
    """grad_x (N, C, H, W) in grad's memory format from the pre-activation gradient."""
    geometry = (tuple(stride), tuple(padding), tuple(dilation))
    return conv_kernels.conv2d_bwd_input(grad, weight, tuple(input_shape), *geometry, groups)


conv2d_input_grad = custom_op(
    "fastconv::conv2d_input_grad", _conv2d_input_grad_impl, mutates_args=()
)


@conv2d_input_grad.register_fake
def _(grad, weight, input_shape, stride, padding, dilation, groups):
    return _empty(input_shape, grad, memory_format_of(grad))


def _conv2d_weight_grad_impl(
    grad: Tensor,
    x: Tensor,
    weight_shape: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    groups: int,
    bias_grad: bool,
) -> tuple[Tensor, Tensor]:
    """(grad_w (K, C/groups, R, S) channels-last, grad_b (K,) or empty)."""
    geometry = (tuple(stride), tuple(padding), tuple(dilation))
    grad_w, grad_b = conv_kernels.conv2d_bwd_weight(
        grad, x, tuple(weight_shape), *geometry, bias_grad, groups
    )
    return grad_w, (grad_b if grad_b is not None else _nothing(x))


conv2d_weight_grad = custom_op(
    "fastconv::conv2d_weight_grad", _conv2d_weight_grad_impl, mutates_args=()
)


@conv2d_weight_grad.register_fake
def _(grad, x, weight_shape, stride, padding, dilation, groups, bias_grad):
    grad_w = _empty(weight_shape, x, torch.channels_last)
    return grad_w, (
        _empty((weight_shape[0],), x, torch.contiguous_format) if bias_grad else _nothing(x)
    )


def _conv2d_setup_context(ctx, inputs, output) -> None:
    (x, weight, bias, scale, _, stride, padding, dilation, groups, _, activation,
     negative_slope, save_preact) = inputs  # fmt: skip
    y, preact = output
    saved = preact if save_preact else (None if activation == "identity" else y)
    ctx.save_for_backward(x, weight, scale, saved)
    ctx.mark_non_differentiable(preact)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for preact: it has none
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.activation = (activation, negative_slope)


def _conv2d_backward(ctx, grad_y, _grad_preact, backward_ops: BackwardOps):
    """grad_z once, then dgrad on the scaled weight and wgrad on grad_z (docs/decisions.md,
    "A scale costs no saved tensor")."""
    x, weight, scale, saved = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    needs = ctx.needs_input_grad
    grad_z = grad_y
    if saved is not None:
        grad_z = backward_ops.activation_backward(grad_y, saved, *ctx.activation)
    grad_x = grad_w = grad_b = grad_scale = None
    if needs[0]:
        scaled_weight = weight if scale is None else weight * scale.view(-1, 1, 1, 1)
        grad_x = backward_ops.conv2d_input_grad(
            grad_z, scaled_weight, x.shape, stride, padding, dilation, groups
        )
    need_bias_grad = ctx.has_bias and needs[2]
    need_scale_grad = scale is not None and needs[3]
    if needs[1] or need_bias_grad or need_scale_grad:
        raw_grad_w, raw_grad_b = backward_ops.conv2d_weight_grad(
            grad_z, x, weight.shape, stride, padding, dilation, groups, need_bias_grad
        )
        grad_b = raw_grad_b if need_bias_grad else None
        if need_scale_grad:
            per_channel = (raw_grad_w.float() * weight.float()).sum(dim=(1, 2, 3))
            grad_scale = per_channel.to(scale.dtype)
        if needs[1]:
            grad_w = raw_grad_w if scale is None else raw_grad_w * scale.view(-1, 1, 1, 1)
    grad_residual = grad_z if needs[4] else None
    return grad_x, grad_w, grad_b, grad_scale, grad_residual, *([None] * 8)


# --------------------------------------------------------------------------- pooling


def _max_pool2d_impl(
    x: Tensor,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    output_size: Ints,
    store_argmax: bool,
) -> tuple[Tensor, Tensor]:
    """(y, argmax): argmax (``r*KW + s`` in the window, int8/16/32) or empty."""
    geometry = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    y, argmax = pool_kernels.max_pool2d_fwd(x, *geometry, tuple(output_size), store_argmax)
    return y, (argmax if argmax is not None else _nothing(x))


max_pool2d = custom_op("fastconv::max_pool2d", _max_pool2d_impl, mutates_args=())


@max_pool2d.register_fake
def _(x, kernel_size, stride, padding, dilation, output_size, store_argmax):
    from fastconv.kernels.pool2d import _argmax_dtype

    shape = (*x.shape[:2], *output_size)
    memory_format = memory_format_of(x)
    y = _empty(shape, x, memory_format)
    if not store_argmax:
        return y, _nothing(x)
    return y, _empty(shape, x, memory_format, _argmax_dtype(tuple(kernel_size)))


def _max_pool2d_backward_impl(
    grad_y: Tensor,
    argmax: Tensor,
    input_shape: Ints,
    channels_last: bool,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
) -> Tensor:
    """grad_x (N, C, H, W), channels-last or contiguous, from the compact argmax."""
    geometry = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    layout = (torch.Size(input_shape), _format(channels_last))
    return pool_kernels.max_pool2d_bwd(grad_y, argmax, *layout, *geometry)


max_pool2d_backward = custom_op(
    "fastconv::max_pool2d_backward", _max_pool2d_backward_impl, mutates_args=()
)


@max_pool2d_backward.register_fake
def _(grad_y, argmax, input_shape, channels_last, kernel_size, stride, padding, dilation):
    return _empty(input_shape, grad_y, _format(channels_last))


def _max_pool2d_setup_context(ctx, inputs, output) -> None:
    x, kernel_size, stride, padding, dilation, _, _ = inputs
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for argmax: it has none
    ctx.save_for_backward(argmax)
    ctx.input_layout = (x.shape, memory_format_of(x) == torch.channels_last)
    ctx.pool_args = (kernel_size, stride, padding, dilation)


def _max_pool2d_backward(ctx, grad_y, _grad_argmax, backward_ops: BackwardOps):
    (argmax,) = ctx.saved_tensors
    grad_x = backward_ops.max_pool2d_backward(grad_y, argmax, *ctx.input_layout, *ctx.pool_args)
    return grad_x, *([None] * 6)


def _avg_pool2d_impl(
    x: Tensor,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    output_size: Ints,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """y (N, C, P, Q) in x's memory format."""
    geometry = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(output_size))
    return pool_kernels.avg_pool2d_fwd(x, *geometry, count_include_pad, divisor_override)


avg_pool2d = custom_op("fastconv::avg_pool2d", _avg_pool2d_impl, mutates_args=())


@avg_pool2d.register_fake
def _(x, kernel_size, stride, padding, output_size, count_include_pad, divisor_override):
    return _empty((*x.shape[:2], *output_size), x, memory_format_of(x))


def _avg_pool2d_backward_impl(
    grad_y: Tensor,
    input_shape: Ints,
    channels_last: bool,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """grad_x (N, C, H, W), channels-last or contiguous."""
    layout = (torch.Size(input_shape), _format(channels_last))
    geometry = (tuple(kernel_size), tuple(stride), tuple(padding))
    return pool_kernels.avg_pool2d_bwd(
        grad_y, *layout, *geometry, count_include_pad, divisor_override
    )


avg_pool2d_backward = custom_op(
    "fastconv::avg_pool2d_backward", _avg_pool2d_backward_impl, mutates_args=()
)


@avg_pool2d_backward.register_fake
def _(grad_y, input_shape, channels_last, kernel_size, stride, padding, count_include_pad,
      divisor_override):  # fmt: skip
    return _empty(input_shape, grad_y, _format(channels_last))


def _avg_pool2d_setup_context(ctx, inputs, output) -> None:
    x, kernel_size, stride, padding, _, count_include_pad, divisor_override = inputs
    ctx.input_layout = (x.shape, memory_format_of(x) == torch.channels_last)
    ctx.pool_args = (kernel_size, stride, padding, count_include_pad, divisor_override)


def _avg_pool2d_backward(ctx, grad_y, backward_ops: BackwardOps):
    grad_x = backward_ops.avg_pool2d_backward(grad_y, *ctx.input_layout, *ctx.pool_args)
    return grad_x, *([None] * 6)


def _adaptive_avg_pool2d_impl(x: Tensor, output_size: Ints) -> Tensor:
    """y (N, C, P, Q) in x's memory format."""
    return pool_kernels.adaptive_avg_pool2d_fwd(x, tuple(output_size))


adaptive_avg_pool2d = custom_op(
    "fastconv::adaptive_avg_pool2d", _adaptive_avg_pool2d_impl, mutates_args=()
)


@adaptive_avg_pool2d.register_fake
def _(x, output_size):
    return _empty((*x.shape[:2], *output_size), x, memory_format_of(x))


def _adaptive_avg_pool2d_backward_impl(
    grad_y: Tensor, input_shape: Ints, channels_last: bool
) -> Tensor:
    """grad_x (N, C, H, W), channels-last or contiguous."""
    return pool_kernels.adaptive_avg_pool2d_bwd(
        grad_y, torch.Size(input_shape), _format(channels_last)
    )


adaptive_avg_pool2d_backward = custom_op(
    "fastconv::adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_impl, mutates_args=()
)


@adaptive_avg_pool2d_backward.register_fake
def _(grad_y, input_shape, channels_last):
    return _empty(input_shape, grad_y, _format(channels_last))


def _adaptive_setup_context(ctx, inputs, output) -> None:
    x, _ = inputs
    ctx.input_layout = (x.shape, memory_format_of(x) == torch.channels_last)


def _adaptive_avg_pool2d_backward(ctx, grad_y, backward_ops: BackwardOps):
    return backward_ops.adaptive_avg_pool2d_backward(grad_y, *ctx.input_layout), None


# --------------------------------------------------------------------------- padding


def _padded_shape(shape: Ints, padding: Ints) -> tuple[int, int, int, int]:
    left, right, top, bottom = padding
    n, c, h, w = shape
    return n, c, h + top + bottom, w + left + right


def _pad2d_impl(x: Tensor, padding: Ints, mode: str) -> Tensor:
    """``F.pad(x, padding, mode)`` for x (N, C, H, W) on the Triton kernel: channels-last.

    An op (``torch.ops.fastconv.pad2d``) with a fake implementation and an autograd formula,
    so torch.compile and torch.export see it whole; arguments are already validated.
    """
    return pad_kernels.pad2d_fwd(x, tuple(padding), mode)


pad2d = custom_op("fastconv::pad2d", _pad2d_impl, mutates_args=())


@pad2d.register_fake
def _(x, padding, mode):
    return _empty(_padded_shape(x.shape, padding), x, torch.channels_last)


def _pad2d_backward_impl(
    grad_y: Tensor, input_shape: Ints, padding: Ints, mode: str, channels_last: bool
) -> Tensor:
    """grad_x (N, C, H, W), channels-last or contiguous, from the padded tensor's gradient."""
    return pad_kernels.pad2d_bwd(
        grad_y, tuple(input_shape), tuple(padding), mode, _format(channels_last)
    )


pad2d_backward = custom_op("fastconv::pad2d_backward", _pad2d_backward_impl, mutates_args=())


@pad2d_backward.register_fake
def _(grad_y, input_shape, padding, mode, channels_last):
    return _empty(input_shape, grad_y, _format(channels_last))


def _pad2d_setup_context(ctx, inputs, output) -> None:
    x, padding, mode = inputs
    ctx.input_layout = (x.shape, memory_format_of(x) == torch.channels_last)
    ctx.pad_args = (padding, mode)


def _pad2d_backward(ctx, grad_y, backward_ops: BackwardOps):
    input_shape, channels_last = ctx.input_layout
    padding, mode = ctx.pad_args
    grad_x = backward_ops.pad2d_backward(grad_y, input_shape, padding, mode, channels_last)
    return grad_x, None, None


# --------------------------------------------------------------------------- autograd, eager


class BackwardOps(NamedTuple):
    """The backward ops a forward's gradient formula calls: the registered ops when the
    formula runs inside a traced graph, their implementations when it runs eagerly."""

    activation_backward: Callable
    conv2d_input_grad: Callable
    conv2d_weight_grad: Callable
    max_pool2d_backward: Callable
    avg_pool2d_backward: Callable
    adaptive_avg_pool2d_backward: Callable
    pad2d_backward: Callable


TRACED = BackwardOps(
    activation_backward, conv2d_input_grad, conv2d_weight_grad, max_pool2d_backward,
    avg_pool2d_backward, adaptive_avg_pool2d_backward, pad2d_backward,
)  # fmt: skip
EAGER = BackwardOps(
    _activation_backward_impl, _conv2d_input_grad_impl, _conv2d_weight_grad_impl,
    _max_pool2d_backward_impl, _avg_pool2d_backward_impl, _adaptive_avg_pool2d_backward_impl,
    _pad2d_backward_impl,
)  # fmt: skip

# forward op -> (its implementation, autograd setup_context, gradient formula)
_FORWARDS = {
    conv2d: (_conv2d_impl, _conv2d_setup_context, _conv2d_backward),
    max_pool2d: (_max_pool2d_impl, _max_pool2d_setup_context, _max_pool2d_backward),
    avg_pool2d: (_avg_pool2d_impl, _avg_pool2d_setup_context, _avg_pool2d_backward),
    adaptive_avg_pool2d: (
        _adaptive_avg_pool2d_impl, _adaptive_setup_context, _adaptive_avg_pool2d_backward,
    ),
    pad2d: (_pad2d_impl, _pad2d_setup_context, _pad2d_backward),
}  # fmt: skip


def _eager_function(op, impl, setup_context, backward) -> type[torch.autograd.Function]:
    """An autograd.Function running ``op``'s implementation and gradient formula directly.

    Its forward takes ``ctx`` and calls ``setup_context`` itself: a Function that defines
    ``setup_context`` has ``apply`` bind its arguments with ``inspect.signature`` at every call.
    """

    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    return type(
        f"{op._name}_function",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(forward),
            "backward": staticmethod(
                once_differentiable(functools.partial(backward, backward_ops=EAGER))
            ),
        },
    )


_EAGER_FUNCTIONS = {}
for _op, (_impl, _setup_context, _backward) in _FORWARDS.items():
    _op.register_autograd(
        functools.partial(_backward, backward_ops=TRACED), setup_context=_setup_context
    )
    _EAGER_FUNCTIONS[_op] = _eager_function(_op, _impl, _setup_context, _backward)


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def traced(tensors: Sequence[Tensor]) -> bool:
    """Whether a graph is being traced around a call on ``tensors``: torch.compile /
    torch.export's dynamo, or a dispatch mode (fake tensors, make_fx, functionalization), or
    tensor subclasses among them. Such tracers must see the registered op as one node."""
    return (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack() > 0
        or any(type(t) not in _PLAIN_TENSORS for t in tensors)
    )


def call(op, *args):
    """Run the forward op ``op`` (one of this module's: conv2d, the poolings, pad2d) on
    ``args``, the op's own arguments.

    While a graph is traced (:func:`traced`) this is ``op(*args)``, the registered op with
    its autograd formula; eagerly it runs the same implementation and formula without the
    custom-op dispatch, which costs several times an autograd.Function per call: through an
    autograd.Function when a gradient is needed, else by a direct call.
    """
    tensors = [a for a in args if isinstance(a, Tensor)]
    if traced(tensors):
        return op(*args)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _EAGER_FUNCTIONS[op].apply(*args)
    return _FORWARDS[op][0](*args)
