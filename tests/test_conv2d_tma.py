"""The TMA implicit GEMM (kernels/conv2d_tma.py) against float64 torch.

On a CPU-only machine the kernel runs in Triton's interpreter, whose tensor descriptors
zero-fill out-of-bounds boxes like TMA does; with an sm_90 GPU it runs compiled.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fastconv.kernels import conv2d_tma
from fastconv.kernels.conv2d_tma import (
    conv2d_bwd_input_tma,
    conv2d_fwd_tma,
    tma_applies,
    tma_configs,
)
from fastconv.kernels.epilogue import IDENTITY, RELU

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
    reason="TMA tensor descriptors need sm_90 or newer",
)

# fp32 runs as tf32 on a GPU (the kernel's only fp32 mode): rounding each operand to a 10-bit
# mantissa leaves an error that grows with the square root of the reduction length, bounded
# as test_conv2d.py bounds tf32 (atol per sqrt(length)); the interpreter's exact fp32 passes
# far inside it. fp16 products are exact, so its bound stays flat.
TOL = {torch.float32: (2e-3, 1e-2), torch.float16: (2e-2, 2e-2)}


@pytest.fixture(autouse=True)
def tf32_for_fp32(monkeypatch):
    """fp32 takes the TMA kernel only with tf32 allowed (``tma_applies``)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)


def _assert_close(actual, expected, dtype, reduction):
    atol, rtol = TOL[dtype]
    if dtype == torch.float32:
        atol *= math.sqrt(reduction)
    torch.testing.assert_close(actual.double().cpu(), expected.cpu(), atol=atol, rtol=rtol)


def _inputs(shape, dtype, device, channels_last, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64) / 2
    t = t.to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _check_fwd(device, n, c, h, w, k, r, s, padding, dilation, dtype=torch.float32,
               channels_last=False, bias=True, relu=True, config=None):  # fmt: skip
    x = _inputs((n, c, h, w), dtype, device, channels_last, 1)
    weight = _inputs((k, c, r, s), dtype, device, False, 2)
    b = _inputs((k,), dtype, device, False, 3) if bias else None
    ref = F.conv2d(
        x.double(), weight.double(), None if b is None else b.double(), 1, padding, dilation
    )
    if relu:
        ref = ref.relu()
    assert tma_applies(x, weight, (1, 1), padding, dilation, transposed=False)
    epilogue = RELU if relu else IDENTITY
    y = conv2d_fwd_tma(x, weight, b, (1, 1), padding, dilation, ref.shape[2:], epilogue, config)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    _assert_close(y, ref, dtype, c * r * s)


def _check_dgrad(device, n, c, h, w, k, r, s, stride, padding, dilation, dtype=torch.float32,
                 channels_last=False, config=None):  # fmt: skip
    x = _inputs((n, c, h, w), torch.float64, "cpu", False, 1).requires_grad_()
    weight = _inputs((k, c, r, s), torch.float64, "cpu", False, 2)
    y = F.conv2d(x, weight, None, stride, padding, dilation)
    grad_y = _inputs(tuple(y.shape), dtype, device, channels_last, 3)
    y.backward(grad_y.double().cpu())
    wt = weight.to(device=device, dtype=dtype)
    assert tma_applies(grad_y, wt, stride, padding, dilation, transposed=True)
    grad_x = conv2d_bwd_input_tma(grad_y, wt, x.shape, stride, padding, dilation, config)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert grad_x.is_contiguous(memory_format=torch.channels_last) == channels_last
    _assert_close(grad_x, x.grad, dtype, k * r * s)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize(
    "r, s, padding, dilation",
    [
        (1, 1, (0, 0), (1, 1)),
        (3, 3, (1, 1), (1, 1)),
        (3, 3, (0, 0), (1, 1)),
        (3, 3, (2, 2), (2, 2)),
        (5, 3, (2, 1), (1, 1)),
        (5, 3, (1, 2), (2, 1)),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_stride1_matches_float64(device, r, s, padding, dilation, channels_last):
    # 9 x 11 pixels: partial boxes in both directions; 20 output channels: partial channel tile.
    _check_fwd(device, 2, 8, 9, 11, 20, r, s, padding, dilation, channels_last=channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_fp16(device, channels_last):
    _check_fwd(device, 2, 16, 7, 10, 12, 3, 3, (1, 1), (1, 1), torch.float16, channels_last)


def test_forward_without_bias_or_relu(device):
    _check_fwd(device, 1, 8, 6, 6, 8, 3, 3, (1, 1), (1, 1), bias=False, relu=False)


def test_forward_channels_past_one_chunk(device):
    # CIN = 40: CPAD = 64 and two 16-channel chunks plus a partial one per tap.
    _check_fwd(device, 1, 40, 5, 6, 9, 3, 3, (1, 1), (1, 1))


def test_forward_relu_keeps_nan(device):
    x = torch.zeros(1, 8, 4, 4, device=device)
    x[0, 0, 1, 1] = float("nan")
    weight = torch.ones(4, 8, 1, 1, device=device)
    y = conv2d_fwd_tma(x, weight, None, (1, 1), (0, 0), (1, 1), (4, 4), RELU)
    assert torch.isnan(y[0, :, 1, 1]).all()
    assert (y.isnan().sum() == 4) and (y.nan_to_num() == 0).all()


# --------------------------------------------------------------------------- input gradient


@pytest.mark.parametrize(
    "r, s, stride, padding, dilation",
    [
        (3, 3, (1, 1), (1, 1), (1, 1)),
        (1, 1, (1, 1), (0, 0), (1, 1)),
        (3, 3, (2, 2), (1, 1), (1, 1)),
        (1, 1, (2, 2), (0, 0), (1, 1)),
        (3, 3, (2, 3), (1, 2), (2, 1)),
        (5, 3, (2, 3), (2, 1), (1, 2)),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_dgrad_matches_float64(device, r, s, stride, padding, dilation, channels_last):
    _check_dgrad(
        device, 2, 12, 11, 13, 8, r, s, stride, padding, dilation, channels_last=channels_last
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_dgrad_fp16(device, channels_last):
    # C = 8: the weight's channel rows are 16 bytes, as TMA reads them (C = 6 takes the GEMM)
    _check_dgrad(device, 2, 8, 9, 10, 16, 3, 3, (2, 2), (1, 1), (1, 1), torch.float16,
                 channels_last)  # fmt: skip


def test_dgrad_phase_without_taps_stores_zeros(device):
    # stride 3, 1x1, no padding: two of every three input rows/columns get no tap.
    _check_dgrad(device, 1, 8, 7, 8, 8, 1, 1, (3, 3), (0, 0), (1, 1))


# --------------------------------------------------------------------------- every GPU config


@pytest.mark.parametrize("kind, dtype", [("fp16", torch.float16), ("tf32", torch.float32)])
def test_every_gpu_config(device, kind, dtype):
    """Each config of the GPU list once on a small shape: 72 reduction channels (two chunks,
    the second partial), 70 or 72 output channels (a partial channel tile), 9 x 18 pixels
    (partial 8/16-boxes). The input gradient's output channels are the weight's channel rows,
    which TMA reads: 16-byte multiples (72, not 70)."""
    for config in tma_configs(kind, interpreter=False):
        _check_fwd(device, 1, 72, 9, 18, 70, 3, 3, (1, 1), (1, 1), dtype, True, config=config)
        _check_dgrad(device, 1, 72, 9, 18, 72, 3, 3, (1, 1), (1, 1), (1, 1), dtype, True,
                     config=config)  # fmt: skip


def test_configs_respect_limits():
    from fastconv.kernels.launch import MAX_NUM_WARPS

    for kind in ("fp16", "tf32"):
        for config in tma_configs(kind, interpreter=False):
            assert config.num_warps <= MAX_NUM_WARPS
            meta = config.kwargs
            acc_registers = meta["BP"] * meta["BQ"] * meta["BLOCK_N"] // (32 * config.num_warps)
            assert acc_registers <= 128  # 256 (a 128 x 256 tile at 4 warps) cannot fit in 255
            assert meta["BLOCK_K"] * (2 if kind == "fp16" else 4) == 128
    assert len(tma_configs("fp16", interpreter=True)) == 1


def test_pruner_shrinks_block_k_to_the_padded_channels():
    configs = tma_configs("fp16", interpreter=False)
    named = {"COUT": 256, "ROWS_H": 56, "ROWS_W": 56, "CIN": 16}
    assert {c.kwargs["BLOCK_K"] for c in conv2d_tma._prune_configs(configs, named)} == {16}
    named = {"COUT": 32, "ROWS_H": 7, "ROWS_W": 7, "CIN": 64}
    kept = conv2d_tma._prune_configs(configs, named)
    assert all(c.kwargs["BLOCK_N"] <= 64 and c.kwargs["BP"] * c.kwargs["BQ"] <= 64 for c in kept)


# --------------------------------------------------------------------------- applicability


def test_tma_applies_refuses(device, monkeypatch):
    x = torch.zeros(1, 16, 8, 8, device=device)
    w = torch.zeros(8, 16, 3, 3, device=device)
    geo = ((1, 1), (1, 1))
    assert tma_applies(x, w, (1, 1), *geo, transposed=False)
    assert not tma_applies(x, w, (2, 2), *geo, transposed=False)  # strided forward: no box
    assert tma_applies(x, w.transpose(0, 1), (2, 2), *geo, transposed=True)
    x6 = torch.zeros(1, 6, 8, 8, device=device)  # 24 bytes per fp32 pixel: TMA stride rule
    assert not tma_applies(x6, torch.zeros(8, 6, 3, 3, device=device), (1, 1), *geo,
                           transposed=False)  # fmt: skip
    h12 = torch.zeros(1, 12, 8, 8, device=device, dtype=torch.float16)  # 24 bytes in fp16
    assert not tma_applies(h12, torch.zeros(8, 12, 3, 3, device=device, dtype=torch.float16),
                           (1, 1), *geo, transposed=False)  # fmt: skip
    # A channels-last view starting 8 bytes into its storage: base not 16-byte aligned.
    big = torch.zeros(1, 18, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
    view = big[:, 2:, :, :]
    assert view.stride(1) == 1 and not tma_applies(view, torch.zeros(8, 16, 3, 3, device=device),
                                                   (1, 1), *geo, transposed=False)  # fmt: skip
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # IEEE fp32: the FMA kernel
    assert not tma_applies(x, w, (1, 1), *geo, transposed=False)
    assert not tma_applies(x.double(), w.double(), (1, 1), *geo, transposed=False)
