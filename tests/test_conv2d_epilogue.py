"""Fused epilogues ``act(conv2d(x, w) * scale + bias + residual)`` on the Triton kernels
against float64 torch: every activation on every forward kernel (implicit GEMM, TMA, stem,
depthwise), output and every gradient (x, w, bias, scale, residual), no aten convolution;
the activation backward kernel on special values (NaN, inf, 0, the kinks); each GPU config
of each forward kernel with the heaviest epilogue; what the backward saves; argument errors.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE

from fastconv import layers
from fastconv.activations import ACTIVATIONS, reference_activation, saved_for_backward
from fastconv.backend import TRITON_INTERPRETER
from fastconv.functional import fused_conv2d
from fastconv.kernels import conv2d as ck
from fastconv.kernels import conv2d_depthwise as dw
from fastconv.kernels.conv2d_stem import conv2d_stem_fwd, stem_configs
from fastconv.kernels.conv2d_tma import conv2d_fwd_tma, tma_applies, tma_configs
from fastconv.kernels.epilogue import Epilogue, activation_bwd
from fastconv.kernels.layout import memory_format_of

# path -> (C, K, groups, stride, channels_last): each reaches one forward kernel
PATHS = {
    "gemm-nchw-stride2": (16, 24, 1, 2, False),
    "tma-channels-last": (16, 16, 1, 1, True),
    "stem-c3": (3, 16, 1, 1, False),
    "depthwise-multiplier2": (8, 16, 8, 1, True),
}
# (atol per sqrt(reduction length), rtol); tf32 as test_conv2d.py bounds it.
TOL = {torch.float32: (2e-5, 1e-4), "tf32": (2e-3, 1e-2), torch.float16: (2e-3, 1e-2)}


def _operands(c, k, groups, stride, channels_last, dtype, seed=0):
    """x, weight, bias, scale, residual (leaf tensors) with outputs on both sides of the
    activations' kinks (scale near 1, residual of the output's size)."""
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, c, 7, 6).to(DEVICE, dtype, memory_format=memory_format)
    weight = (torch.randn(k, c // groups, 3, 3) / math.sqrt(9 * c // groups)).to(DEVICE, dtype)
    bias = torch.randn(k).to(DEVICE, dtype)
    scale = (torch.rand(k) + 0.5).to(DEVICE, dtype)
    p, q = (7 + 2 - 3) // stride + 1, (6 + 2 - 3) // stride + 1
    residual = torch.randn(2, k, p, q).to(DEVICE, dtype, memory_format=memory_format)
    return [t.requires_grad_() for t in (x, weight, bias, scale, residual)]


def _preactivation(x, weight, bias, scale, residual, stride, groups):
    z = F.conv2d(x, weight, None, stride, 1, 1, groups) * scale.view(1, -1, 1, 1)
    return z + bias.view(1, -1, 1, 1) + residual


def _check(actual, expected, reduction, precision, what):
    """``precision``: a dtype, or "tf32" for fp32 computed with tf32 dots."""
    atol, rtol = TOL[precision]
    torch.testing.assert_close(
        actual.detach().cpu().double(),
        expected.detach().cpu(),
        atol=atol * math.sqrt(reduction),
        rtol=rtol,
        msg=lambda m: f"{what}: {m}",
    )


# Every activation on the implicit GEMM; on each other kernel activations that save the
# output and ones that save the pre-activation (the epilogue code is shared, the wiring of
# channels, offsets and flags is per kernel); fp16 on TMA.
CASES = [
    *((activation, "gemm-nchw-stride2", torch.float32) for activation in ACTIVATIONS),
    *(
        (activation, "tma-channels-last", torch.float32)
        for activation in ("relu", "silu", "gelu_tanh")
    ),
    *((activation, "stem-c3", torch.float32) for activation in ("leaky_relu", "hardswish")),
    *((activation, "depthwise-multiplier2", torch.float32) for activation in ("relu6", "gelu")),
    *(
        (activation, "tma-channels-last", torch.float16)
        for activation in ("identity", "leaky_relu", "gelu")
    ),
]


@pytest.mark.parametrize(
    ("activation", "path", "dtype"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{str(case[2])[-7:]}") for case in CASES],
)
def test_fused_epilogue_matches_torch(
    monkeypatch, triton_backend, record_aten_ops, activation, path, dtype
):
    c, k, groups, stride, channels_last = PATHS[path]
    precision = dtype
    if path.startswith("tma"):  # the TMA kernel takes fp32 only as tf32 (the interpreter's
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # is exact fp32)
        if dtype == torch.float32 and not TRITON_INTERPRETER:
            precision = "tf32"
    operands = _operands(c, k, groups, stride, channels_last, dtype)
    x = operands[0]
    if path.startswith("tma"):
        assert tma_applies(x, operands[1], (stride, stride), (1, 1), (1, 1), False)
    slope = -0.2 if path == "stem-c3" else 0.1  # a negative slope saves the pre-activation
    with record_aten_ops() as recorder:
        y = fused_conv2d(
            x, operands[1], operands[2], stride, 1, 1, groups,
            activation=activation, negative_slope=slope, scale=operands[3],
            residual=operands[4],
        )  # fmt: skip
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
    assert recorder.forbidden() == []
    assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format_of(x))

    ref_operands = [t.detach().cpu().double().requires_grad_() for t in operands]
    z64 = _preactivation(*ref_operands, stride, groups)
    y64 = reference_activation(z64, activation, slope)
    if activation == "relu":  # a z within tf32 rounding of 0 may fall on either side of the
        # kink: the gradient follows the kernel's own mask (as in test_conv2d.py)
        z64.backward(grad_y.cpu().double() * (y.detach().cpu() > 0))
    else:
        y64.backward(grad_y.cpu().double())
    n, _, p, q = y.shape
    reduction = 9 * c // groups
    _check(y, y64, reduction, precision, "output")
    names = ("grad input", "grad weight", "grad bias", "grad scale", "grad residual")
    reductions = (9 * k // groups, n * p * q, n * p * q, n * p * q * reduction, 1)
    for name, t, t64, length in zip(names, operands, ref_operands, reductions, strict=True):
        _check(t.grad, t64.grad, length, precision, name)


def test_scale_without_bias_and_no_grad_inputs(triton_backend):
    """The bias-less scaled epilogue, and a forward whose inputs need no gradient."""
    x, weight, _, scale, residual = (
        t.detach() for t in _operands(16, 24, 1, 1, False, torch.float32)
    )
    y = fused_conv2d(x, weight, None, 1, 1, activation="silu", scale=scale, residual=residual)
    z64 = F.conv2d(x.double(), weight.double(), None, 1, 1) * scale.double().view(1, -1, 1, 1)
    _check(y, F.silu(z64 + residual.double()), 144, torch.float32, "output")
    assert y.grad_fn is None


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_backward_saves_output_or_preact_as_documented(triton_backend, activation):
    """The forward saves y when the derivative follows from y, z (not y) otherwise."""
    x, weight, bias, _, _ = _operands(16, 24, 1, 1, False, torch.float32)
    y = fused_conv2d(x, weight, bias, 1, 1, activation=activation, negative_slope=0.1)
    saved = y.grad_fn.saved_tensors[-1]
    kind = saved_for_backward(activation, 0.1)
    if kind == "output":
        assert saved.data_ptr() == y.data_ptr()
    else:
        z = F.conv2d(x.detach(), weight.detach(), bias.detach(), 1, 1)
        torch.testing.assert_close(saved.float(), z, atol=1e-5, rtol=1e-5)
    assert (kind == "preact") == (activation in ("silu", "hardswish", "gelu", "gelu_tanh"))


SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 6.0, -3.0, 3.0, 1e-3, -20.0, 20.0]


@pytest.mark.parametrize(
    ("activation", "slope"),
    [(activation, 0.01) for activation in ACTIVATIONS[1:]] + [("leaky_relu", -0.5)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_activation_backward_on_special_values(activation, slope, dtype):
    """grad_z from the saved y or z equals torch autograd's, NaN and inf included, with a
    grad_y in another layout than the saved tensor (an expanded gradient is copied)."""
    torch.manual_seed(0)
    z = torch.cat([torch.tensor(SPECIAL), torch.randn(2 * 3 * 4 * 5 - len(SPECIAL)) * 4])
    z = z.view(2, 3, 4, 5).to(dtype)
    z64 = z.double().requires_grad_()
    y64 = reference_activation(z64, activation, slope)
    grad_y = torch.randn(1, 3, 1, 5, dtype=dtype).expand(2, 3, 4, 5)
    y64.backward(grad_y.double())
    saved = y64.detach() if saved_for_backward(activation, slope) == "output" else z64.detach()
    saved = saved.to(dtype).contiguous(memory_format=torch.channels_last).to(DEVICE)
    grad_z = activation_bwd(grad_y.to(DEVICE), saved, activation, slope)
    assert grad_z.is_contiguous(memory_format=torch.channels_last)
    expected = z64.grad
    if activation == "hardswish":  # at NaN torch's CPU kernels disagree (vectorized: NaN,
        # scalar: grad); fastconv follows its CUDA kernel, which passes the gradient
        expected = torch.where(z64.isnan(), grad_y.double(), expected)
    if dtype == torch.float16:  # y rounded to fp16 moves the derivative by about one ulp
        expected = expected.to(dtype).double()
    torch.testing.assert_close(
        grad_z.cpu().double(), expected, atol=2e-3 if dtype == torch.float16 else 1e-6,
        rtol=2e-3 if dtype == torch.float16 else 1e-5, equal_nan=True,
    )  # fmt: skip


HEAVY = dict(activation="gelu", save_preact=True)


def _heavy_case(c, k, groups, channels_last, dtype):
    """(x, weight, bias, epilogue, expected y, expected z) with every epilogue operand."""
    x, weight, bias, scale, residual = (
        t.detach() for t in _operands(c, k, groups, 1, channels_last, dtype, seed=5)
    )
    epilogue = Epilogue(scale=scale, residual=residual, **HEAVY)
    z64 = F.conv2d(x.double(), weight.double(), None, 1, 1, 1, groups)
    z64 = z64 * scale.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
    z64 = z64 + residual.double()
    return x, weight, bias, epilogue, F.gelu(z64), z64


def _check_heavy(result, y64, z64, reduction, dtype):
    y, z = result
    _check(y, y64, reduction, dtype, "output")
    _check(z, z64, reduction, dtype, "pre-activation")


def _gpu_config_cases():
    cases = []
    for config in ck.conv_configs("fp16", interpreter=False):
        cases.append(pytest.param("gemm", config, id=f"gemm-{config.kwargs}"))
    for config in tma_configs("fp16", interpreter=False):
        cases.append(pytest.param("tma", config, id=f"tma-{config.kwargs}"))
    for config in stem_configs("fp16", interpreter=False):
        cases.append(pytest.param("stem", config, id=f"stem-{config.kwargs}"))
    for config in dw.depthwise_configs("direct", "fp16", interpreter=False):
        cases.append(pytest.param("depthwise", config, id=f"depthwise-{config.kwargs}"))
    return cases


@pytest.mark.parametrize(("kernel", "config"), _gpu_config_cases())
def test_every_forward_config_with_the_heaviest_epilogue(kernel, config):
    """Each GPU config of each forward kernel once, fp16, with scale, bias, residual, erf
    GELU and the stored pre-activation (outputs start as NaN: an unwritten tile fails)."""
    dtype = torch.float16
    geometry = ((1, 1), (1, 1), (1, 1), (7, 6))
    if kernel == "gemm":  # channels 1.5 x the tile on both GEMM axes
        block_n, block_k = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
        c, k = max(9, block_k + block_k // 2), block_n + block_n // 2
        x, w, b, epilogue, y64, z64 = _heavy_case(c, k, 1, False, dtype)
        result = ck.conv2d_fwd(x, w, b, *geometry, epilogue, config=config)
    elif kernel == "tma":
        x, w, b, epilogue, y64, z64 = _heavy_case(24, 70, 1, True, dtype)
        result = conv2d_fwd_tma(x, w, b, *geometry, epilogue, config)
    elif kernel == "stem":
        k = config.kwargs["BLOCK_N"] + 8
        x, w, b, epilogue, y64, z64 = _heavy_case(3, k, 1, False, dtype)
        result = conv2d_stem_fwd(x, w, b, *geometry, epilogue, config)
    else:  # channel multiplier 2, output channels 1.5 x the channel tile
        c = 3 * config.kwargs["BLOCK_C"] // 4
        x, w, b, epilogue, y64, z64 = _heavy_case(c, 2 * c, c, True, dtype)
        result = dw.depthwise_fwd(x, w, b, *geometry, epilogue, config)
    _check_heavy(result, y64, z64, 9 * w.shape[1], dtype)


def test_conv2d_act_layer_with_residual(triton_backend):
    conv = torch.nn.Conv2d(16, 16, 3, padding=1).to(DEVICE)
    layer = layers.Conv2dAct.from_torch(conv, activation="hardswish")
    x = torch.randn(2, 16, 5, 5, device=DEVICE)
    skip = torch.randn(2, 16, 5, 5, device=DEVICE)
    expected = F.hardswish(conv(x) + skip)
    torch.testing.assert_close(layer(x, skip), expected, atol=1e-4, rtol=1e-4)
    assert "activation=hardswish" in repr(layer)
    assert list(layer.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(activation="swish"), ValueError, "activation must be one of"),
        (dict(activation="leaky_relu", negative_slope=float("nan")), ValueError, "negative_slope"),
        (dict(scale=torch.ones(5)), ValueError, r"scale of shape \(5,\) does not match the 4"),
        (dict(scale=torch.ones(4, dtype=torch.float64)), TypeError, "scale has dtype"),
        (dict(residual=torch.ones(2, 4, 3, 3)), ValueError, r"residual of shape \(2, 4, 3, 3\)"),
    ],
)
def test_epilogue_argument_errors(torch_backend, kwargs, error, match):
    x, weight = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    with pytest.raises(error, match=match):
        fused_conv2d(x, weight, None, 1, 1, **kwargs)


def test_large_tiles_are_pruned_for_a_residual_or_stored_preactivation():
    """128x128 accumulators spill once the epilogue holds a second tile (compile gate);
    the pruners then keep tiles of at most 64x128, and all tiles otherwise."""
    from fastconv.kernels import conv2d_tma
    from fastconv.kernels.epilogue import MAX_TILE_WITH_SECOND_OPERAND

    gemm = ck.conv_configs("fp16", interpreter=False)
    tma = tma_configs("fp16", interpreter=False)
    gemm_args = {"COUT": 256}
    tma_args = {"COUT": 256, "ROWS_H": 56, "ROWS_W": 56, "CIN": 64}
    assert ck._prune_configs(gemm, gemm_args, HAS_RESIDUAL=False, SAVE_PREACT=False) == gemm
    for flag in ("HAS_RESIDUAL", "SAVE_PREACT"):
        kept = ck._prune_configs(gemm, gemm_args, **{flag: True})
        sizes = [c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in kept]
        assert kept and len(kept) < len(gemm) and max(sizes) <= MAX_TILE_WITH_SECOND_OPERAND
        kept = conv2d_tma._prune_configs(tma, tma_args, **{flag: True})
        sizes = [c.kwargs["BP"] * c.kwargs["BQ"] * c.kwargs["BLOCK_N"] for c in kept]
        assert kept and max(sizes) <= MAX_TILE_WITH_SECOND_OPERAND
    full = conv2d_tma._prune_configs(tma, tma_args)
    assert max(c.kwargs["BP"] * c.kwargs["BQ"] * c.kwargs["BLOCK_N"] for c in full) > 8192
