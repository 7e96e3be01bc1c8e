"""Reflect, replicate and circular padding: the Triton kernels (kernels/pad2d.py), the
autograd op (fastconv.padding.pad2d) and the convolution layers' ``padding_mode``.

References are ``torch.nn.functional.pad`` in float64 (forward: an exact copy; backward:
torch's autograd of F.pad). Shapes are odd and tiny, with pads of 0-3 mixed per side so that
the interpreter's 8-column blocks include interior blocks, border blocks and both borders in
one block; reflect and circular pads near the dimension's size make one pixel feed both
borders. Every GPU autotune config runs through ``config=`` on a shape with a partial and a
full block on both tile axes. Outputs start as NaN (tests/conftest.py poisons allocations).
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from torch import nn

from fastconv import layers
from fastconv.kernels import pad2d as pad_kernels
from fastconv.padding import pad2d

MODES = ("reflect", "replicate", "circular")
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# (dtype, atol, rtol) of the backward (sums of up to 9 values, or a replicate strip, in fp32)
DTYPES = {"fp32": (torch.float32, 1e-6, 1e-6), "fp16": (torch.float16, 1e-3, 1e-3)}

# (N, C, H, W), (left, right, top, bottom)
CASES = [
    ((2, 3, 5, 7), (1, 2, 0, 3)),  # odd sizes, a zero pad, pad near H
    ((1, 16, 4, 19), (3, 0, 2, 1)),  # interior column blocks, vector channels
    ((1, 5, 3, 3), (2, 2, 2, 2)),  # one pixel feeds both borders (reflect: all pads < 3)
    ((2, 9, 1, 20), (3, 3, 0, 0)),  # one row: replicate/circular rows untouched
    ((1, 1, 2, 17), (2, 1, 1, 2)),  # one channel: read along W whatever the layout
]


def _valid(mode: str, shape, pads) -> bool:
    """Whether torch's F.pad accepts ``pads`` in ``mode`` for ``shape``."""
    h, w = shape[2:]
    if mode == "reflect":
        return max(pads[:2]) < w and max(pads[2:]) < h
    if mode == "circular":
        return max(pads[:2]) <= w and max(pads[2:]) <= h
    return True


def kernel_cases():
    """Every valid (mode, case) in fp32, both layouts; fp16 (the cast on store) on the first
    two cases."""
    return [
        pytest.param(
            mode, shape, pads, layout, dtype,
            id=f"{mode}-{'x'.join(map(str, shape))}-{pads}-{layout}-{dtype}",
        )
        for mode in MODES
        for index, (shape, pads) in enumerate(CASES)
        if _valid(mode, shape, pads)
        for layout in LAYOUTS
        for dtype in DTYPES
        if dtype == "fp32" or index < 2
    ]  # fmt: skip


def check_pad(mode, shape, pads, x_format, grad_format, dtype, atol, rtol, config=None):
    """Forward and backward kernels against float64 F.pad and its autograd."""
    x = torch.randn(shape, device=DEVICE).to(dtype).contiguous(memory_format=x_format)
    y = pad_kernels.pad2d_fwd(x, pads, mode, config)
    x_ref = x.double().requires_grad_()
    y_ref = F.pad(x_ref, pads, mode=mode)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
    torch.testing.assert_close(y.double(), y_ref.detach(), atol=0, rtol=0)  # a copy

    grad_y = torch.randn(y_ref.shape, device=DEVICE).to(dtype)
    y_ref.backward(grad_y.double())
    grad_x = pad_kernels.pad2d_bwd(
        grad_y.contiguous(memory_format=grad_format), shape, pads, mode, x_format, config
    )
    assert grad_x.is_contiguous(memory_format=x_format) and grad_x.dtype == dtype
    torch.testing.assert_close(grad_x.double(), x_ref.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize(("mode", "shape", "pads", "layout", "dtype"), kernel_cases())
def test_kernels_match_torch(mode, shape, pads, layout, dtype):
    torch.manual_seed(0)
    fmt = LAYOUTS[layout]
    check_pad(mode, shape, pads, fmt, fmt, *DTYPES[dtype])


def config_cases():
    return [
        pytest.param(
            mode, config, id=f"{mode}-{config.kwargs['BLOCK_W']}x{config.kwargs['BLOCK_C']}"
        )
        for config in pad_kernels.pad2d_configs(interpreter=False)
        for mode in MODES
    ]


# Layouts of x and grad_y per mode, so that each config reads both along W (NCHW) and along
# the channels (channels_last), forward and backward.
CONFIG_LAYOUTS = {
    "reflect": (torch.contiguous_format, torch.channels_last),
    "replicate": (torch.channels_last, torch.contiguous_format),
    "circular": (torch.contiguous_format, torch.contiguous_format),
}


@pytest.mark.parametrize(("mode", "config"), config_cases())
def test_every_config_matches_torch(mode, config):
    """Each GPU config: W = 2.5 blocks (interior, partial and border blocks), C = 1.5
    channel tiles, fp16."""
    torch.manual_seed(1)
    block_w, block_c = config.kwargs["BLOCK_W"], config.kwargs["BLOCK_C"]
    shape = (1, block_c + block_c // 2, 3, 2 * block_w + block_w // 2)
    pads = (3, 1, 2, 2)
    check_pad(mode, shape, pads, *CONFIG_LAYOUTS[mode], *DTYPES["fp16"], config)


def test_strided_input_and_gradient():
    """Views that are neither NCHW nor channels_last (a slice of each) read as they are."""
    torch.manual_seed(2)
    base = torch.randn(2, 6, 5, 9, device=DEVICE)
    x = base[:, 1:5, :, ::2]  # (2, 4, 5, 5), W stride 2
    pads = (2, 1, 1, 3)
    y = pad_kernels.pad2d_fwd(x, pads, "reflect")
    torch.testing.assert_close(y, F.pad(x, pads, mode="reflect"), atol=0, rtol=0)
    x_ref = x.double().requires_grad_()
    y_ref = F.pad(x_ref, pads, mode="reflect")
    grad_y = torch.randn(2, 8, 9, 8, device=DEVICE).contiguous(memory_format=torch.channels_last)
    grad_y = grad_y[:, ::2]  # channel stride 2
    y_ref.backward(grad_y.double())
    grad_x = pad_kernels.pad2d_bwd(grad_y, x.shape, pads, "reflect")
    torch.testing.assert_close(grad_x.double(), x_ref.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_pad2d_autograd(mode, triton_backend):
    """The op on the Triton backend: F.pad's values and gradient, 4-D and 3-D input."""
    torch.manual_seed(3)
    for shape in ((2, 3, 4, 5), (3, 4, 5)):
        x = torch.randn(shape, device=DEVICE, requires_grad=True)
        x_ref = x.detach().double().requires_grad_()
        y = pad2d(x, (2, 1, 0, 3), mode)
        y_ref = F.pad(x_ref, (2, 1, 0, 3), mode=mode)
        torch.testing.assert_close(y.double(), y_ref, atol=0, rtol=0)
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
        y_ref.backward(grad_y.double())
        torch.testing.assert_close(x.grad.double(), x_ref.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x: pad2d(x, (1, 1, 1, 1), "zeros"), ValueError, r"mode must be one of .*'zeros'"),
        (lambda x: pad2d(x, (1, 1, 1), "reflect"), TypeError, r"padding must be 4 ints"),
        (lambda x: pad2d(x, (1, -1, 0, 0), "replicate"), ValueError, r"non-negative.*-1"),
        (
            lambda x: pad2d(x, (0, 0, 3, 0), "reflect"),
            ValueError,
            r"reflect padding must be less than the input height 3.*\(1, 2, 3, 4\)",
        ),
        (
            lambda x: pad2d(x, (5, 0, 0, 0), "circular"),
            ValueError,
            r"circular padding must be at most the input width 4.*\(1, 2, 3, 4\)",
        ),
        (lambda x: pad2d(x[0, 0], (1, 1, 1, 1), "reflect"), ValueError, r"3-D or 4-D, got 2-D"),
        (lambda x: pad2d(x[:, :0], (1, 1, 1, 1), "reflect"), ValueError, r"empty channel"),
    ],
    ids=["mode", "length", "negative", "reflect-too-large", "circular-too-large", "2d", "empty"],
)
def test_pad2d_errors(call, error, message, triton_backend):
    with pytest.raises(error, match=message):
        call(torch.randn(1, 2, 3, 4, device=DEVICE))


# --------------------------------------------------------------------------- layers

FORBIDDEN_PAD_FRAGMENTS = ("pad",)  # reflection_pad2d, replication_pad2d, constant_pad_nd


def _layer_cases():
    """(class, mode, layout, padding, extra forward args) tuples: every mode in both
    layouts, "same" (asymmetric for even kernels), and the fused classes."""
    cases = [(layers.Conv2d, mode, layout, (2, 1), False) for mode in MODES for layout in LAYOUTS]
    cases += [
        (layers.Conv2dReLU, "reflect", "nchw", "same", False),
        (layers.Conv2dAct, "circular", "channels_last", 1, True),
    ]
    return [
        pytest.param(*case, id=f"{case[0].__name__}-{case[1]}-{case[2]}-{case[3]}")
        for case in cases
    ]


@pytest.mark.parametrize(("cls", "mode", "layout", "padding", "residual"), _layer_cases())
def test_layer_padding_mode_matches_torch(
    cls, mode, layout, padding, residual, triton_backend, record_aten_ops
):
    """fastconv's layer against ``nn.Conv2d`` (float64) with the same weights: output, input,
    weight, bias (and residual) gradients; no aten convolution or pad op runs."""
    torch.manual_seed(4)
    kernel_size = (3, 2) if padding == "same" else 3
    reference = nn.Conv2d(4, 5, kernel_size, padding=padding, padding_mode=mode)
    reference = reference.to(DEVICE, torch.float64)
    layer = cls(4, 5, kernel_size, padding=padding, padding_mode=mode).to(DEVICE)
    with torch.no_grad():
        layer.weight.copy_(reference.weight)
        layer.bias.copy_(reference.bias)
    fmt = LAYOUTS[layout]
    x = torch.randn(2, 4, 6, 5, device=DEVICE).contiguous(memory_format=fmt).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    out_shape = reference(x_ref).shape
    skip = torch.randn(out_shape, device=DEVICE, requires_grad=True) if residual else None
    with record_aten_ops() as recorder:
        y = layer(x, skip) if residual else layer(x)
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
    assert recorder.forbidden() == []
    assert not [op for op in recorder.ops if any(f in op for f in FORBIDDEN_PAD_FRAGMENTS)]

    skip_ref = skip.detach().double().requires_grad_() if residual else None
    y_ref = reference(x_ref)
    if residual:
        y_ref = y_ref + skip_ref
    if cls is not layers.Conv2d:
        y_ref = torch.relu(y_ref)
    y_ref.backward(grad_y.double())
    assert y.is_contiguous(memory_format=fmt)
    tol = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(y.double(), y_ref, **tol)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, **tol)
    torch.testing.assert_close(layer.weight.grad.double(), reference.weight.grad, **tol)
    torch.testing.assert_close(layer.bias.grad.double(), reference.bias.grad, **tol)
    if residual:
        torch.testing.assert_close(skip.grad.double(), skip_ref.grad, **tol)


@pytest.mark.parametrize("mode", MODES)
def test_from_torch_keeps_padding_mode(mode, torch_backend):
    """``from_torch`` carries ``padding_mode`` over; unbatched input pads like nn.Conv2d."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)
    layer = layers.Conv2dReLU.from_torch(conv)
    assert layer.padding_mode == mode
    x = torch.randn(3, 5, 6)
    torch.testing.assert_close(layer(x), torch.relu(conv(x)))


def test_unknown_padding_mode_is_refused():
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode='mirror' is not supported"):
        layers.Conv2d(3, 4, 3, padding_mode="mirror")
