"""Pooling kernels (max, average, adaptive average) against torch, forward and backward.

Every parity test forces the Triton backend and compares the output and the input gradient
with torch's op run in float64 on the CPU. Without a GPU the kernels run in Triton's
interpreter, so shapes stay tiny.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fastconv import functional as fcf
from fastconv.backend import use_backend
from fastconv.kernels import pool2d as pool_kernels

# (dtype, atol, rtol): max pooling copies values, so only the averages and the sums of
# overlapping gradients round; they accumulate in fp32 and are rounded once on store, by at
# most u = 2**-11 (fp16) or 2**-8 (bf16) of the value, 2u where Triton's interpreter
# truncates fp32 -> bf16 casts instead of rounding. The rtols leave 2x room (of u or 2u).
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-5, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 1e-5, 1.6e-2, id="bf16"),
]

# (input shape, keyword arguments, layout); layouts: "nchw", "channels_last" (output must
# keep it), "strided" (a non-contiguous view, every other column of a wider tensor) and
# "strided_channels_last" (every other channel of a wider channels_last tensor: channel
# stride 2, so the kernels take the channels_last path with a non-unit channel stride).
#
# The kernels write (rows x columns) tiles whose columns walk channels (channels_last) or W
# (NCHW), at most 128 wide, with 4 (fp32 channels_last) to 1,024 rows (see ``_tiling``): the
# last five cases of each list give a partial last column tile (130 channels, W = 133), C = 1
# (dense, so both layouts: it takes the NCHW path) and row counts that no row tile divides.
# C = 24 gives VEC = 8 (16-byte fp16 vectors), which the interpreter checks is a true claim.
MAX_CASES = [
    # k2 s2: the classic non-overlapping downsample
    ((2, 3, 8, 8), {"kernel_size": 2}, "nchw"),
    # k3 s2 p1: overlapping windows with padding (ResNet stem)
    ((2, 4, 9, 9), {"kernel_size": 3, "stride": 2, "padding": 1}, "nchw"),
    # k3 s1, batch 1: each pixel in up to 9 windows
    ((1, 2, 7, 6), {"kernel_size": 3, "stride": 1}, "nchw"),
    # ceil_mode on odd sizes: the last window hangs over the bottom/right edge
    ((2, 3, 7, 9), {"kernel_size": 3, "stride": 2, "ceil_mode": True}, "nchw"),
    # ceil_mode with padding: a window that would start in the right padding is dropped
    ((1, 2, 6, 5), {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True}, "nchw"),
    # dilation, rectangular kernel, per-axis stride and padding, H != W
    (
        (2, 3, 10, 7),
        {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (2, 3)},
        "nchw",
    ),
    # channels_last, overlapping windows
    ((2, 5, 8, 6), {"kernel_size": 3, "stride": 2, "padding": 1}, "channels_last"),
    # non-contiguous input
    ((2, 3, 9, 8), {"kernel_size": 2, "stride": 1}, "strided"),
    # unbatched (C, H, W) input
    ((3, 7, 7), {"kernel_size": 3, "stride": 2}, "nchw"),
    *(
        (shape, {"kernel_size": 3, "stride": 2, "padding": 1}, layout)
        for shape, layout in [
            ((1, 130, 6, 5), "channels_last"),
            ((1, 24, 5, 4), "channels_last"),
            ((2, 1, 7, 6), "channels_last"),
            ((1, 2, 3, 133), "nchw"),
            ((2, 6, 5, 4), "strided_channels_last"),
        ]
    ),
]

AVG_CASES = [
    # k2 s2, non-overlapping
    ((2, 3, 8, 8), {"kernel_size": 2}, "nchw"),
    # k3 s2 p1: padding counted in the divisor (torch's default)
    ((2, 4, 9, 9), {"kernel_size": 3, "stride": 2, "padding": 1}, "nchw"),
    # same, padding not counted
    (
        (2, 4, 9, 9),
        {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
        "nchw",
    ),
    # ceil_mode on odd sizes: clipped last windows, padding not counted
    ((1, 3, 7, 9), {"kernel_size": 3, "stride": 2, "ceil_mode": True}, "nchw"),
    # ceil_mode + padding, counted: the divisor clips at the padded edge, as torch does
    ((2, 2, 6, 5), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, "nchw"),
    # divisor_override with overlapping windows
    ((1, 2, 7, 7), {"kernel_size": 3, "stride": 1, "padding": 1, "divisor_override": 5}, "nchw"),
    # rectangular kernel, per-axis stride and padding, H != W
    ((2, 3, 10, 7), {"kernel_size": (3, 2), "stride": (1, 2), "padding": (1, 1)}, "nchw"),
    # channels_last
    ((2, 5, 8, 6), {"kernel_size": 3, "stride": 2, "padding": 1}, "channels_last"),
    # non-contiguous input
    ((2, 3, 9, 8), {"kernel_size": 2, "stride": 1}, "strided"),
    # unbatched (C, H, W) input
    ((3, 7, 7), {"kernel_size": 2}, "nchw"),
    *(
        (shape, {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}, layout)
        for shape, layout in [
            ((1, 130, 6, 5), "channels_last"),
            ((1, 24, 5, 4), "channels_last"),
            ((2, 1, 7, 6), "channels_last"),
            ((1, 2, 3, 133), "nchw"),
            ((2, 6, 5, 4), "strided_channels_last"),
        ]
    ),
]

ADAPTIVE_CASES = [
    # global average pool of a classifier head
    ((2, 8, 7, 7), {"output_size": (1, 1)}, "nchw"),
    # divisible sizes, H != W
    ((2, 3, 8, 9), {"output_size": (2, 3)}, "nchw"),
    # non-divisible sizes: overlapping windows of unequal size
    ((1, 3, 7, 10), {"output_size": (3, 4)}, "nchw"),
    # output larger than the input: each pixel in several windows
    ((2, 2, 3, 5), {"output_size": (4, 7)}, "nchw"),
    # None keeps the input's size on that axis
    ((1, 2, 6, 5), {"output_size": (None, 2)}, "nchw"),
    # channels_last global pool
    ((2, 6, 5, 4), {"output_size": 1}, "channels_last"),
    # channels_last, non-divisible
    ((1, 5, 9, 7), {"output_size": (4, 3)}, "channels_last"),
    # non-contiguous input
    ((2, 3, 9, 8), {"output_size": (5, 3)}, "strided"),
    # unbatched (C, H, W) input, int output size
    ((3, 7, 6), {"output_size": 2}, "nchw"),
    *(
        (shape, {"output_size": (3, 2)}, layout)
        for shape, layout in [
            ((1, 130, 6, 5), "channels_last"),
            ((1, 24, 5, 4), "channels_last"),
            ((2, 1, 7, 6), "channels_last"),
            ((1, 2, 3, 133), "nchw"),
            ((2, 6, 5, 4), "strided_channels_last"),
        ]
    ),
]


# (op, input shape, keyword arguments, exception, regex its message must match)
BAD_ARGUMENT_CASES = [
    # wrong ndim
    (fcf.max_pool2d, (4, 4), {"kernel_size": 2}, ValueError, "must be 3-D or 4-D"),
    (fcf.adaptive_avg_pool2d, (1, 1, 2, 4, 4), {"output_size": 1}, ValueError, "3-D or 4-D"),
    # empty channel dimension
    (fcf.avg_pool2d, (1, 0, 4, 4), {"kernel_size": 2}, ValueError, "empty channel"),
    # bad kernel_size, stride, padding, dilation
    (fcf.max_pool2d, (1, 1, 4, 4), {"kernel_size": 0}, ValueError, "kernel_size must be pos"),
    (fcf.max_pool2d, (1, 1, 4, 4), {"kernel_size": 2.0}, TypeError, "kernel_size must be an"),
    (fcf.avg_pool2d, (1, 1, 4, 4), {"kernel_size": 2, "stride": -1}, ValueError, "stride"),
    (fcf.max_pool2d, (1, 1, 4, 4), {"kernel_size": 2, "padding": -1}, ValueError, "non-neg"),
    (fcf.max_pool2d, (1, 1, 4, 4), {"kernel_size": 2, "dilation": 0}, ValueError, "dilation"),
    (fcf.max_pool2d, (1, 1, 6, 6), {"kernel_size": 3, "padding": 2}, ValueError, "at most h"),
    (fcf.avg_pool2d, (1, 1, 6, 6), {"kernel_size": (2, 4), "padding": (1, 3)}, ValueError, "half"),
    # output would be empty
    (
        fcf.max_pool2d,
        (1, 1, 2, 5),
        {"kernel_size": 3},
        ValueError,
        r"empty output of size \(0, 1\)",
    ),
    (fcf.avg_pool2d, (1, 1, 1, 4), {"kernel_size": 2}, ValueError, r"shape \(1, 1, 1, 4\)"),
    # bad output_size for adaptive pooling
    (fcf.adaptive_avg_pool2d, (1, 1, 4, 4), {"output_size": (-1, 2)}, ValueError, "non-negative"),
    (fcf.adaptive_avg_pool2d, (1, 1, 4, 4), {"output_size": (1, 2, 3)}, TypeError, "pair of ints"),
    (fcf.adaptive_avg_pool2d, (1, 1, 4, 4), {"output_size": "2"}, TypeError, "output_size"),
    # bad divisor_override
    (
        fcf.avg_pool2d,
        (1, 1, 4, 4),
        {"kernel_size": 2, "divisor_override": 0},
        ValueError,
        "non-zero",
    ),
]


def _input(shape, layout, dtype, device, values=None):
    """A leaf tensor of ``shape`` (random normal unless ``values``) in ``layout``."""
    x = torch.randn(shape) if values is None else values
    if layout == "strided":
        x = torch.stack((x, torch.randn(shape)), dim=-1)
    elif layout == "strided_channels_last":
        x = torch.stack((x, torch.randn(shape)), dim=-3).flatten(-4, -3)
    if layout in ("channels_last", "strided_channels_last"):
        x = x.to(memory_format=torch.channels_last)
    # the dtype cast comes before the view: casting a view would make it dense again
    x = x.to(device=device, dtype=dtype)
    if layout == "strided":
        x = x[..., 0]
    elif layout == "strided_channels_last":
        x = x[:, ::2]
        assert x.stride(1) == 2
    if layout.startswith("strided"):
        assert not x.is_contiguous()
    return x.requires_grad_()


def _check_against_torch(op, reference, x, kwargs, atol, rtol, layout):
    """Output and input gradient of ``op(x)`` against ``reference`` in float64 on the CPU."""
    y = op(x, **kwargs)
    x_ref = x.detach().cpu().double().requires_grad_()
    y_ref = reference(x_ref, **kwargs)
    assert y.shape == y_ref.shape
    assert_close(y.cpu().double(), y_ref, atol=atol, rtol=rtol, equal_nan=True)

    grad_y = torch.randn(y_ref.shape).to(x.dtype)
    (grad_x,) = torch.autograd.grad(y, x, grad_y.to(x.device))
    (grad_x_ref,) = torch.autograd.grad(y_ref, x_ref, grad_y.double())
    assert_close(grad_x.cpu().double(), grad_x_ref, atol=atol, rtol=rtol)
    if layout in ("channels_last", "strided_channels_last"):
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grad_x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape, kwargs, layout", MAX_CASES)
def test_max_pool2d_matches_torch(triton_backend, device, shape, kwargs, layout, dtype, atol, rtol):
    x = _input(shape, layout, dtype, device)
    _check_against_torch(fcf.max_pool2d, F.max_pool2d, x, kwargs, atol, rtol, layout)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape, kwargs, layout", AVG_CASES)
def test_avg_pool2d_matches_torch(triton_backend, device, shape, kwargs, layout, dtype, atol, rtol):
    x = _input(shape, layout, dtype, device)
    _check_against_torch(fcf.avg_pool2d, F.avg_pool2d, x, kwargs, atol, rtol, layout)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape, kwargs, layout", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_torch(
    triton_backend, device, shape, kwargs, layout, dtype, atol, rtol
):
    x = _input(shape, layout, dtype, device)
    _check_against_torch(
        fcf.adaptive_avg_pool2d, F.adaptive_avg_pool2d, x, kwargs, atol, rtol, layout
    )


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool2d_ties_pick_the_element_torch_picks(triton_backend, device, layout):
    # values from {-inf, 0, 1}: most windows hold several equal maxima, some only -inf,
    # and padding (k3 p1) must never win; the gradient shows which element was picked.
    values = torch.tensor([float("-inf"), 0.0, 1.0])[torch.randint(0, 3, (2, 3, 7, 6))]
    x = _input(values.shape, layout, torch.float32, device, values)
    kwargs = {"kernel_size": 3, "stride": 1, "padding": 1}
    _check_against_torch(fcf.max_pool2d, F.max_pool2d, x, kwargs, 1e-5, 1e-5, layout)


def test_max_pool2d_nan_wins_like_torch(triton_backend, device):
    # about a third NaN: many windows hold several NaNs (torch routes the gradient to the
    # last one), some none.
    values = torch.randn(2, 2, 7, 7)
    values[torch.rand(values.shape) < 0.3] = float("nan")
    x = _input(values.shape, "nchw", torch.float32, device, values)
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    y = fcf.max_pool2d(x, **kwargs)
    assert y.isnan().any() and not y.isnan().all()
    _check_against_torch(fcf.max_pool2d, F.max_pool2d, x, kwargs, 1e-6, 1e-6, "nchw")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool2d_return_indices_match_torch(triton_backend, device, layout):
    x = _input((2, 3, 9, 8), layout, torch.float32, device)
    kwargs = {"kernel_size": (3, 2), "stride": 2, "padding": 1, "dilation": (1, 2)}
    y, indices = fcf.max_pool2d(x, **kwargs, return_indices=True)
    y_ref, indices_ref = F.max_pool2d(x.detach().cpu().double(), **kwargs, return_indices=True)
    assert indices.dtype == torch.int64
    assert_close(y.cpu().double(), y_ref)
    assert torch.equal(indices.cpu(), indices_ref)


def test_max_pool2d_saves_argmax_only_when_a_gradient_is_needed(
    triton_backend, device, monkeypatch
):
    stored = []
    launcher = pool_kernels.max_pool2d_fwd

    def spy(*args):
        y, argmax = launcher(*args)
        stored.append(argmax is not None)
        return y, argmax

    monkeypatch.setattr(pool_kernels, "max_pool2d_fwd", spy)
    x = _input((1, 2, 6, 6), "nchw", torch.float32, device)
    with torch.no_grad():
        fcf.max_pool2d(x, 2)
    fcf.max_pool2d(x.detach(), 2)
    y = fcf.max_pool2d(x, 2)
    assert stored == [False, False, True]
    assert y.grad_fn is not None


@pytest.mark.parametrize(
    "op, reference, kwargs",
    [
        (fcf.max_pool2d, F.max_pool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
        (fcf.avg_pool2d, F.avg_pool2d, {"kernel_size": 3, "stride": 1, "ceil_mode": True}),
        (fcf.adaptive_avg_pool2d, F.adaptive_avg_pool2d, {"output_size": (3, 2)}),
    ],
    ids=["max", "avg", "adaptive"],
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_int64_index_path_matches_torch(
    triton_backend, device, monkeypatch, op, reference, kwargs, layout
):
    # tensors of 2**31 elements are too big for a test: force the int64 kernels on small ones
    monkeypatch.setattr(pool_kernels, "_needs_int64", lambda *tensors: True)
    x = _input((2, 3, 7, 6), layout, torch.float32, device)
    _check_against_torch(op, reference, x, kwargs, 1e-5, 1e-5, layout)


@pytest.mark.parametrize(
    "shape, channels_last, dtype, expected",
    [
        # C = 24: 16-byte fp16 vectors although no stride is a multiple of 16
        ((2, 24, 5, 4), True, torch.float16, {"VEC": 8, "BLOCK_R": 32, "BLOCK_I": 32}),
        # C = 130: two column tiles of 128, the last one partial; VEC 2 divides 130
        ((2, 130, 3, 3), True, torch.float32, {"VEC": 2, "BLOCK_R": 4, "BLOCK_I": 128}),
        # C = 5: no vectors; the columns are padded to 8
        ((2, 5, 3, 3), True, torch.bfloat16, {"VEC": 1, "BLOCK_R": 128, "BLOCK_I": 8}),
        # NCHW: columns walk W = 56, 512-element tiles whatever the dtype
        ((2, 3, 56, 56), False, torch.float16, {"VEC": 8, "BLOCK_R": 8, "BLOCK_I": 64}),
    ],
)
def test_tiling_picks_the_vector_width_and_tile(shape, channels_last, dtype, expected):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    t = torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=memory_format)
    tiling = pool_kernels._tiling(t, channels_last)
    assert {k: tiling[k] for k in expected} == expected
    inner = shape[1] if channels_last else shape[3]
    tiles = -(-t.numel() // inner // expected["BLOCK_R"]) * -(-inner // expected["BLOCK_I"])
    assert tiling["grid"] == (tiles,)


def test_needs_int64_counts_the_span_of_strided_views():
    big = torch.empty(2**16 + 1, 2**15, device="meta")
    assert pool_kernels._needs_int64(big)
    assert pool_kernels._needs_int64(big[:, :1])  # few elements, but offsets reach 2**31
    assert not pool_kernels._needs_int64(big[: 2**15 - 1])


@pytest.mark.parametrize(
    "op, kwargs",
    [
        (fcf.max_pool2d, {"kernel_size": 3, "stride": 1, "padding": 1}),
        (fcf.avg_pool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
        (fcf.adaptive_avg_pool2d, {"output_size": (2, 3)}),
    ],
    ids=["max", "avg", "adaptive"],
)
def test_no_aten_pooling_runs(triton_backend, device, record_aten_ops, op, kwargs):
    x = _input((2, 3, 7, 8), "nchw", torch.float32, device)
    with record_aten_ops() as rec:
        op(x, **kwargs).sum().backward()
    assert x.grad is not None
    assert not rec.forbidden(), rec.forbidden()


# One small call of each op (and its torch reference), for the checks that apply to all three.
EACH_OP = [
    (fcf.max_pool2d, F.max_pool2d, {"kernel_size": 2}),
    (fcf.avg_pool2d, F.avg_pool2d, {"kernel_size": 2}),
    (fcf.adaptive_avg_pool2d, F.adaptive_avg_pool2d, {"output_size": 1}),
]
EACH_OP_IDS = ["max", "avg", "adaptive"]


@pytest.mark.parametrize("op, reference, kwargs", EACH_OP, ids=EACH_OP_IDS)
def test_pooling_under_autocast_keeps_the_input_dtype(
    triton_backend, device, op, reference, kwargs
):
    # 1 + small fractions: a pass through bfloat16 (8 significant bits) would lose them
    x = 1 + torch.rand(1, 2, 4, 4, device=device) / 64
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y = op(x, **kwargs)
    assert y.dtype == torch.float32
    assert_close(y.cpu().double(), reference(x.cpu().double(), **kwargs), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("op, shape, kwargs, error, message", BAD_ARGUMENT_CASES)
def test_bad_arguments_raise_clear_errors(
    triton_backend, device, op, shape, kwargs, error, message
):
    with pytest.raises(error, match=message):
        op(torch.randn(shape, device=device), **kwargs)


@pytest.mark.parametrize("op, reference, kwargs", EACH_OP, ids=EACH_OP_IDS)
def test_integer_input_is_rejected_on_triton(triton_backend, device, op, reference, kwargs):
    x = torch.ones(1, 2, 4, 4, dtype=torch.int64, device=device)
    with pytest.raises(TypeError, match="input has dtype torch.int64"):
        op(x, **kwargs)


def test_torch_backend_matches_triton_backend(device):
    x = torch.randn(2, 3, 7, 9, device=device)
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    results = {}
    for name in ("torch", "triton"):
        with use_backend(name):
            results[name] = (fcf.max_pool2d(x, **kwargs), fcf.avg_pool2d(x, **kwargs))
    assert_close(results["triton"], results["torch"])
