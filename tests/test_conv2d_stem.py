"""The small-channel stem forward (C <= 8) against torch in float64.

Runs on CUDA when present, else in Triton's interpreter on the CPU (see conftest). The
reference is ``F.conv2d`` in float64 on an explicitly padded input, so asymmetric padding
(top/left from ``padding``, bottom/right implied by ``output_size``) is checked too. fp32
(IEEE) and fp16 run everywhere; bf16 and tf32 need a GPU (docs/decisions.md, Testing).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, requires_compiled_bf16_dot, requires_cuda_tf32

from fastconv.kernels import conv2d_stem, launch
from fastconv.kernels.conv2d_stem import conv2d_stem_fwd, stem_configs, uses_stem_path
from fastconv.kernels.epilogue import IDENTITY, RELU


def output_size(h, w, r, s, stride, padding, dilation, extra=(0, 0)):
    """(P, Q) for symmetric padding, plus ``extra`` rows/columns (negative: fewer)."""
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // st + 1 + more
        for size, k, st, pad, dil, more in zip(
            (h, w), (r, s), stride, padding, dilation, extra, strict=True
        )
    )


def reference(x, weight, bias, stride, padding, dilation, size, relu):
    """float64 torch: top/left ``padding``, bottom/right as ``size`` (P, Q) implies."""
    _, _, h, w = x.shape
    _, _, r, s = weight.shape
    bottom, right = (
        (out - 1) * st + dil * (k - 1) + 1 - length - pad
        for out, st, dil, k, length, pad in zip(
            size, stride, dilation, (r, s), (h, w), padding, strict=True
        )
    )
    x64 = F.pad(x.detach().cpu().double(), (padding[1], right, padding[0], bottom))
    b64 = None if bias is None else bias.detach().cpu().double()
    y = F.conv2d(x64, weight.detach().cpu().double(), b64, stride, 0, dilation)
    assert tuple(y.shape[2:]) == tuple(size)
    return F.relu(y) if relu else y


def make_input(n, c, h, w, layout, dtype):
    if layout == "channel-slice":  # a non-contiguous view: every other channel
        x = torch.randn(n, 2 * c, h, w, device=DEVICE)[:, ::2]
    else:
        x = torch.randn(n, c, h, w, device=DEVICE)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    return x.to(dtype)


def check(y, expected, reduction, atol, rtol, what=""):
    torch.testing.assert_close(
        y.cpu().double(),
        expected,
        atol=atol * math.sqrt(reduction),
        rtol=rtol,
        equal_nan=True,
        msg=lambda m: f"{what}: {m}",
    )


# (N, C, H, W, K, R, S, stride, padding, dilation, extra output rows/cols, layout)
SHAPES = [
    pytest.param(2, 3, 9, 7, 20, 3, 3, (1, 1), (1, 1), (1, 1), (0, 0), "nchw", id="3x3s1p1-C3"),
    pytest.param(1, 3, 15, 13, 12, 7, 7, (2, 2), (3, 3), (1, 1), (0, 0), "nchw", id="7x7s2p3-C3"),
    pytest.param(2, 1, 8, 9, 6, 3, 3, (1, 1), (1, 1), (1, 1), (0, 0), "nchw", id="3x3-C1"),
    pytest.param(1, 4, 11, 10, 9, 5, 5, (1, 1), (4, 4), (2, 2), (0, 0), "nchw", id="5x5d2-C4"),
    pytest.param(2, 8, 7, 8, 10, 3, 3, (1, 1), (1, 1), (1, 1), (0, 0), "nchw", id="3x3-C8"),
    pytest.param(1, 5, 9, 9, 7, 3, 3, (2, 2), (1, 1), (1, 1), (0, 0), "nchw", id="3x3s2-C5"),
    # asymmetric: stride 2x1, padding 2x0, bottom/right padding differing from top/left
    pytest.param(1, 3, 10, 9, 5, 3, 5, (2, 1), (2, 0), (1, 1), (1, -1), "nchw", id="asym"),
    pytest.param(1, 3, 9, 8, 6, 4, 2, (1, 3), (0, 1), (2, 1), (0, 1), "nchw", id="asym-even"),
    pytest.param(2, 3, 7, 6, 8, 3, 3, (1, 1), (1, 1), (1, 1), (0, 0), "channels_last", id="cl"),
    pytest.param(1, 3, 13, 12, 8, 7, 7, (2, 2), (3, 3), (1, 1), (0, 0), "channels_last", id="cl7"),
    pytest.param(2, 3, 7, 6, 5, 3, 3, (1, 1), (1, 1), (1, 1), (0, 0), "channel-slice", id="view"),
    pytest.param(1, 3, 2, 3, 4, 7, 7, (2, 2), (3, 3), (1, 1), (0, 0), "nchw", id="image<kernel"),
]

# (dtype, allow_tf32, atol, rtol): as tests/test_conv2d.py (atol scaled by sqrt(R*S*C)).
DTYPES = [
    pytest.param(torch.float32, False, 2e-5, 1e-4, id="fp32"),
    pytest.param(torch.float32, True, 2e-3, 1e-2, id="tf32", marks=requires_cuda_tf32),
    pytest.param(torch.float16, False, 2e-5, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, False, 1.6e-2, 5e-2, id="bf16", marks=requires_compiled_bf16_dot),
]


@pytest.mark.parametrize(("dtype", "allow_tf32", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "dil", "extra", "layout"), SHAPES
)
def test_matches_torch(
    monkeypatch, dtype, allow_tf32, atol, rtol,
    n, c, h, w, k, r, s, stride, padding, dil, extra, layout,
):  # fmt: skip
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    torch.manual_seed(0)
    x = make_input(n, c, h, w, layout, dtype)
    weight = torch.randn(k, c, r, s, device=DEVICE, dtype=dtype)
    bias = torch.randn(k, device=DEVICE, dtype=dtype)
    size = output_size(h, w, r, s, stride, padding, dil, extra)
    for with_bias, relu in ((True, True), (False, False)):
        b = bias if with_bias else None
        y = conv2d_stem_fwd(x, weight, b, stride, padding, dil, size, RELU if relu else IDENTITY)
        expected = reference(x, weight, b, stride, padding, dil, size, relu)
        if relu:
            assert (expected == 0).any() and (expected > 0).any(), "ReLU not exercised"
        assert y.dtype == dtype and y.shape == expected.shape
        channels_last = layout == "channels_last"  # the channel slice stays NCHW-ordered
        assert y.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        check(y, expected, c * r * s, atol, rtol, f"bias={with_bias} relu={relu}")


def gpu_configs():
    """Every GPU config: the tf32 list serves fp16 (and fp32 with tf32), the IEEE list fp32."""
    return [
        pytest.param(ieee, config, id=f"{'ieee' if ieee else 'tf32'}-{config_id(config)}")
        for ieee in (False, True)
        for config in stem_configs("ieee" if ieee else "fp16", interpreter=False)
    ]


def config_id(config) -> str:
    m, n, k = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return f"{m}x{n}x{k}-w{config.num_warps}-s{config.num_stages}"


@pytest.mark.parametrize(("ieee", "config"), gpu_configs())
def test_every_config_matches_torch(ieee, config):
    """Partial tiles on every axis: pixels, output channels and reduction columns."""
    bm, bn, bk = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    n, c, h, w, k, r, s = 1, 3, 11, 13, bn + 3, 3, 3
    size = output_size(h, w, r, s, (1, 1), (1, 1), (1, 1))
    assert (n * size[0] * size[1]) % bm and r * s * conv2d_stem.stem_channels(c) % bk
    dtype = torch.float32 if ieee else torch.float16
    torch.manual_seed(2)
    x = make_input(n, c, h, w, "nchw", dtype)
    weight = torch.randn(k, c, r, s, device=DEVICE, dtype=dtype)
    bias = torch.randn(k, device=DEVICE, dtype=dtype)
    y = conv2d_stem_fwd(x, weight, bias, (1, 1), (1, 1), (1, 1), size, RELU, config=config)
    expected = reference(x, weight, bias, (1, 1), (1, 1), (1, 1), size, True)
    check(y, expected, c * r * s, 2e-5, 1e-4 if ieee else 1e-3, config_id(config))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate_like_torch():
    """A NaN or inf pixel of x reaches exactly the outputs whose window covers it, through
    the ReLU (relu(NaN) = NaN); the zero padding and padded columns add no NaN."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, 9, 10, device=DEVICE)
    x[0, 1, 4, 5] = float("nan")
    x[0, 0, 0, 9] = float("inf")
    x[0, 2, 8, 0] = float("-inf")
    weight = torch.randn(6, 3, 3, 3, device=DEVICE)
    bias = torch.randn(6, device=DEVICE)
    size = output_size(9, 10, 3, 3, (1, 1), (1, 1), (1, 1))
    y = conv2d_stem_fwd(x, weight, bias, (1, 1), (1, 1), (1, 1), size, RELU)
    expected = reference(x, weight, bias, (1, 1), (1, 1), (1, 1), size, True)
    assert expected.isnan().sum() > 9, "the NaN should spread to a 3x3 window of every channel"
    assert torch.equal(y.cpu().isnan(), expected.isnan())
    check(y, expected, 27, 2e-5, 1e-4)


def test_index_64_path(monkeypatch):
    """INDEX_64 (pixel math in int64) computes the same result; forced on a tiny shape."""
    monkeypatch.setattr(conv2d_stem, "needs_int64", lambda *args: True)
    torch.manual_seed(4)
    x = make_input(2, 3, 9, 8, "channels_last", torch.float32)
    weight = torch.randn(5, 3, 7, 7, device=DEVICE)
    size = output_size(9, 8, 7, 7, (2, 2), (3, 3), (1, 1))
    y = conv2d_stem_fwd(x, weight, None, (2, 2), (3, 3), (1, 1), size, RELU)
    check(y, reference(x, weight, None, (2, 2), (3, 3), (1, 1), size, True), 147, 2e-5, 1e-4)


def test_empty_batch():
    x, weight = torch.randn(0, 3, 8, 8, device=DEVICE), torch.randn(4, 3, 3, 3, device=DEVICE)
    y = conv2d_stem_fwd(x, weight, None, (1, 1), (1, 1), (1, 1), (8, 8))
    assert y.shape == (0, 4, 8, 8)


def test_padded_copies():
    """x_pad and w_pad put every value where the kernel's column j = (r*S + s)*CP + c reads."""
    x = torch.randn(2, 3, 4, 5)
    x_pad = conv2d_stem.pad_input(x, 4, (1, 2), (6, 8))
    assert x_pad.shape == (2, 6, 8, 4)
    assert torch.equal(x_pad[:, 1:5, 2:7, :3], x.permute(0, 2, 3, 1))
    assert x_pad.count_nonzero() == x.count_nonzero()  # zeros everywhere else
    weight = torch.randn(5, 3, 2, 3)
    w_pad = conv2d_stem.pad_weight(weight, 4)
    assert w_pad.shape == (64, 32) and w_pad.is_contiguous()
    k, c, r, s = 4, 2, 1, 2
    assert w_pad[k, (r * 3 + s) * 4 + c] == weight[k, c, r, s]
    assert torch.equal(w_pad[w_pad != 0].sort().values, weight.flatten().sort().values)


def test_uses_stem_path_and_configs():
    assert uses_stem_path(1) and uses_stem_path(3) and uses_stem_path(8)
    assert not uses_stem_path(9) and not uses_stem_path(64)
    geometry = ((1, 1), (1, 1), (1, 1), (4, 4), False)
    x, weight = torch.randn(1, 9, 4, 4, device=DEVICE), torch.randn(2, 9, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="C = 9"):
        conv2d_stem_fwd(x, weight, None, *geometry)
    wide = launch.tile_config(64, 128, 16, 1, 4)
    with pytest.raises(ValueError, match="BLOCK_N must divide 64"):
        conv2d_stem_fwd(x[:, :3], weight[:, :3], None, *geometry, config=wide)
    assert stem_configs(interpreter=True) == launch.INTERPRETER_CONFIGS
    for ieee in (False, True):
        for config in stem_configs("ieee" if ieee else "fp16", interpreter=False):
            assert config.num_warps <= launch.MAX_NUM_WARPS, config_id(config)
            assert conv2d_stem._K_ALIGN % config.kwargs["BLOCK_N"] == 0
            assert conv2d_stem._RSC_ALIGN % config.kwargs["BLOCK_K"] == 0
            assert not ieee or config.kwargs["BLOCK_K"] <= 16
