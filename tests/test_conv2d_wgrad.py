"""wgrad's NHWC index math against float64 torch.

The kernel walks the N*P*Q output pixels BLOCK_K rows at a time and advances each row's
(n, p, q) by carries instead of dividing (kernels/conv2d_wgrad.py), reads x at
``p*stride - pad + r*dil`` per tap, and pads the channels to a multiple of 16. The shapes
below each aim at one thing that math can get wrong: a row of pixels shorter than a step
(Q < BLOCK_K), whole images inside one step (P*Q < BLOCK_K), strides 1/2/3, dilation,
asymmetric padding and kernels, channel counts that are not a multiple of the tile, split-K
slices that start mid-row, and NCHW, channels_last and strided-view inputs. Each runs with
the interpreter's config (BLOCK_K 16) and with a GPU config (BLOCK_K 64).
"""

import math

import pytest
import torch
from conftest import DEVICE, intercept_tuned_launches, requires_compiled_bf16_dot

from fastconv.kernels import conv2d_wgrad as wk

# (N, C, H, W, K, R, S, stride, padding, dilation)
SHAPES = [
    # P = Q = 7: Q < BLOCK_K < P*Q, the q and p carries (147 rows: BLOCK_K 64 takes 3 steps)
    pytest.param(3, 5, 7, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), id="3x3-Q7"),
    # P = Q = 3: P*Q = 9 < BLOCK_K, several images per step (the n carry, dn >= 1)
    pytest.param(16, 3, 3, 3, 4, 1, 1, (1, 1), (0, 0), (1, 1), id="1x1-PQ9"),
    # P*Q = 2 x 1: one image is 2 rows, a step spans 8 or 32 images
    pytest.param(72, 2, 4, 3, 3, 3, 3, (2, 3), (0, 0), (1, 1), id="PQ2-stride2x3"),
    pytest.param(2, 4, 11, 9, 5, 3, 2, (3, 2), (2, 1), (1, 1), id="stride3x2-pad2x1"),
    pytest.param(2, 3, 10, 12, 4, 3, 3, (1, 2), (2, 3), (2, 3), id="dilation2x3"),
    # channels past a tile: C=40 -> 48 padded (BLOCK_N 16 and 32 leave partial blocks)
    pytest.param(1, 40, 6, 5, 20, 2, 3, (1, 1), (1, 0), (1, 1), id="C40-K20"),
]

LAYOUTS = ["nchw", "channels_last", "view"]

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-4, id="fp32"),
    pytest.param(torch.float16, 1e-3, 2e-3, id="fp16"),
    pytest.param(torch.bfloat16, 8e-3, 1.6e-2, id="bf16", marks=requires_compiled_bf16_dot),
]

CONFIGS = [
    pytest.param(None, id="tuned"),  # the interpreter's BLOCK_K 16 config on a CPU
    pytest.param(wk.wgrad_configs(interpreter=False)[-1], id="blockk64"),
]


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


def output_hw(h, w, r, s, stride, padding, dilation):
    return tuple(
        (size + 2 * pad - dil * (kernel - 1) - 1) // st + 1
        for size, kernel, st, pad, dil in zip(
            (h, w), (r, s), stride, padding, dilation, strict=True
        )
    )


def check(actual, expected, reduction, atol, rtol, what):
    assert not actual.isnan().any(), f"{what}: unwritten (NaN) elements"
    torch.testing.assert_close(
        actual.cpu().double(),
        expected,
        atol=atol * math.sqrt(reduction),
        rtol=rtol,
        msg=lambda m: f"{what}: {m}",
    )


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dil"), SHAPES)
def test_wgrad_index_math_matches_torch(
    n, c, h, w, k, r, s, stride, padding, dil, layout, dtype, atol, rtol, config
):  # fmt: skip
    p, q = output_hw(h, w, r, s, stride, padding, dil)
    x = make((n, c, h, w), dtype, layout, seed=1)
    grad_y = make((n, k, p, q), dtype, layout, seed=2)
    rows = n * p * q
    # BLOCK_K 16: 3 slices that start mid-row and mid-image; BLOCK_K 64: one slice of 2-3 steps
    split = 3 if config is None else 1
    grad_w, grad_b = wk.conv2d_bwd_weight(
        grad_y, x, (k, c, r, s), stride, padding, dil, True, split=split, config=config
    )
    x64, g64 = x.cpu().double(), grad_y.cpu().double()
    expected = torch.nn.grad.conv2d_weight(x64, (k, c, r, s), g64, stride, padding, dil)
    assert grad_w.dtype == dtype and grad_w.shape == (k, c, r, s)
    assert grad_w.is_contiguous(memory_format=torch.channels_last)
    check(grad_w, expected, rows, atol, rtol, "grad weight")
    check(grad_b, g64.sum((0, 2, 3)), rows, atol, rtol, "grad bias")


def test_wgrad_reads_unit_stride_channels_without_a_copy(monkeypatch):
    """A channels_last view with a multiple of 16 channels reaches the kernel as it is."""
    seen = []
    intercept_tuned_launches(monkeypatch, lambda *call: seen.append(call[4]))
    big = torch.randn(2, 48, 5, 9).contiguous(memory_format=torch.channels_last)
    x = big[:, 16:32, :, 1:8]
    grad_y = torch.randn(2, 32, 5, 7).contiguous(memory_format=torch.channels_last)
    wk.conv2d_bwd_weight(grad_y, x, (32, 16, 1, 1), (1, 1), (0, 0), (1, 1), False)
    (args,) = seen
    assert args[0].data_ptr() == grad_y.data_ptr() and args[1].data_ptr() == x.data_ptr()
    assert args[19:] == (  # after rows_per_split and GROUPS
        grad_y.stride(0),
        grad_y.stride(2),
        grad_y.stride(3),
        big.stride(0),
        big.stride(2),
        big.stride(3),
    )


def test_wgrad_pads_channels_to_16_with_zeros(monkeypatch):
    """NCHW, or channels that are not a multiple of 16: NHWC copies with zero padding."""
    seen = []
    intercept_tuned_launches(monkeypatch, lambda *call: seen.append(call[4]))
    x, grad_y = torch.randn(2, 3, 6, 6), torch.randn(2, 20, 6, 6)
    wk.conv2d_bwd_weight(grad_y, x, (20, 3, 1, 1), (1, 1), (0, 0), (1, 1), False)
    (args,) = seen
    for padded, original, channels in ((args[0], grad_y, 32), (args[1], x, 16)):
        assert padded.shape[1] == channels and padded.stride(1) == 1
        c = original.shape[1]
        assert torch.equal(padded[:, :c], original) and not padded[:, c:].any()
