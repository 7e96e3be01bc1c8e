"""benchmarks/checks.py: the correctness check every benchmark case runs before it is timed.

The check must accept the real kernels (and torch's own ops) and reject realistic kernel bugs:
a dropped split-K partial sum in wgrad and a missing bias (the "broken providers" below are
the real fastconv op with one launcher swapped for a broken one). Without a GPU the kernels
run in Triton's interpreter: small shapes, fp32 (IEEE) and fp16 for the convolution (bf16
dots are wrong there, see conftest), all three dtypes for pooling.
"""

import dataclasses
import itertools
import math

import pytest
import torch
from conftest import DEVICE, requires_compiled_bf16_dot, requires_cuda_tf32

from benchmarks import checks
from benchmarks.providers import EAGER, conv_op, pool_op, provider_backend
from benchmarks.shapes import CONV_SHAPES, ConvShape, PoolShape
from fastconv.kernels import conv2d as conv2d_kernels

# 2*9*8 = 144 wgrad rows: split 4 and 8 divide them evenly (36 and 18 rows per program)
CONV_SHAPE = ConvShape("check-3x3", 2, 5, 9, 8, 6, 3, 3, padding=(1, 1))
CONV_DTYPES = [torch.float32, torch.float16]


def run_conv_check(provider: str, dtype: torch.dtype, with_backward: bool) -> None:
    torch.manual_seed(0)
    inputs, grad_y = CONV_SHAPE.random_inputs(dtype, DEVICE)  # as the benchmark draws them
    with provider_backend(provider):
        op = conv_op(provider, CONV_SHAPE)
        checks.check_conv(op, inputs, grad_y, CONV_SHAPE, with_backward=with_backward)


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("with_backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize(
    ("provider", "dtype"),
    [
        pytest.param("fastconv", torch.float32, id="fastconv-fp32"),
        pytest.param("fastconv", torch.float16, id="fastconv-fp16"),
        pytest.param(
            "fastconv", torch.bfloat16, id="fastconv-bf16", marks=requires_compiled_bf16_dot
        ),
        pytest.param("fastconv", "tf32", id="fastconv-tf32", marks=requires_cuda_tf32),
        # torch's own convolution (cuDNN on a GPU): the bounds must hold for it too
        pytest.param(EAGER, torch.float32, id="eager-fp32"),
        pytest.param(EAGER, torch.float16, id="eager-fp16"),
        pytest.param(EAGER, torch.bfloat16, id="eager-bf16"),
        pytest.param(EAGER, "tf32", id="eager-tf32", marks=requires_cuda_tf32),
    ],
)
def test_check_conv_accepts_the_real_providers(monkeypatch, provider, dtype, with_backward):
    if dtype == "tf32":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
        dtype = torch.float32
    run_conv_check(provider, dtype, with_backward)


K3S2P1 = (("kernel_size", 3), ("padding", 1), ("stride", 2))
POOL_SHAPES = [
    PoolShape("max3x3s2", "max_pool2d", 2, 3, 9, 8, K3S2P1),
    PoolShape("avg3x3s2", "avg_pool2d", 2, 3, 9, 8, K3S2P1),
    PoolShape("adaptive", "adaptive_avg_pool2d", 2, 3, 9, 8, (("output_size", (2, 3)),)),
]


def pool_inputs(shape: PoolShape, dtype: torch.dtype):
    torch.manual_seed(1)
    if shape.op == "max_pool2d":
        x = checks.tie_free_pool_input(shape, dtype, DEVICE)
    else:
        x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=DEVICE, dtype=dtype)
    x.requires_grad_()
    p_shape = getattr(torch.nn.functional, shape.op)(x.detach().float(), **shape.kwargs).shape
    return x, torch.randn(p_shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda shape: shape.name)
def test_check_pool_accepts_fastconv(shape, dtype):
    x, grad_y = pool_inputs(shape, dtype)
    with provider_backend("fastconv"):
        checks.check_pool(pool_op("fastconv", shape), x, grad_y, shape)


# --------------------------------------------------------------------------- rejected


def drop_wgrad_partial_sums(monkeypatch, split: int, kept: list[int]) -> None:
    """Make fastconv's wgrad run ``split`` programs and keep only the partial sums in ``kept``.

    Program z sums rows [z*rows_per_split, (z+1)*rows_per_split) of the N*P*Q pixels, so
    zeroing grad_y on the other programs' rows gives exactly the sum of the kept partials.
    """
    real = conv2d_kernels.conv2d_bwd_weight

    def broken(grad_y, x, weight_shape, *args, **kwargs):
        n, _, p, q = grad_y.shape
        rows_per_split, programs = conv2d_kernels.wgrad_partition(
            n * p * q, math.prod(weight_shape), split
        )
        assert programs == split
        keep = torch.zeros(n * p * q, dtype=grad_y.dtype, device=grad_y.device)
        for z in kept:
            keep[z * rows_per_split : (z + 1) * rows_per_split] = 1
        masked = grad_y * keep.view(n, 1, p, q)
        return real(masked, x, weight_shape, *args, **{**kwargs, "split": split})

    monkeypatch.setattr(conv2d_kernels, "conv2d_bwd_weight", broken)


@pytest.mark.parametrize("dtype", CONV_DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    ("split", "kept"),
    [
        pytest.param(4, [0], id="only-first-of-4-kept"),
        pytest.param(8, list(range(7)), id="last-of-8-dropped"),
    ],
)
def test_check_conv_rejects_a_dropped_wgrad_split(monkeypatch, split, kept, dtype):
    drop_wgrad_partial_sums(monkeypatch, split, kept)
    with pytest.raises(AssertionError, match="grad_weight: "):
        run_conv_check("fastconv", dtype, with_backward=True)


def test_dropped_split_fixture_changes_nothing_when_every_partial_sum_is_kept(monkeypatch):
    # the broken provider differs from the real one only by the dropped partial sums
    drop_wgrad_partial_sums(monkeypatch, 8, list(range(8)))
    run_conv_check("fastconv", torch.float32, with_backward=True)


@pytest.mark.parametrize("dtype", CONV_DTYPES, ids=["fp32", "fp16"])
def test_check_conv_rejects_a_missing_bias(monkeypatch, dtype):
    real = conv2d_kernels.conv2d_fwd

    def bias_dropped(x, weight, bias, *args):
        return real(x, weight, None, *args)

    monkeypatch.setattr(conv2d_kernels, "conv2d_fwd", bias_dropped)
    with pytest.raises(AssertionError, match="output: "):
        run_conv_check("fastconv", dtype, with_backward=False)


@pytest.mark.parametrize("dtype", CONV_DTYPES, ids=["fp32", "fp16"])
def test_check_conv_rejects_a_missing_bias_gradient(monkeypatch, dtype):
    real = conv2d_kernels.conv2d_bwd_weight

    def bias_grad_zero(*args, **kwargs):
        grad_w, grad_b = real(*args, **kwargs)
        return grad_w, None if grad_b is None else torch.zeros_like(grad_b)

    monkeypatch.setattr(conv2d_kernels, "conv2d_bwd_weight", bias_grad_zero)
    with pytest.raises(AssertionError, match="grad_bias: "):
        run_conv_check("fastconv", dtype, with_backward=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_pool_rejects_a_wrong_avg_pool_divisor(dtype):
    # padding counted when it should not be: only the border windows are off (by 1/3 to 5/9)
    shape = POOL_SHAPES[1]
    wrong = dataclasses.replace(shape, options=(*shape.options, ("count_include_pad", False)))
    x, grad_y = pool_inputs(shape, dtype)
    with provider_backend("fastconv"), pytest.raises(AssertionError, match="output: "):
        checks.check_pool(pool_op("fastconv", wrong), x, grad_y, shape)


# --------------------------------------------------------------------------- the bounds


def largest_split_of_the_benchmarked_layers() -> int:
    """Most wgrad split-K programs the launcher runs for a benchmarked conv at any batch size.

    With rows unbounded the split is capped by the weight alone (program and workspace caps),
    on every device: 4854 for the 864-element 3 -> 32 channel first layer.
    """
    return max(
        conv2d_kernels.wgrad_split(2**62, shape.k * shape.c // shape.groups * shape.r * shape.s)
        for shape in CONV_SHAPES
    )


@pytest.mark.parametrize("math", sorted(checks.TOLERANCES))
def test_bounds_reject_any_one_dropped_partial_sum_at_the_largest_split(math):
    # grad_w = sum of S partial sums g_z^T x_z over disjoint row slices (64 rows each, so
    # each partial sum is close to Gaussian, as the real ones over hundreds of rows are)
    split = largest_split_of_the_benchmarked_layers()
    assert split > 2048, "the benchmarked layers split less: revisit benchmarks/checks.py's bounds"
    torch.manual_seed(2)
    g = torch.randn(split, 32, 64, dtype=torch.float64)
    x = torch.randn(split, 64, 27, dtype=torch.float64)
    partials = g @ x  # (split, 32, 27)
    reference = partials.sum(0)
    for dropped in partials:
        with pytest.raises(AssertionError, match="grad_weight: .* error"):
            checks.assert_close_to_reference(
                "grad_weight", reference - dropped, reference, checks.TOLERANCES[math]
            )


MATH_DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


@pytest.mark.parametrize("math", sorted(checks.TOLERANCES))
def test_bounds_accept_two_roundings_to_the_result_dtype(math):
    # eager cuDNN and torch.compile round the conv's output, add the bias and round again
    dtype = MATH_DTYPES[math]
    torch.manual_seed(3)
    conv = torch.randn(64, 32, 16, 16, dtype=torch.float64)
    bias = 0.5 * torch.randn(32, 1, 1, dtype=torch.float64)
    twice_rounded = (conv.to(dtype) + bias.to(dtype)).double()
    # the reference takes the rounded bias (an input), as the real check does
    reference = conv + bias.to(dtype).double()
    checks.assert_close_to_reference("output", twice_rounded, reference, checks.TOLERANCES[math])


def test_fp32_bounds_follow_cudnn_allow_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert checks.tolerance(torch.float32, tf32_applies=True) == checks.TOLERANCES["tf32"]
    assert checks.tolerance(torch.float32, tf32_applies=False) == checks.TOLERANCES["fp32"]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert checks.tolerance(torch.float32, tf32_applies=True) == checks.TOLERANCES["fp32"]
    assert checks.tolerance(torch.bfloat16, tf32_applies=True) == checks.TOLERANCES["bf16"]


@pytest.mark.parametrize(
    ("actual", "message"),
    [
        (torch.tensor([1.0, 2.0, float("nan")]), "max-norm error nan"),
        (torch.tensor([1.0, 2.0]), r"shape \(2,\) != \(3,\)"),
    ],
)
def test_nan_or_wrong_shape_is_rejected(actual, message):
    reference = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match=message):
        checks.assert_close_to_reference("output", actual, reference, checks.TOLERANCES["bf16"])


def test_l2_bound_catches_a_small_error_spread_over_the_whole_tensor():
    reference = torch.randn(10_000, dtype=torch.float64)
    spread = reference * (1 + 1e-2)  # 1 % everywhere: within bf16's max-norm bound (1.6e-2)
    with pytest.raises(AssertionError, match="L2 error 1.00e-02"):
        checks.assert_close_to_reference("output", spread, reference, checks.TOLERANCES["bf16"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tie_free_pool_input_has_distinct_values_in_every_3x3_window(dtype):
    shape = PoolShape("ties", "max_pool2d", 2, 3, 9, 10, (("kernel_size", 3),))
    x = checks.tie_free_pool_input(shape, dtype, torch.device("cpu"))
    assert x.dtype == dtype
    for i, j in itertools.product(range(shape.h - 2), range(shape.w - 2)):
        window = x[..., i : i + 3, j : j + 3].reshape(shape.n, shape.c, 9)
        assert (window.sort(-1).values.diff(dim=-1) > 0).all()


def test_tie_free_pool_input_refuses_windows_above_3x3():
    shape = PoolShape("big", "max_pool2d", 1, 1, 8, 8, (("kernel_size", 4),))
    with pytest.raises(ValueError, match="windows up to 3x3, got kernel_size=4"):
        checks.tie_free_pool_input(shape, torch.float32, torch.device("cpu"))
