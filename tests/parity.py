"""One call that checks a fastconv op against float64 torch and tells which kernels ran.

The dispatch-boundary tests (docs/dispatch.md) run a small case on each side of a decision.
Each needs the same three things: the Triton backend forced, the output and every gradient
compared with torch in float64, and the kernels that ran (the proof of which side was taken),
with no aten convolution or pooling op among the ops. :func:`conv_parity` and
:func:`pool_parity` do them and return the launches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import profile_ops

from fastconv import backend
from fastconv import functional as fcf
from fastconv.activations import reference_activation
from fastconv.profiling import KernelLaunch, record_launches

# (atol per sqrt(reduction length), rtol): fp32 IEEE and fp16 with an fp32 accumulator, the
# tolerances of tests/test_conv2d.py (the interpreter's bf16 dot is wrong: no bf16 here).
TOLERANCES = {torch.float32: (2e-5, 1e-4), torch.float16: (2e-5, 1e-3)}


def _run(fn, inputs: dict) -> tuple[torch.Tensor, list[KernelLaunch], torch.Tensor]:
    """``fn(**inputs)`` on the Triton backend and its gradients into each leaf's ``.grad``;
    returns (output, kernel launches, the output gradient used)."""
    with backend.use_backend("triton"), record_launches() as launches, profile_ops() as ops:
        y = fn(**inputs)
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
        leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
        grads = torch.autograd.grad(y, leaves, grad_out)
    assert not ops.forbidden(), f"torch did the work: {ops.forbidden()}"
    for leaf, grad in zip(leaves, grads, strict=True):
        leaf.grad = grad
    return y, launches, grad_out


def _check(actual, expected, reduction, dtype, what) -> None:
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double(), expected, atol=atol * math.sqrt(reduction), rtol=rtol,
        msg=lambda m: f"{what}: {m}",
    )  # fmt: skip


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_()


def conv_parity(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: str = "identity",
    negative_slope: float = 0.01,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> list[KernelLaunch]:
    """Run ``fused_conv2d`` on the Triton backend with every operand requiring a gradient;
    assert its output and the gradient of every operand match float64 torch; return the
    kernel launches (forward and backward, in order)."""
    inputs = {
        "input": _leaf(x), "weight": _leaf(weight), "bias": _leaf(bias),
        "scale": _leaf(scale), "residual": _leaf(residual),
    }  # fmt: skip
    conv_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def op(**operands):
        return fcf.fused_conv2d(
            **operands, **conv_args, activation=activation, negative_slope=negative_slope
        )

    y, launches, grad_out = _run(op, inputs)
    reference = {
        name: _leaf(t.detach().cpu().double()) for name, t in inputs.items() if t is not None
    }
    z = F.conv2d(reference["input"], reference["weight"], None, **conv_args)
    if "scale" in reference:
        z = z * reference["scale"].view(1, -1, 1, 1)
    if "bias" in reference:
        z = z + reference["bias"].view(1, -1, 1, 1)
    if "residual" in reference:
        z = z + reference["residual"]
    y_ref = reference_activation(z, activation, negative_slope)
    y_ref.backward(grad_out.cpu().double())
    k, c_per_group, r, s = weight.shape
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    reductions = {  # the length of each sum, for the tolerance
        "output": c_per_group * r * s, "input": k // groups * r * s, "weight": pixels,
        "bias": pixels, "scale": pixels * c_per_group * r * s, "residual": 1,
    }  # fmt: skip
    _check(y.cpu(), y_ref, reductions["output"], x.dtype, "output")
    assert y.dtype == x.dtype
    for name, t in inputs.items():
        if t is not None:
            _check(t.grad.cpu(), reference[name].grad, reductions[name], x.dtype, f"grad {name}")
    return launches


POOLS = {
    "max_pool2d": (fcf.max_pool2d, F.max_pool2d),
    "avg_pool2d": (fcf.avg_pool2d, F.avg_pool2d),
    "adaptive_avg_pool2d": (fcf.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
}


def pool_parity(op: str, x: torch.Tensor, **kwargs) -> list[KernelLaunch]:
    """Run pooling ``op`` (a key of :data:`POOLS`) on the Triton backend; assert its output
    and input gradient match float64 torch exactly up to the output's rounding; return the
    kernel launches (forward and backward)."""
    fastconv_op, torch_op = POOLS[op]
    x = _leaf(x)
    y, launches, grad_out = _run(lambda input: fastconv_op(input, **kwargs), {"input": x})
    x_ref = _leaf(x.detach().cpu().double())
    y_ref = torch_op(x_ref, **kwargs)
    y_ref.backward(grad_out.cpu().double())
    _check(y.cpu(), y_ref, 1, x.dtype, "output")
    _check(x.grad.cpu(), x_ref.grad, 1, x.dtype, "grad input")
    return launches


def kernel_names(launches: list[KernelLaunch]) -> list[str]:
    """The launched kernels' function names, in order."""
    return [launch.name for launch in launches]
