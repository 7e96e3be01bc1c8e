"""The depthwise kernels (kernels/conv2d_depthwise.py) against float64 torch, groups = C.

Each case runs the three launchers (forward, input gradient, weight and bias gradient) on
one shape and compares y, grad_x, grad_w and grad_b with ``F.conv2d(..., groups=C)`` in
float64 and its autograd. The shapes aim at what the index math can get wrong: channel
multipliers (K = 2C and 4C: output channel k reads input channel k // m), 3x3 at stride 1 and 2,
5x5 with dilation 2, different strides and paddings along h and w, bottom/right padding
other than top/left (``output_size``), 1x1, channel counts that are not a multiple of the
channel tile or of 8 (3, 13, 40), and pixel counts that are not a multiple of the pixel tile.
Inputs come NCHW, channels_last and as a strided view; outputs are poisoned with NaN
(tests/conftest.py). Every GPU autotune config runs through ``config=`` on a shape with a
full and a partial tile on each axis.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE

from fastconv.kernels import conv2d_depthwise as dw
from fastconv.kernels.epilogue import IDENTITY, RELU
from fastconv.kernels.layout import memory_format_of

# (N, C, m, H, W, R, S, stride, (top, left) padding, (bottom, right) padding, dilation,
#  bias, relu)
CASES = [
    pytest.param(2, 5, 1, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), True, False, id="3x3s1-C5"),
    pytest.param(2, 5, 2, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), True, True, id="3x3s1-m2"),
    pytest.param(2, 13, 1, 9, 7, 3, 3, (2, 2), (1, 1), (1, 1), (1, 1), False, True, id="3x3s2-C13"),
    pytest.param(1, 3, 2, 9, 8, 3, 3, (2, 2), (1, 1), (1, 1), (1, 1), True, False, id="3x3s2-m2"),
    pytest.param(
        2, 13, 1, 11, 10, 5, 5, (1, 1), (4, 4), (4, 4), (2, 2), True, False, id="5x5-dil2"
    ),
    pytest.param(
        2, 3, 2, 9, 8, 3, 3, (2, 1), (0, 2), (0, 2), (1, 1), False, False, id="stride2x1-pad0x2"
    ),
    # "same"-style padding: one more row and column at the bottom/right than at the top/left
    pytest.param(
        1, 6, 1, 8, 9, 2, 4, (1, 2), (0, 1), (1, 2), (1, 1), True, True, id="2x4-asym-pad"
    ),
    pytest.param(1, 3, 4, 6, 5, 3, 3, (1, 2), (1, 1), (1, 1), (1, 1), True, True, id="m4"),
    pytest.param(3, 40, 1, 5, 6, 1, 1, (1, 1), (0, 0), (0, 0), (1, 1), True, True, id="1x1-C40"),
    pytest.param(1, 40, 1, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), False, False, id="C40"),
]

LAYOUTS = ["nchw", "channels_last", "view"]

DTYPES = {  # relative tolerance (of the largest reference value) per dtype
    torch.float32: 2e-6,
    torch.float16: 2e-3,
    # the interpreter truncates fp32 -> bf16 casts (docs/decisions.md): one bf16 ulp
    torch.bfloat16: 1.6e-2,
}


def make(shape, dtype, layout, seed):
    """A random (N, C, H, W) tensor in ``layout``; "view" is a strided slice of a bigger one."""
    torch.manual_seed(seed)
    n, c, h, w = shape
    if layout == "view":  # a window of every dim but n: no tensor stride is dense
        big = torch.randn(n, c + 3, h + 2, 2 * w + 1, device=DEVICE).to(dtype)
        return big[:, 1 : c + 1, 2:, 1::2]
    t = torch.randn(shape, device=DEVICE).to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def reference(x, weight, bias, stride, before, after, dilation):
    """float64 depthwise conv of the padded input, and the padded input (for autograd)."""
    x64 = x.double().requires_grad_()
    w64 = weight.double().requires_grad_()
    b64 = bias.double().requires_grad_() if bias is not None else None
    padded = F.pad(x64, (before[1], after[1], before[0], after[0]))
    y = F.conv2d(padded, w64, b64, stride, 0, dilation, groups=x.shape[1])
    return y, x64, w64, b64


def assert_close(actual, expected, rtol, what):
    """|actual - expected| <= rtol * max|expected| (+ a tiny floor), with NaN nowhere."""
    assert not torch.isnan(actual).any(), f"{what}: NaN (an element left unwritten?)"
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(
        actual.double(), expected, atol=rtol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def check_case(
    case, layout, dtype, config=None, wgrad_config=None, split=None, ops=("fwd", "dgrad", "wgrad")
):
    n, c, m, h, w, r, s, stride, before, after, dilation, has_bias, relu = case
    k = c * m
    x = make((n, c, h, w), dtype, layout, seed=0)
    weight = make((k, 1, r, s), dtype, "nchw", seed=1)
    bias = make((1, k, 1, 1), dtype, "nchw", seed=2).view(k) if has_bias else None
    y_ref, x64, w64, b64 = reference(x, weight, bias, stride, before, after, dilation)
    y_ref_out = torch.where(y_ref < 0, 0.0, y_ref) if relu else y_ref
    p, q = y_ref.shape[2:]
    rtol = DTYPES[dtype]

    if "fwd" in ops:
        epilogue = RELU if relu else IDENTITY
        y = dw.depthwise_fwd(x, weight, bias, stride, before, dilation, (p, q), epilogue, config)
        assert y.shape == (n, k, p, q) and y.dtype == dtype
        assert y.is_contiguous(memory_format=memory_format_of(x))
        assert_close(y, y_ref_out.detach(), rtol, "y")

    # The caller masks grad_y with the fused ReLU's output (kernels.epilogue.activation_bwd).
    grad_y = make((n, k, p, q), dtype, layout, seed=3)
    if relu:
        grad_y = torch.where(y_ref.detach() <= 0, 0.0, grad_y.double()).to(dtype)
        grad_y = grad_y.contiguous(memory_format=memory_format_of(x))
    y_ref.backward(grad_y.double())

    if "dgrad" in ops:
        grad_x = dw.depthwise_bwd_input(grad_y, weight, x.shape, stride, before, dilation, config)
        assert grad_x.shape == x.shape and grad_x.dtype == dtype
        assert grad_x.is_contiguous(memory_format=memory_format_of(grad_y))
        assert_close(grad_x, x64.grad, rtol, "grad_x")

    if "wgrad" in ops:
        grad_w, grad_b = dw.depthwise_bwd_weight(
            grad_y, x, weight.shape, stride, before, dilation, has_bias, wgrad_config, split
        )
        assert grad_w.shape == weight.shape and grad_w.dtype == dtype
        channels_last = torch.empty_like(weight, memory_format=torch.channels_last)
        assert grad_w.stride() == channels_last.stride()
        assert_close(grad_w, w64.grad, rtol, "grad_w")
        if has_bias:
            assert grad_b.shape == (k,) and grad_b.dtype == dtype
            assert_close(grad_b, b64.grad, rtol, "grad_b")
        else:
            assert grad_b is None


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [c.values for c in CASES], ids=[c.id for c in CASES])
def test_depthwise_matches_torch_fp32(case, layout):
    check_case(case, layout, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c.values for c in CASES[1:6:2]], ids=[c.id for c in CASES[1:6:2]])
def test_depthwise_matches_torch_half(case, layout, dtype):
    check_case(case, layout, dtype)


@pytest.mark.parametrize("has_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("relu", [False, True], ids=["no-relu", "relu"])
def test_bias_and_relu_combinations(has_bias, relu):
    case = (2, 8, 1, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), has_bias, relu)
    check_case(case, "channels_last", torch.float32)


@pytest.mark.parametrize("split", [1, 2, 3, 9])
def test_weight_gradient_split_slices(split):
    """wgrad's parts: P = 7 output rows in 1 slice, 4 + 3, 3 + 3 + 1 and 7 slices of one
    row (9 asked for); Q = 18 columns in blocks of 16 (a full and a partial one)."""
    case = (2, 5, 2, 7, 18, 3, 3, (1, 1), (1, 1), (1, 1), (1, 1), True, False)
    check_case(case, "channels_last", torch.float32, split=split)


def test_weight_gradient_is_deterministic():
    x = make((2, 16, 9, 9), torch.float32, "channels_last", seed=0)
    grad_y = make((2, 16, 9, 9), torch.float32, "channels_last", seed=1)
    args = ((16, 1, 3, 3), (1, 1), (1, 1), (1, 1), True)
    first = dw.depthwise_bwd_weight(grad_y, x, *args, split=4)
    second = dw.depthwise_bwd_weight(grad_y, x, *args, split=4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_relu_keeps_nan_like_torch():
    """relu(NaN) = NaN (tl.where(acc < 0, 0, acc)); -inf becomes 0."""
    x = make((1, 8, 4, 4), torch.float32, "channels_last", seed=0)
    x[0, 2, 1, 1] = float("nan")
    x[0, 5, 2, 2] = float("-inf")
    weight = make((8, 1, 1, 1), torch.float32, "nchw", seed=1).abs()
    y = dw.depthwise_fwd(x, weight, None, (1, 1), (0, 0), (1, 1), (4, 4), RELU)
    expected = F.relu(F.conv2d(x, weight, groups=8))
    torch.testing.assert_close(y, expected, equal_nan=True)
    assert torch.isnan(y[0, 2, 1, 1]) and y[0, 5, 2, 2] == 0


def test_int64_index_path(monkeypatch):
    """INDEX_64 (forced) computes the same results as the int32 path."""
    monkeypatch.setattr(dw, "needs_int64", lambda *args: True)
    case = (2, 5, 2, 7, 6, 3, 3, (2, 1), (1, 1), (1, 1), (1, 1), True, True)
    check_case(case, "channels_last", torch.float32)


def test_empty_batch():
    x = torch.empty(0, 4, 5, 5, device=DEVICE)
    weight = torch.randn(8, 1, 3, 3, device=DEVICE)
    grad_y = torch.empty(0, 8, 5, 5, device=DEVICE)
    assert dw.depthwise_fwd(x, weight, None, (1, 1), (1, 1), (1, 1), (5, 5)).shape == (
        0,
        8,
        5,
        5,
    )
    assert dw.depthwise_bwd_input(grad_y, weight, x.shape, (1, 1), (1, 1), (1, 1)).numel() == 0
    grad_w, grad_b = dw.depthwise_bwd_weight(grad_y, x, weight.shape, (1, 1), (1, 1), (1, 1), True)
    assert torch.equal(grad_w, torch.zeros_like(weight))
    assert torch.equal(grad_b, torch.zeros(8, device=DEVICE))


def test_is_depthwise():
    assert dw.is_depthwise(32, (32, 1, 3, 3), 32)
    assert dw.is_depthwise(32, (64, 1, 3, 3), 32)  # channel multiplier 2
    assert not dw.is_depthwise(32, (48, 1, 3, 3), 32)  # K not a multiple of C
    assert not dw.is_depthwise(32, (32, 2, 3, 3), 16)  # grouped, 2 channels per group
    assert not dw.is_depthwise(32, (32, 32, 3, 3), 1)
    assert not dw.is_depthwise(1, (8, 1, 3, 3), 1)  # one input channel: an ordinary conv
    assert not dw.is_depthwise(4, (4 * (dw.MAX_MULTIPLIER + 1), 1, 3, 3), 4)


# --------------------------------------------------------------------------- every config


def config_cases():
    cases = []
    for kind, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        for op in ("direct", "wgrad"):
            for config in dw.depthwise_configs(op, kind, interpreter=False):
                a, b = config.kwargs.values()
                tag = f"{op}-{kind}-{a}x{b}-w{config.num_warps}"
                cases.append(pytest.param(op, dtype, config, id=tag))
    return cases


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=["s1", "s2"])
@pytest.mark.parametrize("op, dtype, config", config_cases())
def test_every_config_matches_torch(op, dtype, config, stride):
    """Each GPU config on a shape with a full and a partial tile on every axis: channels
    1.5 x BLOCK_C; 200 output pixels (2 x 10 x 10: 128 + 72, 64 * 3 + 8, 32 * 6 + 8); the
    dgrad's 200 (stride 1) or 800 (stride 2) input pixels; wgrad's 10 output rows in two
    slices of 5, each step BLOCK_P / 16 rows of a 16-column block (10 columns used)."""
    block_c = config.kwargs["BLOCK_C"]
    c = block_c + block_c // 2
    h = 10 * stride[0]  # 10 x 10 output pixels
    after = (1, 1) if stride == (1, 1) else (0, 0)
    case = (2, c, 1, h, h, 3, 3, stride, (1, 1), after, (1, 1), True, op == "direct")
    if op == "direct":
        check_case(case, "channels_last", dtype, config=config, ops=("fwd", "dgrad"))
    else:
        check_case(case, "channels_last", dtype, wgrad_config=config, split=2, ops=("wgrad",))


def test_configs_use_at_most_four_warps():
    from fastconv.kernels.launch import MAX_NUM_WARPS

    for op in ("direct", "wgrad"):
        for kind in ("fp16", "fp32"):
            for config in dw.depthwise_configs(op, kind, interpreter=False):
                assert config.num_warps <= MAX_NUM_WARPS


@pytest.mark.parametrize(
    "n, p, q, split, expected",
    [
        (2, 7, 18, 3, (16, 2, 3, 3)),  # 3 + 3 + 1 rows, 16 + 2 columns
        (2, 7, 5, 9, (8, 1, 1, 7)),  # no more slices than rows
        (1, 4, 1, 1, (1, 1, 4, 1)),
    ],
)
def test_weight_gradient_partition(n, p, q, split, expected):
    assert dw.depthwise_partition(n, p, q, 8, 9, split) == expected
    q_block, q_blocks, rows, slices = dw.depthwise_partition(32, 56, 56, 144, 9)
    assert (q_block, q_blocks) == (16, 4) and rows * slices >= 56 > rows * (slices - 1)
