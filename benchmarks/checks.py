"""Correctness checks run once per case before it is timed, so a wrong kernel fails its benchmark.

The reference is the same op (or model) in float64 on the same inputs. Per-op errors are
``max|actual - reference| / max|reference|`` per tensor (the whole-model check uses relative
L2 norms, see :func:`check_model`) and must stay under a per-dtype tolerance. float32 is
compared as TF32 when ``torch.backends.cudnn.allow_tf32`` lets cuDNN and the fastconv
kernels use it, as it does by default.

The ReLU's backward mask is taken from the checked provider's own output (``y > 0``), so an
output within rounding of zero that the low-precision forward put on the other side of the
ReLU does not count as a gradient error: the mask itself is checked through the output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.environment import DTYPE_NAMES
from benchmarks.shapes import ConvShape, PoolShape

RELATIVE_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
TF32_TOLERANCE = 1e-2
FLOAT32_TOLERANCE = 1e-4


def tolerance(dtype: torch.dtype, tf32_applies: bool) -> float:
    """Largest accepted ``max|error| / max|reference|`` for results computed in ``dtype``.

    ``tf32_applies``: the op is a convolution, whose float32 math follows cuDNN's TF32 flag.
    """
    if dtype == torch.float32:
        tf32 = tf32_applies and torch.backends.cudnn.allow_tf32
        return TF32_TOLERANCE if tf32 else FLOAT32_TOLERANCE
    return RELATIVE_TOLERANCE[dtype]


def assert_close_to_reference(name: str, actual: Tensor, reference: Tensor, tol: float) -> None:
    """Raise AssertionError when ``actual`` is off ``reference`` (float64) by more than ``tol``."""
    if actual.shape != reference.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}")
    scale = reference.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    error = ((actual.double() - reference).abs().max() / scale).item()
    if not error <= tol:  # also catches NaN
        raise AssertionError(
            f"{name}: max error {error:.2e} of max |reference| exceeds {tol:.0e} "
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
    pre_activation = F.conv2d(*reference_inputs, shape.stride, shape.padding, shape.dilation)
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
    assert_close_to_reference("output", output, reference, 0.0 if shape.op == "max_pool2d" else tol)
    (grad,) = torch.autograd.grad(output, x, grad_output)
    (reference_grad,) = torch.autograd.grad(reference, reference_x, grad_output.double())
    assert_close_to_reference("grad_input", grad, reference_grad, tol)


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
    if autocast_dtype is not None:
        math = DTYPE_NAMES[autocast_dtype]
    else:
        tf32 = images.is_cuda and torch.backends.cudnn.allow_tf32
        math = "tf32" if tf32 else "fp32"
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
    for name, (error, tol) in errors.items():
        if not error <= tol:
            raise AssertionError(
                f"model {name}: relative L2 error {error:.2e} exceeds {tol:.0e} ({math})"
            )
