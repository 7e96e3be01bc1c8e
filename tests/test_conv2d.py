"""Fused conv2d + bias + ReLU: Triton kernels against torch in float64, forward and backward.

Runs on CUDA when present, else in Triton's interpreter on the CPU (see conftest). fp32 and
fp16 run everywhere (the interpreter multiplies fp16 tiles exactly and accumulates in fp32,
as tensor cores do); bf16 and tf32 need a GPU: the interpreter's ``tl.dot`` multiplies bf16
bit patterns as integers and ignores tf32.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, requires_compiled_bf16_dot, requires_cuda_tf32

from fastconv import backend
from fastconv.functional import conv2d, conv2d_bias_relu
from fastconv.kernels import conv2d as conv2d_kernels
from fastconv.kernels import conv2d_wgrad, launch
from fastconv.kernels.epilogue import activation_bwd
from fastconv.kernels.taps import tap_rows

# (N, C, H, W, K, R, S, stride, padding, dilation, layout)
SHAPES = [
    pytest.param(2, 3, 8, 8, 5, 3, 3, 1, 1, 1, "nchw", id="odd-channels-3x3"),
    pytest.param(2, 4, 6, 5, 6, 1, 1, 1, 0, 1, "nchw", id="1x1"),
    pytest.param(1, 3, 9, 9, 4, 5, 5, 1, 2, 1, "nchw", id="5x5-batch1"),
    pytest.param(1, 3, 10, 10, 4, 7, 7, 2, 3, 1, "nchw", id="7x7-stride2"),
    pytest.param(1, 2, 10, 11, 3, 3, 3, 3, 1, 1, "nchw", id="stride3-H!=W"),
    pytest.param(2, 4, 9, 9, 3, 3, 3, 1, 2, 2, "nchw", id="dilation2"),
    pytest.param(1, 3, 11, 9, 4, 3, 3, 2, 1, 2, "nchw", id="stride2-dilation2"),
    pytest.param(2, 5, 9, 8, 4, 3, 3, 2, 0, 1, "nchw", id="padding0-stride2"),
    pytest.param(2, 4, 7, 6, 4, 3, 3, 1, "same", 1, "nchw", id="same-3x3"),
    pytest.param(1, 3, 6, 7, 4, 2, 4, 1, "same", 1, "nchw", id="same-even-kernel"),
    pytest.param(2, 3, 8, 9, 5, 3, 1, (1, 2), (1, 0), (2, 1), "nchw", id="non-square"),
    pytest.param(2, 3, 9, 7, 4, 2, 3, (2, 1), (0, 2), (1, 2), "nchw", id="stride2x1-dilation1x2"),
    pytest.param(2, 4, 7, 7, 6, 3, 3, 1, 1, 1, "channels_last", id="channels-last"),
    pytest.param(2, 3, 7, 6, 4, 3, 3, 1, 1, 1, "channel-slice", id="non-contiguous-slice"),
    pytest.param(1, 4, 6, 8, 3, 3, 3, 2, 1, 1, "transposed", id="non-contiguous-transposed"),
    # C and K above the interpreter's 16-wide tiles: several channel chunks and channel tiles
    pytest.param(1, 20, 5, 6, 18, 3, 3, 1, 1, 1, "nchw", id="many-channels"),
    pytest.param(2, 17, 5, 5, 33, 3, 3, 2, 1, 1, "channels_last", id="many-channels-cl-stride2"),
]

# (dtype, allow_tf32, atol, rtol); atol is scaled by sqrt(reduction length). fp16: products
# are exact and accumulate in fp32 (rounding error ~ atol), and the result is rounded once on
# store, by at most u = 2**-11 of the value: rtol 1e-3 is 2u. An fp16 accumulator would not
# pass. bf16 and tf32 run on a GPU only; their tolerances are the older, looser ones.
DTYPES = [
    pytest.param(torch.float32, False, 2e-5, 1e-4, id="fp32"),
    pytest.param(torch.float32, True, 2e-3, 1e-2, id="tf32", marks=requires_cuda_tf32),
    pytest.param(torch.float16, False, 2e-5, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, False, 1.6e-2, 5e-2, id="bf16", marks=requires_compiled_bf16_dot),
]

OPS = [
    pytest.param(conv2d_bias_relu, True, id="conv2d_bias_relu"),
    pytest.param(conv2d, False, id="conv2d"),
]


def make_input(n, c, h, w, layout, dtype):
    """A leaf (N, C, H, W) tensor in the given layout; views keep their strides."""
    if layout == "channel-slice":
        x = torch.randn(n, 2 * c, h, w, device=DEVICE)[:, ::2]
    elif layout == "transposed":
        x = torch.randn(n, c, w, h, device=DEVICE).transpose(2, 3)
    else:
        x = torch.randn(n, c, h, w, device=DEVICE)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    return x.to(dtype).detach().requires_grad_()


def assert_close(actual, expected, reduction, atol, rtol, what):
    torch.testing.assert_close(
        actual.double(),
        expected,
        atol=atol * math.sqrt(reduction),
        rtol=rtol,
        msg=lambda m: f"{what}: {m}",
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(("dtype", "allow_tf32", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize(("op", "relu"), OPS)
@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dil", "layout"), SHAPES
)
def test_matches_torch_forward_and_backward(
    triton_backend, monkeypatch, op, relu, dtype, allow_tf32, atol, rtol,
    n, c, h, w, k, r, s, stride, padding, dil, layout,
):  # fmt: skip
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    torch.manual_seed(0)
    x = make_input(n, c, h, w, layout, dtype)
    weight = torch.randn(k, c, r, s, device=DEVICE, dtype=dtype)
    if layout == "channels_last":  # as after model.to(memory_format=torch.channels_last)
        weight = weight.to(memory_format=torch.channels_last)
    weight.requires_grad_()
    bias = torch.randn(k, device=DEVICE, dtype=dtype, requires_grad=True)

    y = op(x, weight, bias, stride, padding, dil)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)

    x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight, bias))
    z64 = F.conv2d(x64, w64, b64, stride, padding, dil)
    y64 = F.relu(z64) if relu else z64
    grad_z64 = grad_y.cpu().double()
    if relu:
        assert (y64 == 0).any() and (y64 > 0).any(), "the ReLU mask path is not exercised"
        # A pre-activation within rounding of 0 may fall on either side of the kink (tf32 and
        # bf16 do move some): the gradient follows the kernel's own mask, whose output is
        # checked against y64 below, so a backward masking by anything else still fails.
        grad_z64 = grad_z64 * (y.detach().cpu() > 0)
    z64.backward(grad_z64)

    assert y.dtype == dtype and y.shape == y64.shape
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert x.grad.is_contiguous(memory_format=torch.channels_last)
    p, q = y.shape[2:]
    assert_close(y.cpu(), y64, c * r * s, atol, rtol, "output")
    assert_close(x.grad.cpu(), x64.grad, k * r * s, atol, rtol, "grad input")
    assert_close(weight.grad.cpu(), w64.grad, n * p * q, atol, rtol, "grad weight")
    assert_close(bias.grad.cpu(), b64.grad, n * p * q, atol, rtol, "grad bias")


@pytest.mark.parametrize("needs", ["input", "weight", "bias"])
def test_gradient_subsets_without_bias_or_with_frozen_params(triton_backend, needs):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6, device=DEVICE, requires_grad=needs == "input")
    weight = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=needs == "weight")
    bias = torch.randn(4, device=DEVICE, requires_grad=True) if needs == "bias" else None
    y = conv2d_bias_relu(x, weight, bias, padding=1)
    assert y.requires_grad
    y.sum().backward()  # grad_y is an expanded (stride 0) tensor here

    x64, w64 = x.detach().cpu().double(), weight.detach().cpu().double()
    x64.requires_grad_(needs == "input")
    w64.requires_grad_(needs == "weight")
    b64 = None if bias is None else bias.detach().cpu().double().requires_grad_()
    F.relu(F.conv2d(x64, w64, b64, padding=1)).sum().backward()
    for ours, ref in ((x, x64), (weight, w64), (bias, b64)):
        if ref is not None and ref.requires_grad:
            torch.testing.assert_close(ours.grad.cpu().double(), ref.grad, atol=1e-4, rtol=1e-4)
        elif ours is not None:
            assert ours.grad is None


def test_unbatched_input(triton_backend):
    torch.manual_seed(2)
    x = torch.randn(3, 6, 5, device=DEVICE)
    weight = torch.randn(4, 3, 3, 3, device=DEVICE)
    bias = torch.randn(4, device=DEVICE)
    y = conv2d_bias_relu(x, weight, bias, padding=1)
    expected = F.relu(
        F.conv2d(x.cpu().double(), weight.cpu().double(), bias.cpu().double(), padding=1)
    )
    assert y.shape == (4, 6, 5)
    torch.testing.assert_close(y.cpu().double(), expected, atol=1e-4, rtol=1e-4)


def test_empty_batch(triton_backend):
    x = torch.randn(0, 3, 6, 6, device=DEVICE, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE, requires_grad=True)
    y = conv2d_bias_relu(x, weight, bias, padding=1)
    assert y.shape == (0, 4, 6, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize(
    ("dtype", "allow_tf32", "expected"),
    [
        (torch.float32, False, "ieee"),
        (torch.float32, True, "tf32"),
        (torch.float16, False, "tf32"),  # half dots ignore the precision: tensor cores
        (torch.bfloat16, False, "tf32"),
    ],
)
def test_fp32_dot_precision_follows_cudnn_allow_tf32(monkeypatch, dtype, allow_tf32, expected):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    assert launch.input_precision(dtype) == expected


# The backward kernels called directly (their index paths do not depend on the op around
# them), in the precisions the interpreter computes like a GPU: fp32 (IEEE) and fp16.
LAUNCHER_DTYPES = [
    pytest.param(torch.float32, 2e-5, 1e-4, id="fp32"),
    pytest.param(torch.float16, 2e-5, 1e-3, id="fp16"),
]


def conv_operands(n, c, h, w, k, r, s, stride, padding, dilation, dtype, relu):
    """Random (x, weight, grad_y, relu_output or None) and the float64 pre-activation graph.

    Returns ``(x, weight, grad_y, relu_output, x64, w64, conv64, g64)`` where ``conv64`` is
    the float64 conv of ``x64``/``w64`` (leaves requiring grad) and ``g64`` the gradient it
    receives: ``grad_y``, masked by ``relu_output > 0`` when ``relu``.
    """
    torch.manual_seed(4)
    x = torch.randn(n, c, h, w, device=DEVICE).to(dtype)
    weight = torch.randn(k, c, r, s, device=DEVICE).to(dtype)
    bias = torch.randn(k, device=DEVICE).to(dtype)
    x64, w64 = (t.cpu().double().requires_grad_() for t in (x, weight))
    conv64 = F.conv2d(x64, w64, None, stride, padding, dilation)
    grad_y = torch.randn(conv64.shape, device=DEVICE).to(dtype)
    g64 = grad_y.cpu().double()
    relu_output = None
    if relu:
        relu_output = F.relu(conv64.detach() + bias.cpu().double()[:, None, None]).to(dtype)
        assert (relu_output == 0).any() and (relu_output > 0).any()
        g64 = g64 * (relu_output.cpu() > 0)
        relu_output = relu_output.to(DEVICE)
    return x, weight, grad_y, relu_output, x64, w64, conv64, g64


def dgrad_paths(h, w, r, s, stride, padding, dilation) -> set[str]:
    """The paths of the dgrad kernel that a shape takes (its stride-phase logic, in Python).

    Each dgrad program works on one stride phase (h mod stride_h, w mod stride_w); within a
    phase a tap (r, s) applies to every pixel or to none ("taps skipped").
    """
    (sh, sw), (pad_h, pad_w), (dh, dw) = stride, padding, dilation
    p = (h + 2 * pad_h - dh * (r - 1) - 1) // sh + 1
    q = (w + 2 * pad_w - dw * (s - 1) - 1) // sw + 1
    paths = {"ragged phases"} if h % sh or w % sw else set()
    for phase_h in range(sh):
        for phase_w in range(sw):
            pixels = [(i, j) for i in range(phase_h, h, sh) for j in range(phase_w, w, sw)]
            taps = [
                (tr, ts)
                for tr in range(r)
                for ts in range(s)
                if (phase_h + pad_h - tr * dh) % sh == 0 and (phase_w + pad_w - ts * dw) % sw == 0
            ]
            if not pixels:
                paths.add("empty phase")  # the whole phase lies past the input's edge
            elif not taps:
                paths.add("phase without taps")  # grad_x is 0 there, and must be written
            else:
                paths.add("taps hit")
                if len(taps) < r * s:
                    paths.add("taps skipped")
                if any(
                    not any(
                        0 <= (i + pad_h - tr * dh) // sh < p
                        and 0 <= (j + pad_w - ts * dw) // sw < q
                        for tr, ts in taps
                    )
                    for i, j in pixels
                ):
                    paths.add("pixels out of reach")  # no output window covers them
    return paths


DGRAD_PATHS = {
    "taps hit",
    "taps skipped",
    "phase without taps",
    "empty phase",
    "ragged phases",
    "pixels out of reach",
}

# (N, C, H, W, K, R, S, stride, padding, dilation) for dgrad's stride phases
DGRAD_SHAPES = [
    pytest.param(2, 3, 7, 9, 4, 3, 3, (1, 2), (1, 1), (1, 1), id="stride1x2"),
    pytest.param(2, 3, 9, 7, 4, 3, 3, (2, 1), (1, 1), (1, 1), id="stride2x1"),
    pytest.param(1, 3, 11, 10, 4, 3, 3, (2, 3), (2, 1), (2, 2), id="stride2x3-dilation2"),
    # K = 18: two output-channel chunks per tap, across skipped taps
    pytest.param(1, 2, 10, 11, 18, 2, 3, (3, 2), (0, 2), (1, 3), id="stride3x2-dilation1x3-k18"),
    # ResNet's 1x1 stride-2 shortcut: three of four phases get no tap (grad_x = 0)
    pytest.param(2, 4, 7, 8, 3, 1, 1, (2, 2), (0, 0), (1, 1), id="1x1-stride2"),
    # stride above the kernel, W = 3 < stride: a phase column past the input's edge
    pytest.param(1, 2, 5, 3, 3, 3, 2, (1, 4), (1, 0), (1, 1), id="stride1x4-W3"),
]


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_dgrad_tap_table_is_the_progression_of_hitting_taps(stride, dilation):
    """The kernel walks, per phase, taps r0 + t*step (step = stride / gcd(stride, dilation))
    with output offset h0 + t*tap_step: exactly the taps that hit the phase, with the output
    pixel p = (h + pad - r*dilation) / stride of each."""
    step = stride // math.gcd(stride, dilation)
    tap_step = -(step * dilation) // stride
    for pad, taps in [(p, t) for p in range(4) for t in range(1, 8)]:
        rows = tap_rows(stride, pad, dilation, taps)
        assert [row[3] for row in rows] == list(range(stride))
        for first, count, offset, phase in rows:
            hits = [r for r in range(taps) if (phase + pad - r * dilation) % stride == 0]
            assert [first + t * step for t in range(count)] == hits
            for t, r in enumerate(hits):
                for i in range(3):  # input pixel h = phase + i*stride
                    h = phase + i * stride
                    assert (h + pad - r * dilation) // stride == i + offset + t * tap_step


def test_dgrad_shapes_take_every_stride_phase_path():
    taken = set()
    for param in DGRAD_SHAPES:
        _, _, h, w, _, r, s, stride, padding, dilation = param.values
        taken |= dgrad_paths(h, w, r, s, stride, padding, dilation)
    assert taken == DGRAD_PATHS


@pytest.mark.parametrize(("dtype", "atol", "rtol"), LAUNCHER_DTYPES)
@pytest.mark.parametrize("relu", [True, False], ids=["relu-mask", "no-mask"])
@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dil"), DGRAD_SHAPES
)
def test_dgrad_stride_phases_match_torch(
    dtype, atol, rtol, relu, n, c, h, w, k, r, s, stride, padding, dil
):  # fmt: skip
    x, weight, grad_y, relu_output, x64, _, conv64, g64 = conv_operands(
        n, c, h, w, k, r, s, stride, padding, dil, dtype, relu
    )
    if relu:
        grad_y = activation_bwd(grad_y, relu_output, "relu", 0.0)
    grad_x = conv2d_kernels.conv2d_bwd_input(grad_y, weight, x.shape, stride, padding, dil)
    (expected,) = torch.autograd.grad(conv64, x64, g64)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape
    assert_close(grad_x.cpu(), expected, k * r * s, atol, rtol, "grad input")


# (N, C, H, W, K, R, S, stride, padding, dilation): N*P*Q = 2*5*8 = 80 reduction rows.
WGRAD_SHAPE = (2, 3, 9, 8, 5, 3, 3, (2, 1), (1, 2), (1, 2))
WGRAD_ROWS = 80


@pytest.mark.parametrize(("dtype", "atol", "rtol"), LAUNCHER_DTYPES)
@pytest.mark.parametrize(
    ("relu", "bias_grad"), [(True, True), (False, False)], ids=["relu-bias", "plain"]
)
@pytest.mark.parametrize(
    "split",
    [
        pytest.param(1, id="no-split"),
        pytest.param(2, id="split2-even"),  # 40 + 40 rows
        pytest.param(3, id="split3-ragged"),  # 27 + 27 + 26 rows
        pytest.param(12, id="split12-short"),  # 11 * 7 + 3 rows: less than a BLOCK_K chunk
    ],
)
def test_wgrad_split_k_matches_torch(split, relu, bias_grad, dtype, atol, rtol):
    n, c, h, w, k, r, s, stride, padding, dil = WGRAD_SHAPE
    x, _, grad_y, relu_output, _, w64, conv64, g64 = conv_operands(*WGRAD_SHAPE, dtype, relu)
    if relu:
        grad_y = activation_bwd(grad_y, relu_output, "relu", 0.0)
    p, q = grad_y.shape[2:]
    assert n * p * q == WGRAD_ROWS
    # the requested split is the one that runs
    assert conv2d_kernels.wgrad_partition(WGRAD_ROWS, k * c * r * s, split)[1] == split
    grad_w, grad_b = conv2d_kernels.conv2d_bwd_weight(
        grad_y, x, (k, c, r, s), stride, padding, dil, bias_grad, split=split
    )
    (expected_w,) = torch.autograd.grad(conv64, w64, g64)
    assert grad_w.dtype == dtype and grad_w.shape == (k, c, r, s)
    assert_close(grad_w.cpu(), expected_w, WGRAD_ROWS, atol, rtol, "grad weight")
    if bias_grad:
        assert_close(grad_b.cpu(), g64.sum((0, 2, 3)), WGRAD_ROWS, atol, rtol, "grad bias")
    else:
        assert grad_b is None


@pytest.mark.parametrize(
    ("rows", "split", "expected"),
    [
        (80, 1, (80, 1)),
        (80, 3, (27, 3)),
        (10, 4, (3, 4)),  # 3 + 3 + 3 + 1
        (10, 6, (2, 5)),  # 2 rows each: 5 programs, none empty
        (80, 500, (1, 80)),  # at most one program per row
    ],
)
def test_wgrad_partition_honours_an_explicit_split(rows, split, expected):
    assert conv2d_kernels.wgrad_partition(rows, 100, split) == expected


def test_wgrad_partition_rejects_a_split_below_one():
    with pytest.raises(ValueError, match="split must be at least 1, got split=0"):
        conv2d_kernels.wgrad_partition(80, 100, 0)


@pytest.mark.parametrize("rows", [1, 63, 64, 1000, 10**5, 10**7])
@pytest.mark.parametrize("weight_numel", [1, 864, 36864, 2**20, 2**27])
def test_wgrad_split_policy(rows, weight_numel):
    """The automatic split: >= 1, about WGRAD_ROWS_PER_SPLIT rows per program or more, capped
    programs and workspace; the default partition runs that many programs or fewer."""
    split = conv2d_kernels.wgrad_split(rows, weight_numel)
    assert split >= 1
    if split > 1:
        assert (split - 1) * conv2d_wgrad.WGRAD_ROWS_PER_SPLIT < rows
        assert split * weight_numel <= conv2d_wgrad.WGRAD_MAX_WORKSPACE
        nominal_tiles = conv2d_wgrad.WGRAD_TARGET_PROGRAMS * conv2d_wgrad.WGRAD_NOMINAL_TILE
        assert split * weight_numel <= nominal_tiles
    rows_per_split, programs = conv2d_kernels.wgrad_partition(rows, weight_numel)
    assert programs <= split and (programs - 1) * rows_per_split < rows <= programs * rows_per_split


def test_no_aten_convolution_runs(triton_backend, record_aten_ops):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 7, device=DEVICE, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE, requires_grad=True)
    with record_aten_ops() as rec:
        y = conv2d_bias_relu(x, weight, bias, padding=1)
        y.backward(torch.ones_like(y))
    assert rec.ops, "the recorder saw no ops at all"
    assert rec.forbidden() == []
    expected = F.relu(F.conv2d(x.detach(), weight.detach(), bias.detach(), padding=1))
    torch.testing.assert_close(y.detach(), expected, atol=1e-4, rtol=1e-4)
    assert x.grad is not None and weight.grad is not None and bias.grad is not None


def count_saved_tensors(fn) -> int:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return len(saved)


def test_no_grad_saves_nothing(triton_backend):
    x = torch.randn(1, 3, 6, 6, device=DEVICE, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE, requires_grad=True)

    def run():
        with torch.no_grad():
            y = conv2d_bias_relu(x, weight, bias)
        assert not y.requires_grad and y.grad_fn is None

    assert count_saved_tensors(run) == 0
    # With grad: input, weight and the output (for the ReLU mask); conv2d has no mask.
    assert count_saved_tensors(lambda: conv2d_bias_relu(x, weight, bias)) == 3
    assert count_saved_tensors(lambda: conv2d(x, weight, bias)) == 2


@pytest.mark.parametrize(
    ("dtype", "atol", "rtol"),
    [
        pytest.param(torch.float16, 2e-5, 1e-3, id="fp16"),
        pytest.param(torch.bfloat16, 1.6e-2, 5e-2, id="bf16", marks=requires_compiled_bf16_dot),
    ],
)
def test_autocast_returns_autocast_dtype(triton_backend, dtype, atol, rtol):
    x = torch.randn(2, 3, 8, 8, device=DEVICE, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE.type, dtype=dtype):
        y = conv2d_bias_relu(x, weight, bias, padding=1)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32
    # the kernels saw the autocast-rounded operands: compare with those in float64
    x64, w64, b64 = (t.detach().to(dtype).cpu().double() for t in (x, weight, bias))
    expected = F.relu(F.conv2d(x64, w64, b64, padding=1))
    assert_close(y.cpu(), expected, 3 * 3 * 3, atol, rtol, "output")


def test_forced_triton_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)
    x = torch.randn(1, 3, 6, 6)
    weight = torch.randn(4, 3, 3, 3)
    with (
        backend.use_backend("triton"),
        pytest.raises(backend.BackendUnavailableError, match="Triton's interpreter is off"),
    ):
        conv2d_bias_relu(x, weight)


def randn(*shape, **kwargs):
    return torch.randn(*shape, device=kwargs.pop("device", DEVICE), **kwargs)


def bad_call(**changes):
    """conv2d_bias_relu arguments: a valid call with ``changes`` applied."""
    return {"input": randn(1, 3, 6, 6), "weight": randn(4, 3, 3, 3), "bias": randn(4), **changes}


BAD_INPUTS = [
    pytest.param(bad_call(input=randn(6, 6)), ValueError, "input must be 4-D", id="input-ndim"),
    pytest.param(
        bad_call(weight=randn(4, 3, 3)), ValueError, "weight must be 4-D", id="weight-ndim"
    ),
    pytest.param(bad_call(bias=randn(4, 1)), ValueError, "bias must be 1-D", id="bias-ndim"),
    pytest.param(
        bad_call(weight=randn(4, 2, 3, 3)),
        ValueError,
        r"expects 2 input channels but input of shape \(1, 3, 6, 6\)",
        id="channels",
    ),
    pytest.param(
        bad_call(bias=randn(5)),
        ValueError,
        r"bias of shape \(5,\) does not match the 4 output channels",
        id="bias-size",
    ),
    pytest.param(
        bad_call(weight=randn(4, 3, 3, 3, dtype=torch.float64)),
        TypeError,
        "weight has dtype torch.float64 but input has dtype torch.float32",
        id="dtype-mix",
    ),
    pytest.param(
        bad_call(bias=randn(4, device="meta")),
        ValueError,
        "bias is on meta but input is on",
        id="device-mix",
    ),
    pytest.param(
        bad_call(input=torch.randint(0, 5, (1, 3, 6, 6), device=DEVICE)),
        TypeError,
        "input has dtype torch.int64; the Triton kernels support",
        id="int-dtype",
    ),
    pytest.param(
        bad_call(groups=2),
        ValueError,
        r"groups=2 must divide the 3 input channels of input of shape \(1, 3, 6, 6\)",
        id="groups-not-dividing",
    ),
    pytest.param(
        bad_call(groups=0), ValueError, "groups must be a positive int, got groups=0", id="groups-0"
    ),
    pytest.param(
        bad_call(weight=randn(6, 3, 3, 3), bias=randn(6), groups=3),
        ValueError,
        r"weight of shape \(6, 3, 3, 3\) with groups=3 expects 9 input channels",
        id="groups-weight",
    ),
    pytest.param(
        bad_call(padding=-1),
        ValueError,
        r"padding must be non-negative, got padding=\(-1, -1\)",
        id="negative-padding",
    ),
    pytest.param(
        bad_call(padding="full"),
        ValueError,
        "padding must be an int, a pair, 'same' or 'valid', got 'full'",
        id="padding-string",
    ),
    pytest.param(
        bad_call(padding=(1, 2, 3)),
        TypeError,
        "padding must be an int or a pair of ints",
        id="padding-triple",
    ),
    pytest.param(
        bad_call(padding="same", stride=2),
        ValueError,
        r"padding='same' needs stride 1, got stride=\(2, 2\)",
        id="same-stride2",
    ),
    pytest.param(
        bad_call(stride=0),
        ValueError,
        r"stride must be positive, got stride=\(0, 0\)",
        id="stride-zero",
    ),
    pytest.param(
        bad_call(dilation=(1, -1)),
        ValueError,
        r"dilation must be positive, got dilation=\(1, -1\)",
        id="dilation-negative",
    ),
    pytest.param(
        bad_call(weight=randn(4, 3, 7, 7)),
        ValueError,
        r"spans \(7, 7\), larger than the padded input \(6, 6\)",
        id="kernel-too-large",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(triton_backend, kwargs, error, match):
    with pytest.raises(error, match=match):
        conv2d_bias_relu(**kwargs)
