"""Grouped convolution (``groups > 1``, depthwise included) on the Triton kernels against
float64 torch: output and every gradient, NCHW and channels_last, fp32 and fp16, and no aten
convolution op on the way (the implicit GEMM runs one GEMM per group; wgrad pads each group's
channels to 16)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE

from fastconv.functional import conv2d, conv2d_bias_relu

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
GROUPED_SHAPES = [
    pytest.param(2, 8, 7, 6, 12, 3, 3, 1, 1, 1, 2, id="groups2"),
    pytest.param(2, 10, 9, 8, 5, 3, 3, 2, 1, 1, 5, id="groups5-stride2-odd-channels"),
    pytest.param(1, 12, 8, 7, 24, 3, 2, (2, 3), (1, 0), (2, 1), 4, id="groups4-asymmetric"),
    pytest.param(2, 6, 7, 7, 6, 3, 3, 1, 1, 1, 6, id="depthwise"),
    pytest.param(2, 6, 7, 7, 12, 3, 3, (2, 1), 1, 1, 6, id="depthwise-multiplier2"),
    pytest.param(2, 32, 5, 5, 64, 1, 1, 1, 0, 1, 2, id="groups2-16-aligned-1x1"),
]

# (dtype, atol, rtol): atol scaled by sqrt(reduction length), as in tests/test_conv2d.py
DTYPES = [
    pytest.param(torch.float32, 2e-5, 1e-4, id="fp32"),
    pytest.param(torch.float16, 2e-5, 1e-3, id="fp16"),
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize(("op", "relu"), [(conv2d_bias_relu, True), (conv2d, False)])
@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dil", "groups"), GROUPED_SHAPES
)
def test_grouped_matches_torch(
    triton_backend, record_aten_ops, op, relu, dtype, atol, rtol, layout,
    n, c, h, w, k, r, s, stride, padding, dil, groups,
):  # fmt: skip
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=DEVICE).to(dtype, memory_format=memory_format)
    x.requires_grad_()
    weight = torch.randn(k, c // groups, r, s, device=DEVICE, dtype=dtype, requires_grad=True)
    bias = torch.randn(k, device=DEVICE, dtype=dtype, requires_grad=True)
    with record_aten_ops() as recorder:
        y = op(x, weight, bias, stride, padding, dil, groups)
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
    assert recorder.forbidden() == []

    x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.conv2d(x64, w64, b64, stride, padding, dil, groups)
    y64 = F.relu(y64) if relu else y64
    y64.backward(grad_y.cpu().double())
    assert y.is_contiguous(memory_format=memory_format)
    p, q = y.shape[2:]
    per_group_c, per_group_k = c // groups, k // groups
    for actual, expected, reduction, what in (
        (y, y64, per_group_c * r * s, "output"),
        (x.grad, x64.grad, per_group_k * r * s, "grad input"),
        (weight.grad, w64.grad, n * p * q, "grad weight"),
        (bias.grad, b64.grad, n * p * q, "grad bias"),
    ):
        torch.testing.assert_close(
            actual.detach().cpu().double(),
            expected,
            atol=atol * math.sqrt(reduction),
            rtol=rtol,
            msg=lambda m, what=what: f"{what}: {m}",
        )
