"""Correctness checks run once per case before it is timed, so a wrong kernel fails its benchmark.

The reference is the same op (or model) in float64 on the same inputs. float32 is compared as
TF32 when ``torch.backends.cudnn.allow_tf32`` lets cuDNN and the fastconv kernels use it, as it
does by default. The whole-model check has its own, looser bounds (see :func:`check_model`).

The ReLU's backward mask is taken from the checked provider's own output (``y > 0``), so an
output within rounding of zero that the low-precision forward put on the other side of the
ReLU does not count as a gradient error: the mask itself is checked through the output.

Per-op tolerances
-----------------
Every tensor (output, grad_input, grad_weight, grad_bias) must pass two bounds
(:data:`TOLERANCES`): the **max-norm** error ``max|actual - reference| / max|reference|``,
which catches any wrong element or tile, and the **L2** error
``||actual - reference|| / ||reference||``, which catches a small error spread over the whole
tensor. The reference is computed from the very tensors the provider got (already in fp16 or
bf16), so rounding the inputs is not an error; only what happens inside the op is. With
``u`` the unit roundoff of the result (fp16: 2**-11 = 4.9e-4, bf16: 2**-8 = 3.9e-3):

1. Products. fp16 x fp16 (11-bit significands) and bf16 x bf16 (8 bits) products are exact
   in fp32 (22 and 16 bits <= 24): tensor cores and fastconv's kernels multiply without error.
2. The K-long reduction in fp32 (K = C*R*S for the forward, K*R*S for dgrad and N*P*Q, up to
   about 10**6, for wgrad). The worst-case bound of a sum, K * 2**-24 * sum|terms|, is useless
   at that length (6 %), but rounding errors of sums of random-signed terms behave like a
   random walk (Higham and Mary, "A new approach to probabilistic rounding error analysis",
   2019): about ``2**-24 * sqrt(L)`` of the result for a chain of L additions, under 1e-4 even
   for L = 10**6, and far less for the chains actually run (BLOCK_K-wide MMA steps over at
   most a few thousand rows per split-K program, then the partial sums added in fp32).
   Tensor cores' truncating fp32 additions at most double it.
3. Rounding the result to fp16/bf16 moves an element by at most ``u * |value|``. fastconv
   rounds once (bias and ReLU are applied in fp32); eager cuDNN and torch.compile round the
   conv's output, add the bias and round again: up to ``2u`` of ``max|reference|``.

So an fp16/bf16 op that works as in 1-3 has a max-norm error of at most ``2u + 1e-4`` (1.1e-3
in fp16, 7.9e-3 in bf16): the max-norm bounds are ``4u``. Rounding errors are spread over
+-ulp/2, so their L2 error is about ``0.4u`` per rounding and ``0.6u`` for two (2.9e-4 in
fp16, 2.3e-3 in bf16): the L2 bounds are ``2u`` in fp16 and ``1.5u`` in bf16 (which has less
room, see below).
Measured on the CPU in fp16: fastconv in Triton's interpreter at most 3.9e-4 max-norm and
2.9e-4 L2; torch's own CPU convolution, whose dgrad rounds more often than 1-3 allow, 1.2e-3
and 5e-4 (tests/test_checks.py accepts both). TF32 rounds each input of
a product to 10 significand bits inside the op (the reference keeps all 23): each product is
off by up to 2**-9 relative (truncation) with random sign plus, when truncating, a systematic
shrink of up to 2**-10, about 1e-3 of the result in L2 and 2e-3 in max-norm: bounds 5e-3 and
2.5e-3. IEEE float32 (u = 6e-8) is left at 1e-4, the room cuDNN's FFT and Winograd
algorithms need.

Fused epilogues (:func:`check_fused_conv`): ``act(conv2d(x, w) * scale + bias + residual)``.
fastconv still rounds once; eager and torch.compile may round after every op: the conv, the
scale, the bias, the residual add and the activation (all but identity, relu and relu6,
which return a rounded input unchanged). Against the two roundings above, an epilogue whose
eager code rounds ``r`` times gets fp16/bf16 bounds ``r/2`` times the max-norm bound and
``sqrt(r/2)`` times the L2 bound (random rounding errors add in quadrature); float32's
rounding is far below its bounds, which stay as they are. For ``bn+residual+relu`` (r = 4)
in bf16 that is 3.2e-2 and 8.5e-3, which still rejects a dropped split-K partial sum.
Where an activation's derivative jumps (relu at 0, relu6 at 0 and 6, leaky_relu at 0,
hardswish at -3 and 3), a pre-activation within rounding of the jump may fall on either
side in low precision, and its gradient by a whole step. The checked output gradient is
therefore zero wherever the float64 pre-activation is within the output's max-norm bound
(times its max) of a jump: up to about 15 % of the elements in bf16 (``bn+residual+relu``),
1-2 % in fp16 and TF32; the output itself is checked everywhere.

What the bounds reject (tests/test_checks.py checks each):

* A dropped split-K partial sum: wgrad sums S partial sums over disjoint slices of the N*P*Q
  rows; losing one moves grad_weight (and grad_bias) by about ``1/sqrt(S)`` in L2 and a
  little less in max-norm. At any batch size the launcher splits the benchmarked layers into
  at most 4854 programs (its program cap for the 864-element 3 -> 32 channel first layer;
  2048 at today's batch on a GPU): 0.014 in L2, 0.013 in max-norm. The previous single bf16
  bound (2e-2 max-norm) let that through; the L2 bound 6e-3 rejects it with a 2x margin.
  Keeping only one of the S partial sums is off by ``1 - 1/S`` or more.
* A missing bias: the output moves by the bias, which the benchmark inputs draw as
  0.5 * N(0, 1) against a unit-variance pre-activation: 0.1 or more of the output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.environment import DTYPE_NAMES
from benchmarks.providers import torch_preactivation
from benchmarks.shapes import ConvShape, Epilogue, FusedConvCase, PoolShape
from fastconv.activations import reference_activation


class Tolerance(NamedTuple):
    """Largest accepted errors of a result, relative to the reference (see the module doc)."""

    max_norm: float  # max|actual - reference| / max|reference|
    l2: float  # ||actual - reference|| / ||reference||


TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-4),
    "tf32": Tolerance(5e-3, 2.5e-3),
    "fp16": Tolerance(2e-3, 1e-3),
    "bf16": Tolerance(1.6e-2, 6e-3),
}
EXACT = Tolerance(0.0, 0.0)


def tolerance(dtype: torch.dtype, tf32_applies: bool) -> Tolerance:
    """The bounds for results computed in ``dtype``.

    ``tf32_applies``: the op is a convolution, whose float32 math follows cuDNN's TF32 flag.
    """
    if dtype == torch.float32:
        tf32 = tf32_applies and torch.backends.cudnn.allow_tf32
        return TOLERANCES["tf32" if tf32 else "fp32"]
    return TOLERANCES[DTYPE_NAMES[dtype]]


def assert_close_to_reference(name: str, actual: Tensor, reference: Tensor, tol: Tolerance) -> None:
    """Raise AssertionError when ``actual`` is off ``reference`` (float64) by more than ``tol``."""
    if actual.shape != reference.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}")
    tiny = torch.finfo(torch.float64).tiny
    difference = actual.double() - reference
    errors = {
        "max-norm": (
            (difference.abs().max() / reference.abs().max().clamp_min(tiny)).item(),
            tol.max_norm,
        ),
        "L2": ((difference.norm() / reference.norm().clamp_min(tiny)).item(), tol.l2),
    }
    for norm, (error, bound) in errors.items():
        if not error <= bound:  # also catches NaN
            raise AssertionError(
                f"{name}: {norm} error {error:.2e} of the reference exceeds {bound:.1e} "
                f"(shape {tuple(actual.shape)}, dtype {actual.dtype})"
            )


def _float64_leaf(t: Tensor) -> Tensor:
    return t.detach().double().requires_grad_(t.requires_grad)


def check_conv(
    op: Callable[..., Tensor],
    inputs: tuple[Tensor, Tensor, Tensor],
    grad_output: Tensor,
    shape: ConvShape,
    with_backward: bool,
) -> None:
    """``op(x, w, b)`` and, if ``with_backward``, its three gradients against float64."""
    tol = tolerance(inputs[0].dtype, tf32_applies=True)
    reference_inputs = tuple(_float64_leaf(t) for t in inputs)
    pre_activation = F.conv2d(
        *reference_inputs, shape.stride, shape.padding, shape.dilation, shape.groups
    )
    with torch.set_grad_enabled(with_backward):
        output = op(*inputs)
    assert_close_to_reference("output", output, pre_activation.relu(), tol)
    if not with_backward:
        return
    grads = torch.autograd.grad(output, inputs, grad_output)
    masked_grad_output = grad_output.double() * (output > 0)
    reference_grads = torch.autograd.grad(pre_activation, reference_inputs, masked_grad_output)
    for name, grad, reference in zip(
        ("grad_input", "grad_weight", "grad_bias"), grads, reference_grads, strict=True
    ):
        assert_close_to_reference(name, grad, reference, tol)


# where each activation's derivative jumps (the others' are continuous)
DERIVATIVE_JUMPS = {
    "relu": (0.0,),
    "relu6": (0.0, 6.0),
    "leaky_relu": (0.0,),
    "hardswish": (-3.0, 3.0),
}
# activations that eager torch applies without rounding (they return their input or a constant)
EXACT_ACTIVATIONS = frozenset({"identity", "relu", "relu6"})


def epilogue_tolerance(dtype: torch.dtype, epilogue: Epilogue) -> Tolerance:
    """The conv bounds widened for the roundings of the epilogue's eager ops (module doc)."""
    conv_tol = tolerance(dtype, tf32_applies=True)
    if dtype == torch.float32:
        return conv_tol
    roundings = (
        2  # the conv's output, then the bias add
        + epilogue.scale
        + epilogue.residual
        + (epilogue.activation not in EXACT_ACTIVATIONS)
    )
    widening = roundings / 2
    return Tolerance(conv_tol.max_norm * widening, conv_tol.l2 * math.sqrt(widening))


def check_fused_conv(
    op: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    grad_output: Tensor,
    case: FusedConvCase,
    with_backward: bool,
) -> None:
    """``op(x, w, b, *epilogue operands)`` and, if ``with_backward``, all its gradients
    against float64; the output gradient is zeroed next to the activation's derivative jumps."""
    epilogue = case.epilogue
    tol = epilogue_tolerance(inputs[0].dtype, epilogue)
    reference_inputs = tuple(_float64_leaf(t) for t in inputs)
    x, w, b, *operands = reference_inputs
    preactivation = torch_preactivation(x, w, b, case.shape, **epilogue.operand_kwargs(operands))
    reference = reference_activation(preactivation, epilogue.activation)
    with torch.set_grad_enabled(with_backward):
        output = op(*inputs)
    assert_close_to_reference("output", output, reference, tol)
    if not with_backward:
        return
    with torch.no_grad():
        margin = tol.max_norm * preactivation.abs().max()
        near_jump = torch.zeros_like(preactivation, dtype=torch.bool)
        for jump in DERIVATIVE_JUMPS.get(epilogue.activation, ()):
            near_jump |= (preactivation - jump).abs() <= margin
    checked_grad_output = grad_output.masked_fill(near_jump, 0)
    grads = torch.autograd.grad(output, inputs, checked_grad_output)
    reference_grads = torch.autograd.grad(reference, reference_inputs, checked_grad_output.double())
    names = ("input", "weight", "bias", *epilogue.operand_names)
    for name, grad, reference_grad in zip(names, grads, reference_grads, strict=True):
        assert_close_to_reference(f"grad_{name}", grad, reference_grad, tol)


def tie_free_pool_input(shape: PoolShape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Random (n, c, h, w) input whose values differ within every window of up to 3x3.

    Max pooling's gradient goes to one argmax per window; with ties (frequent in bf16) the
    choice is arbitrary, so the check uses inputs without them. Value at (h, w) is
    ``perm[(3*h + w) % 9] - 4 + u`` with a random permutation ``perm`` of 0..8 and
    ``u ~ U[0, 0.25)``: any 3x3 window holds nine distinct integer parts, and every value
    (up to 8.25) is exact or rounds by at most 1/32 in bf16 and fp16.
    """
    kernel = shape.kwargs.get("kernel_size", 1)
    if max(kernel if isinstance(kernel, tuple | list) else (kernel,)) > 3:
        raise ValueError(f"tie-free inputs cover windows up to 3x3, got kernel_size={kernel}")
    rows = torch.arange(shape.h, device=device).view(-1, 1)
    cols = torch.arange(shape.w, device=device).view(1, -1)
    perm = torch.randperm(9, device=device)
    integer_part = perm[(3 * rows + cols) % 9].to(torch.float32) - 4.0
    fraction = 0.25 * torch.rand(shape.n, shape.c, shape.h, shape.w, device=device)
    return (integer_part + fraction).to(dtype)


def check_pool(
    op: Callable[[Tensor], Tensor], x: Tensor, grad_output: Tensor, shape: PoolShape
) -> None:
    """``op(x)`` and its input gradient against float64 (max pooling's output: exact)."""
    tol = tolerance(x.dtype, tf32_applies=False)
    reference_x = _float64_leaf(x)
    reference = getattr(F, shape.op)(reference_x, **shape.kwargs)
    output = op(x)
    assert_close_to_reference(
        "output", output, reference, EXACT if shape.op == "max_pool2d" else tol
    )
    (grad,) = torch.autograd.grad(output, x, grad_output)
    (reference_grad,) = torch.autograd.grad(reference, reference_x, grad_output.double())
    assert_close_to_reference("grad_input", grad, reference_grad, tol)


def check_pad(op: Callable[[Tensor], Tensor], x: Tensor, grad_output: Tensor, shape) -> None:
    """``op(x)`` exactly ``F.pad``'s (a copy), and its input gradient against float64."""
    reference_x = _float64_leaf(x)
    reference = F.pad(reference_x, shape.padding, mode=shape.mode)
    output = op(x)
    assert_close_to_reference("output", output, reference, EXACT)
    (grad,) = torch.autograd.grad(output, x, grad_output)
    (reference_grad,) = torch.autograd.grad(reference, reference_x, grad_output.double())
    assert_close_to_reference("grad_input", grad, reference_grad, tolerance(x.dtype, False))


# (logits, gradients) tolerances of the whole-model check, as relative L2 errors. Gradients
# of a deep ReLU net are loose by nature: every activation that rounding moves across zero
# switches a whole gradient term (measured on the CPU at 64 px: bf16 autocast 4.6e-2,
# float32 4e-4 against float64). The kernels themselves are checked strictly per op.
MODEL_TOLERANCE = {
    "fp32": (1e-4, 1e-2),
    "tf32": (2e-2, 1e-1),
    "fp16": (2e-2, 1e-1),
    "bf16": (5e-2, 2e-1),
}


def _relative_l2(actual: Tensor, expected: Tensor) -> float:
    scale = expected.norm().clamp_min(torch.finfo(torch.float64).tiny)
    return ((actual.double() - expected).norm() / scale).item()


def _model_math(images: Tensor, dtype: torch.dtype | None) -> str:
    """The key of :data:`MODEL_TOLERANCE` for a model computing in ``dtype`` (None: float32)
    on ``images``: float32 on a GPU is TF32 when cuDNN's flag allows it."""
    if dtype is not None and dtype != torch.float32:
        return DTYPE_NAMES[dtype]
    return "tf32" if images.is_cuda and torch.backends.cudnn.allow_tf32 else "fp32"


def check_model(
    model: nn.Module,
    reference: nn.Module,
    images: Tensor,
    labels: Tensor,
    autocast_dtype: torch.dtype | None,
) -> None:
    """Logits and parameter gradients of ``model`` against ``reference``, its float64 copy.

    Both run in eval mode (dropout draws nothing, BatchNorm uses its running statistics),
    ``model`` under autocast to ``autocast_dtype`` if given. Errors are relative L2 norms,
    of the logits and of all parameter gradients together (:data:`MODEL_TOLERANCE`).
    """
    math = _model_math(images, autocast_dtype)
    logits_tol, grads_tol = MODEL_TOLERANCE[math]
    was_training = model.training
    model.eval()
    reference.eval()
    try:
        with torch.autocast(
            images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            logits = model(images).float()
        grads = torch.autograd.grad(F.cross_entropy(logits, labels), list(model.parameters()))
        reference_logits = reference(images.double())
        reference_grads = torch.autograd.grad(
            F.cross_entropy(reference_logits, labels), list(reference.parameters())
        )
    finally:
        model.train(was_training)
    errors = {
        "logits": (_relative_l2(logits, reference_logits), logits_tol),
        "gradients": (
            _relative_l2(
                torch.cat([g.flatten() for g in grads]),
                torch.cat([g.flatten() for g in reference_grads]),
            ),
            grads_tol,
        ),
    }
    _assert_model_errors(errors, math)


def _assert_model_errors(errors: dict[str, tuple[float, float]], math: str) -> None:
    """Raise AssertionError for any ``name: (relative L2 error, bound)`` over its bound."""
    for name, (error, tol) in errors.items():
        if not error <= tol:  # also catches NaN
            raise AssertionError(
                f"model {name}: relative L2 error {error:.2e} exceeds {tol:.0e} ({math})"
            )


def check_logits(model: nn.Module, reference: nn.Module, images: Tensor) -> None:
    """Eval-mode logits of ``model`` on ``images`` (in the model's own dtype, no autocast)
    against ``reference``, its float64 copy, under the logits bound of :data:`MODEL_TOLERANCE`
    for the images' dtype (an inference forward has no gradients to check). Measured on the
    CPU for a converted torchvision resnet50 in bf16 (4 images at 224 px, random weights and
    BatchNorm statistics): 8.7e-3 on fastconv's layers, 6.8e-3 in eager torch.
    """
    math = _model_math(images, images.dtype)
    with torch.no_grad():
        logits = model(images)
        reference_logits = reference(images.double())
    error = _relative_l2(logits, reference_logits)
    _assert_model_errors({"logits": (error, MODEL_TOLERANCE[math][0])}, math)
