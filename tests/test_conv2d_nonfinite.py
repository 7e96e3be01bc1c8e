"""NaN and inf through the fused conv2d + bias + ReLU, forward and backward, exactly as torch.

torch's semantics (checked on the CPU): ``relu(NaN) = NaN`` (forward keeps NaN), and the
backward, ``threshold_backward(grad, y, 0)``, zeroes the gradient where ``y <= 0`` only, so
at ``y = NaN`` the gradient passes. Every result is compared with torch in float64
elementwise: the NaN positions must be the same, and the other values close (infinities
equal).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE

from fastconv.functional import conv2d_bias_relu

NAN, INF = float("nan"), float("inf")
# numpy (the interpreter's dot) warns on inf - inf and NaN: here they are the point
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# where the non-finite values go: (tensor, index, value). A non-finite weight sits on the
# centre tap of the 3x3, padding 1: that tap reaches every input pixel from an output pixel
# inside the image. An edge tap would also meet the zero-filled halo that an implicit GEMM
# multiplies (0 * NaN = NaN at the image border of grad_x), where torch's CPU col2im has
# no term at all: that is the convolution's border arithmetic, not the ReLU's semantics.
CASES = [
    pytest.param([("x", (0, 1, 2, 3), NAN)], id="nan-in-x"),
    pytest.param([("x", (1, 0, 4, 4), INF), ("x", (0, 2, 1, 1), -INF)], id="inf-in-x"),
    pytest.param([("weight", (2, 1, 1, 1), NAN)], id="nan-in-weight"),
    pytest.param([("weight", (1, 0, 1, 1), INF)], id="inf-in-weight"),
]
DTYPES = [
    pytest.param(torch.float32, 2e-5, 1e-4, id="fp32"),
    pytest.param(torch.float16, 2e-5, 1e-3, id="fp16"),
]


def assert_same_nonfinite_and_close(actual, expected, atol, rtol, what):
    actual = actual.detach().cpu().double()
    assert torch.equal(actual.isnan(), expected.isnan()), (
        f"{what}: NaN at {actual.isnan().nonzero().tolist()}, "
        f"torch has NaN at {expected.isnan().nonzero().tolist()}"
    )
    torch.testing.assert_close(
        actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("poison", CASES)
def test_relu_propagates_nan_and_inf_like_torch(triton_backend, poison, dtype, atol, rtol):
    torch.manual_seed(7)
    n, c, h, w, k = 2, 3, 6, 6, 4
    tensors = {
        "x": torch.randn(n, c, h, w),
        "weight": torch.randn(k, c, 3, 3),
        "bias": torch.randn(k),
    }
    for name, index, value in poison:
        tensors[name][index] = value
    x, weight, bias = (
        tensors[name].to(DEVICE, dtype).requires_grad_() for name in ("x", "weight", "bias")
    )
    y = conv2d_bias_relu(x, weight, bias, padding=1)
    grad_y = torch.randn(y.shape).to(DEVICE, dtype)
    y.backward(grad_y)

    x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.relu(F.conv2d(x64, w64, b64, padding=1))
    y64.backward(grad_y.cpu().double())
    # The case must reach what it is about: non-finite outputs (whose gradient torch passes
    # on), and finite values left to compare.
    assert not y64.isfinite().all() and y64.isfinite().any()
    assert x64.grad.isfinite().any()

    assert_same_nonfinite_and_close(y, y64, atol * math.sqrt(c * 9), rtol, "output")
    assert_same_nonfinite_and_close(x.grad, x64.grad, atol * math.sqrt(k * 9), rtol, "grad x")
    npq = n * h * w
    assert_same_nonfinite_and_close(weight.grad, w64.grad, atol * math.sqrt(npq), rtol, "grad w")
    assert_same_nonfinite_and_close(bias.grad, b64.grad, atol * math.sqrt(npq), rtol, "grad b")


def test_relu_backward_passes_the_gradient_at_nan_like_torch():
    """The semantics the kernels copy, pinned: forward NaN stays NaN, backward passes at NaN."""
    x = torch.tensor([NAN, -1.0, 2.0, INF, -INF, 0.0], dtype=torch.float64, requires_grad=True)
    y = F.relu(x)
    y.backward(torch.full_like(x, 3.0))
    assert y[0].isnan() and y[3] == INF and y[4] == 0 and y[5] == 0
    assert x.grad.tolist() == [3.0, 0.0, 3.0, 3.0, 0.0, 0.0]
