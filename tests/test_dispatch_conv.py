"""Which convolution kernel runs: every shape decision of the conv launchers on both sides.

The launchers (kernels/conv2d.py and the modules it dispatches to) pick a kernel, and how the
operands are laid out for it, from the shapes: depthwise or implicit GEMM
(``conv2d_depthwise.is_depthwise``), the few-channel stem forward (``conv2d_stem``), TMA or
cp.async loads (``conv2d_tma.tma_applies`` and its channel padding), the channels-last copies
(``layout.nhwc`` / ``nhwc_output``) and wgrad's per-group channel padding
(``conv2d_wgrad._nhwc``). Each test runs the smallest shape just below and just above one
boundary (and on it where ``<=`` against ``<`` matters) through ``fused_conv2d`` with
``tests/parity.py``, which checks the output and every gradient against float64 torch, and
proves the side taken from the launched kernels' names, constexprs or the padded copies.
What depends on the device (sm_90) or on sizes no CPU can hold (TMA's int32 coordinates) is
decided by the launchers' own functions, which are called here with stand-ins: a capability
patched in, meta tensors.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from parity import conv_parity, kernel_names

from fastconv import backend
from fastconv.kernels import conv2d as ck
from fastconv.kernels import conv2d_tma as tk
from fastconv.kernels import conv2d_wgrad as wk
from fastconv.kernels import layout
from fastconv.profiling import record_launches

GEMM = "_implicit_gemm_kernel"
TMA = "_tma_implicit_gemm_kernel"
STEM = "_conv2d_stem_fwd_kernel"
WGRAD = "_conv2d_bwd_weight_kernel"
RELU_BWD = "_activation_bwd_kernel"
DEPTHWISE = ["_depthwise_fwd_kernel", "_depthwise_dgrad_kernel", "_depthwise_wgrad_kernel"]

# A TMA side runs on sm_90 or in the interpreter; fp32 takes TMA only with tf32 allowed, which
# the interpreter computes as exact fp32 (a GPU's tf32 is outside parity's fp32 tolerance).
_CUDA = torch.cuda.is_available()
needs_tma_device = pytest.mark.skipif(
    _CUDA and torch.cuda.get_device_capability()[0] < 9, reason="the TMA side needs sm_90"
)
exact_tf32 = pytest.mark.skipif(
    _CUDA, reason="a GPU's tf32 rounds past parity's fp32 tolerance; the interpreter's is exact"
)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal tensor on the test device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE, dtype)


def conv_case(c, k, c_per_group=None, r=3, dtype=torch.float32, h=3, w=3):
    """(x (1, c, h, w), weight (k, c_per_group, r, r), bias (k,)) of ``dtype``."""
    c_per_group = c if c_per_group is None else c_per_group
    return (
        randn(1, c, h, w, dtype=dtype, seed=1),
        randn(k, c_per_group, r, r, dtype=dtype, seed=2),
        randn(k, dtype=dtype, seed=3),
    )


# --------------------------------------------------------------------------- depthwise


@pytest.mark.parametrize(
    ("c", "k", "groups", "expected"),
    [
        pytest.param(2, 8, 2, DEPTHWISE, id="C2-multiplier4-depthwise"),
        pytest.param(2, 10, 2, [GEMM, GEMM, WGRAD], id="C2-multiplier5-grouped-gemm"),
        pytest.param(4, 4, 4, DEPTHWISE, id="groups=C-depthwise"),
        pytest.param(4, 4, 2, [GEMM, GEMM, WGRAD], id="C4-groups=C/2-grouped-gemm"),
        pytest.param(1, 2, 1, [STEM, GEMM, WGRAD], id="C1-groups1-not-depthwise"),
    ],
)
def test_depthwise_dispatch(c, k, groups, expected):
    """is_depthwise: groups == C_in > 1 and multiplier K/C_in <= MAX_MULTIPLIER (4) take the
    depthwise kernels; multiplier 5, groups C/2 (also the stem's groups > 1 side: C = 4 runs
    the GEMM forward) and C_in = 1 the GEMMs."""
    x, weight, bias = conv_case(c, k, c // groups, h=4, w=4)
    launches = conv_parity(x, weight, bias, padding=1, groups=groups)
    assert kernel_names(launches) == expected
    if expected == DEPTHWISE:  # the multiplier each kernel was built for
        assert [launch.meta["MULT"] for launch in launches] == [k // c] * 3


# --------------------------------------------------------------------------- stem


@pytest.mark.parametrize(
    ("c", "forward", "stem_channels"),
    [
        pytest.param(4, STEM, 4, id="C4-stem-CP4"),
        pytest.param(5, STEM, 8, id="C5-stem-CP8"),
        pytest.param(8, STEM, 8, id="C8-stem-CP8"),
        pytest.param(9, GEMM, None, id="C9-gemm"),
    ],
)
def test_stem_dispatch(c, forward, stem_channels):
    """uses_stem_path: C <= 8 runs the stem forward, C = 9 the GEMM; stem_channels: x_pad has
    CP = 4 channels for C <= 4, else 8 (the launch's CP constexpr)."""
    x, weight, bias = conv_case(c, 4)
    launches = conv_parity(x, weight, bias, padding=1)
    assert kernel_names(launches) == [forward, GEMM, WGRAD]
    assert launches[0].meta.get("CP") == stem_channels


# --------------------------------------------------------------------------- TMA or cp.async


@pytest.mark.parametrize(
    ("dtype", "allow_tf32", "c", "k", "stride", "groups", "expected"),
    [
        pytest.param(torch.float16, False, 16, 8, 1, 1, [TMA, TMA, WGRAD],
                     marks=needs_tma_device, id="fp16-x32B-grad16B-rows-tma"),
        pytest.param(torch.float16, False, 12, 12, 1, 1, [GEMM, GEMM, WGRAD],
                     id="fp16-24B-rows-gemm"),
        pytest.param(torch.float32, True, 12, 4, 1, 1, [TMA, TMA, WGRAD],
                     marks=[needs_tma_device, exact_tf32], id="tf32-x48B-grad16B-rows-tma"),
        pytest.param(torch.float32, True, 10, 6, 1, 1, [GEMM, GEMM, WGRAD],
                     marks=exact_tf32, id="tf32-x40B-grad24B-rows-gemm"),
        pytest.param(torch.float32, False, 12, 4, 1, 1, [GEMM, GEMM, WGRAD],
                     id="ieee-fp32-gemm"),
        pytest.param(torch.float16, False, 16, 8, (2, 2), 1, [GEMM, TMA, WGRAD],
                     marks=needs_tma_device, id="stride2x2-dgrad-only"),
        pytest.param(torch.float16, False, 16, 8, (1, 2), 1, [GEMM, TMA, WGRAD],
                     marks=needs_tma_device, id="stride1x2-dgrad-only"),
        pytest.param(torch.float16, False, 16, 8, (2, 1), 1, [GEMM, TMA, WGRAD],
                     marks=needs_tma_device, id="stride2x1-dgrad-only"),
        pytest.param(torch.float16, False, 16, 8, 1, 2, [GEMM, GEMM, WGRAD],
                     id="groups2-gemm"),
    ],
)  # fmt: skip
def test_tma_dispatch(monkeypatch, dtype, allow_tf32, c, k, stride, groups, expected):
    """tma_applies (groups 1 only): fp16, or fp32 with tf32 allowed; the a-operand's channel
    rows (x forward, grad_y dgrad) a multiple of 16 bytes; stride 1 for the forward only."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    x, weight, bias = conv_case(c, k, c // groups, dtype=dtype, h=4, w=4)
    launches = conv_parity(x, weight, bias, stride=stride, padding=1, groups=groups)
    assert kernel_names(launches) == expected


@pytest.mark.parametrize(
    ("storage_channels", "first_channel", "forward"),
    [
        pytest.param(24, 8, TMA, marks=needs_tma_device, id="base+16B-tma"),
        pytest.param(24, 4, GEMM, id="base+8B-gemm"),
        pytest.param(20, 0, GEMM, id="pixel-stride-40B-gemm"),
    ],
)
def test_tma_needs_aligned_channels_last_view(storage_channels, first_channel, forward):
    """A channels-last x is read in place: TMA needs its base 16-byte aligned and its pixel
    stride a multiple of 16 bytes (16 fp16 channels of a wider channels_last tensor)."""
    storage = randn(1, storage_channels, 3, 3, dtype=torch.float16, seed=1)
    storage = storage.contiguous(memory_format=torch.channels_last)
    assert storage.data_ptr() % 16 == 0
    x = storage[:, first_channel : first_channel + 16]
    _, weight, bias = conv_case(16, 8, dtype=torch.float16)
    launches = conv_parity(x, weight, bias, padding=1)
    assert kernel_names(launches) == [forward, TMA, WGRAD]


@pytest.mark.parametrize(
    ("channels", "weight_offset", "forward", "dgrad"),
    [
        pytest.param(16, 0, TMA, TMA, marks=needs_tma_device, id="C16-32B-rows-tma"),
        pytest.param(12, 0, GEMM, GEMM, id="C12-24B-rows-gemm"),  # x's rows: GEMM forward
        pytest.param(16, 8, TMA, TMA, marks=needs_tma_device, id="base+16B-tma"),
        pytest.param(16, 4, GEMM, GEMM, id="base+8B-gemm"),
    ],
)
def test_tma_reads_the_weight_in_place(channels, weight_offset, forward, dgrad):
    """conv2d_tma._weight_ok: TMA reads the channels-last weight (K, C, R, S) as it is, as a
    (K, R*S, C) tensor, so both directions need C rows of 16-byte multiples (the input
    gradient's own condition: the forward's x has the same C) and a 16-byte-aligned base (a
    weight at another offset of its storage takes the GEMM)."""
    k, r = 16, 3
    storage = randn(k * channels * r * r + weight_offset, dtype=torch.float16, seed=2)
    weight = storage[weight_offset:].view(k, r, r, channels).permute(0, 3, 1, 2)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    x, _, bias = conv_case(channels, k, dtype=torch.float16)
    launches = conv_parity(x, weight, bias, padding=1)
    assert kernel_names(launches) == [forward, dgrad, WGRAD]


@needs_tma_device
def test_tma_refuses_an_expanded_batch():
    """A channels-last x expanded along the batch (stride 0) is read in place by the GEMM:
    TMA needs positive strides (a dense batch: the base+16B case above takes TMA)."""
    x = randn(1, 16, 3, 3, dtype=torch.float16, seed=1)
    x = x.contiguous(memory_format=torch.channels_last).expand(2, -1, -1, -1)
    _, weight, bias = conv_case(16, 8, dtype=torch.float16)
    assert kernel_names(conv_parity(x, weight, bias, padding=1)) == [GEMM, TMA, WGRAD]


def test_pre_sm90_device_takes_cp_async(monkeypatch):
    """_tma_device False (a GPU before sm_90) on the shape of test_tma_dispatch's TMA case:
    the cp.async GEMM runs and gives the same float64-checked result."""
    monkeypatch.setattr(tk, "_tma_device", lambda tensor: False)
    x, weight, bias = conv_case(16, 8, dtype=torch.float16, h=4, w=4)
    assert kernel_names(conv_parity(x, weight, bias, padding=1)) == [GEMM, GEMM, WGRAD]


@pytest.mark.parametrize(
    ("capability", "tma"),
    [pytest.param((8, 9), False, id="sm89-no-tma"), pytest.param((9, 0), True, id="sm90-tma")],
)
def test_tma_device_needs_sm90(monkeypatch, capability, tma):
    """_tma_device: a CUDA device of capability 8.9 has no TMA, 9.0 has it."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert tk._tma_device(SimpleNamespace(device=torch.device("cuda", 0))) is tma


def test_tma_device_off_cuda_is_the_interpreter():
    """_tma_device: a CPU tensor takes TMA exactly under the interpreter; a meta one never."""
    assert tk._tma_device(torch.empty(1)) is backend.TRITON_INTERPRETER
    assert tk._tma_device(torch.empty(1, device="meta")) is False


# tma_applies' bound on box coordinates, pinned here: moving it must fail a test.
COORD_LIMIT = 2**31 - 2**20


@pytest.mark.parametrize("axis", [2, 3], ids=["h", "w"])
@pytest.mark.parametrize(
    ("reach", "applies"),
    [
        pytest.param(COORD_LIMIT - 1, True, id="below-limit-tma"),
        pytest.param(COORD_LIMIT, False, id="on-limit-no-tma"),
    ],
)
def test_tma_coordinate_limit(monkeypatch, axis, reach, applies):
    """tma_applies: the farthest box coordinate along h or w, size + padding + dilation*R +
    (stride + 1)*256, must stay below 2**31 - 2**20 (meta tensors, a TMA device assumed)."""
    monkeypatch.setattr(tk, "_tma_device", lambda tensor: True)
    shape = [1, 16, 1, 1]
    shape[axis] = reach - 1 - 3 - 2 * 256  # padding 1, 3x3, stride 1
    x = torch.empty(shape, device="meta", dtype=torch.float16)
    weight = torch.empty(8, 16, 3, 3, device="meta", dtype=torch.float16)
    assert tk.tma_applies(x, weight, (1, 1), (1, 1), (1, 1), transposed=False) is applies


# tma_applies' bound on a byte stride of a channels-last a (cuTensorMapEncodeTiled), pinned.
STRIDE_BYTES_LIMIT = 2**40


@pytest.mark.parametrize(
    ("batch_stride_bytes", "applies"),
    [
        pytest.param(STRIDE_BYTES_LIMIT - 16, True, id="below-limit-tma"),
        pytest.param(STRIDE_BYTES_LIMIT, False, id="on-limit-no-tma"),
    ],
)
def test_tma_stride_bytes_limit(monkeypatch, batch_stride_bytes, applies):
    """tma_applies: every stride of a channels-last a must stay below 2**40 bytes (a meta
    tensor with that batch stride, a TMA device assumed)."""
    monkeypatch.setattr(tk, "_tma_device", lambda tensor: True)
    x = torch.empty(2, 16, 1, 1, device="meta", dtype=torch.float16)
    x = x.as_strided(x.shape, (batch_stride_bytes // 2, 1, 16, 16))
    weight = torch.empty(8, 16, 3, 3, device="meta", dtype=torch.float16)
    assert tk.tma_applies(x, weight, (1, 1), (1, 1), (1, 1), transposed=False) is applies


@pytest.mark.parametrize(
    ("cin", "cpad"), [(16, 16), (17, 32), (32, 32), (33, 64), (64, 64), (65, 128)]
)
def test_tma_channel_pad(cin, cpad):
    """_channel_pad: CIN rounded up to 16, 32 or a multiple of 64."""
    assert tk._channel_pad(cin) == cpad


@pytest.mark.parametrize(
    ("kind", "cpad", "block_k"),
    [("fp16", 16, 16), ("fp16", 32, 32), ("fp16", 64, 64), ("fp16", 128, 64),
     ("tf32", 16, 16), ("tf32", 32, 32), ("tf32", 64, 32)],
)  # fmt: skip
def test_tma_block_k_fits_channel_pad(kind, cpad, block_k):
    """_fit_block_k on every GPU config: BLOCK_K shrinks to CPAD below it, the config is
    kept as it is from BLOCK_K = CPAD on."""
    for config in tk.tma_configs(kind, interpreter=False):
        fitted = tk._fit_block_k(config, cpad)
        assert fitted.kwargs == {**config.kwargs, "BLOCK_K": block_k}
        assert (fitted is config) == (config.kwargs["BLOCK_K"] == block_k)
        assert (fitted.num_warps, fitted.num_stages) == (config.num_warps, config.num_stages)
        assert fitted.pre_hook is tk._set_block_shapes


@pytest.mark.parametrize(
    ("channels", "cpad"),
    [
        pytest.param(16, 16, id="C16-CPAD16"),
        pytest.param(24, 32, id="C24-CPAD32"),
        pytest.param(32, 32, id="C32-CPAD32"),
        pytest.param(40, 64, id="C40-CPAD64"),
    ],
)
@needs_tma_device
def test_tma_channel_pad_end_to_end(channels, cpad):
    """A GPU config of BLOCK_K 64 runs with BLOCK_K = min(64, CPAD), forward and input
    gradient, on each side of 16 and 32 channels (the nearest fp16 counts with 16-byte rows:
    17 and 33 take cp.async), and both match float64 torch."""
    config = next(c for c in tk.tma_configs("fp16", interpreter=False) if c.kwargs["BLOCK_K"] == 64)
    x, weight, _ = conv_case(channels, channels, dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    geometry = ((1, 1), (1, 1), (1, 1))
    with record_launches() as launches:
        y = tk.conv2d_fwd_tma(x, weight, None, *geometry, x.shape[2:], config=config)
        grad_x = tk.conv2d_bwd_input_tma(y, weight, x.shape, *geometry, config=config)
    assert [launch.meta["BLOCK_K"] for launch in launches] == [min(64, cpad)] * 2
    y_ref = F.conv2d(x.double(), weight.double(), padding=1)
    grad_x_ref = torch.nn.grad.conv2d_input(x.shape, weight.double(), y.double(), padding=1)
    reduction = channels * 9
    torch.testing.assert_close(y.double(), y_ref, atol=2e-5 * reduction**0.5, rtol=1e-3)
    torch.testing.assert_close(grad_x.double(), grad_x_ref, atol=2e-5 * reduction**0.5, rtol=1e-3)


# --------------------------------------------------------------------------- layout copies


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as it is."""
    return t


def channels_last_view(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as channels 1..C of a channels_last tensor of C + 2: channel stride 1,
    not dense (``.contiguous(memory_format=torch.channels_last)`` would copy it)."""
    n, c, h, w = t.shape
    storage = t.new_zeros(n, c + 2, h, w).contiguous(memory_format=torch.channels_last)
    storage[:, 1 : c + 1] = t
    return storage[:, 1 : c + 1]


def strided_view(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as every other column of a tensor twice as wide: no dense layout."""
    storage = t.new_zeros(*t.shape[:3], 2 * t.shape[3])
    storage[..., ::2] = t
    return storage[..., ::2]


@pytest.mark.parametrize(
    ("channels", "make", "copied"),
    [
        pytest.param(3, dense, True, id="nchw-copied"),
        pytest.param(3, channels_last_view, False, id="channels_last-view-as-is"),
        pytest.param(1, strided_view, False, id="one-channel-view-as-is"),
    ],
)
def test_nhwc_copies_only_without_unit_channel_stride(channels, make, copied):
    """layout.nhwc: a channel stride of 1 or a single channel is used as is, else copied."""
    t = make(torch.randn(1, channels, 2, 3))
    out = layout.nhwc(t)
    assert (out is not t) is copied
    assert torch.equal(out, t) and (out.stride(1) == 1 or channels == 1)


@pytest.mark.parametrize(
    ("memory_format", "direct"),
    [
        pytest.param(torch.channels_last, True, id="channels_last-direct"),
        pytest.param(torch.contiguous_format, False, id="nchw-through-buffer"),
    ],
)
def test_nhwc_output_writes_channels_last_results_directly(memory_format, direct):
    """layout.nhwc_output: a channels_last result is the kernel's buffer, an NCHW one not."""
    like = torch.empty(1, 3, 2, 2).contiguous(memory_format=memory_format)
    result, buffer = layout.nhwc_output((1, 5, 2, 2), like)
    assert (result is buffer) is direct
    assert result.is_contiguous(memory_format=memory_format)
    assert buffer.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("c", "k", "groups", "make_x", "make_weight", "used_as_is", "written_directly"),
    [
        pytest.param(9, 4, 1, dense, dense, [False, False, False], [False, False],
                     id="nchw"),
        pytest.param(9, 4, 1, channels_last_view, dense, [True, False, True], [True, True],
                     id="channels_last-view"),
        pytest.param(2, 10, 2, dense, strided_view, [False, True, False], [False, False],
                     id="one-channel-per-group-weight-view"),
    ],
)  # fmt: skip
def test_layout_copies_end_to_end(
    monkeypatch, c, k, groups, make_x, make_weight, used_as_is, written_directly
):
    """The GEMM's operands x, weight (forward) and grad_z (dgrad) are copied channels-last
    unless their channel stride is 1 or they have one channel (a grouped weight of one
    channel per group); y and grad_x are written in place when channels_last, else through a
    buffer copied back."""
    nhwc_calls, output_calls = [], []

    def recording_nhwc(t):
        out = nhwc(t)
        nhwc_calls.append(out is t)
        return out

    def recording_nhwc_output(shape, like):
        result, buffer = nhwc_output(shape, like)
        output_calls.append(result is buffer)
        return result, buffer

    nhwc, nhwc_output = ck.nhwc, ck.nhwc_output
    monkeypatch.setattr(ck, "nhwc", recording_nhwc)
    monkeypatch.setattr(ck, "nhwc_output", recording_nhwc_output)
    x, weight, bias = conv_case(c, k, c // groups)
    launches = conv_parity(
        make_x(x), make_weight(weight), bias, padding=1, groups=groups, activation="relu"
    )
    assert kernel_names(launches) == [GEMM, RELU_BWD, GEMM, WGRAD]
    assert nhwc_calls == used_as_is
    assert output_calls == written_directly


# --------------------------------------------------------------------------- wgrad padding


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize(
    ("per_group", "padded", "copied"), [(15, 16, True), (16, 16, False), (17, 32, True)]
)
def test_wgrad_pads_each_group_to_16_channels(groups, per_group, padded, copied):
    """conv2d_wgrad._nhwc: groups of a multiple of 16 channels used as is, others copied
    into zero-padded groups of the next multiple of 16."""
    t = torch.randn(1, groups * per_group, 2, 3).contiguous(memory_format=torch.channels_last)
    out = wk._nhwc(t, groups)
    assert (out is not t) is copied
    assert out.shape == (1, groups * padded, 2, 3) and out.stride(1) == 1
    out_groups = out.unflatten(1, (groups, padded))
    assert torch.equal(out_groups[:, :, :per_group], t.unflatten(1, (groups, per_group)))
    assert not out_groups[:, :, per_group:].any()


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize(("per_group", "padded"), [(15, 16), (16, 16), (17, 32)])
def test_wgrad_channel_padding_end_to_end(monkeypatch, groups, per_group, padded):
    """grad_w with C/groups = 15, 16, 17: x reaches the wgrad kernel in place at 16 channels
    a group, zero-padded to 16 or 32 otherwise."""
    x_copies = []

    def recording_nhwc(t, groups):
        out = wgrad_nhwc(t, groups)
        x_copies.append((out.shape[1], out.data_ptr() != t.data_ptr()))
        return out

    wgrad_nhwc = wk._nhwc
    monkeypatch.setattr(wk, "_nhwc", recording_nhwc)
    x, weight, bias = conv_case(groups * per_group, 2 * groups, per_group, r=1, h=2, w=2)
    x = x.contiguous(memory_format=torch.channels_last)
    launches = conv_parity(x, weight, bias, groups=groups)
    assert kernel_names(launches) == [GEMM, GEMM, WGRAD]
    _, x_copy = x_copies  # grad_y's, then x's
    assert x_copy == (groups * padded, padded != per_group)


# --------------------------------------------------------------------------- vector widths


@pytest.mark.parametrize(
    ("channels", "vec"),
    [
        pytest.param(6, 2, id="C6-vec2"),
        pytest.param(12, 4, id="C12-vec4"),
        pytest.param(8, 8, id="C8-vec8"),
        pytest.param(16, 16, id="C16-vec16"),
        pytest.param(32, 16, id="C32-vec-capped-16"),
    ],
)
def test_depthwise_vector_width(channels, vec):
    """conv2d_depthwise._vec: VEC is the largest power of 2, at most 16, dividing the channel
    count and every pixel stride; each side computes what torch does."""
    x, weight, bias = conv_case(channels, channels, c_per_group=1)
    x = x.contiguous(memory_format=torch.channels_last)
    launches = conv_parity(x, weight, bias, padding=1, groups=channels)
    assert kernel_names(launches) == DEPTHWISE
    assert [launch.meta["VEC"] for launch in launches] == [vec] * 3


# --------------------------------------------------------------------------- epilogue operands


@pytest.mark.parametrize(
    ("residual_format", "copied"),
    [
        pytest.param(torch.channels_last, False, id="same-format-read-as-is"),
        pytest.param(torch.contiguous_format, True, id="nchw-residual-copied-to-channels_last"),
    ],
)
def test_residual_is_read_in_the_output_layout(monkeypatch, residual_format, copied):
    """epilogue._like: a residual in the output's memory format is read as it is, any other
    copied to it once (one offset addresses both in the kernel)."""
    from fastconv.kernels import epilogue

    copies = []
    like = epilogue._like

    def recording_like(t, out):
        result = like(t, out)
        copies.append(result is not t)
        return result

    monkeypatch.setattr(epilogue, "_like", recording_like)
    x, weight, bias = conv_case(16, 16, h=4, w=4)
    x = x.contiguous(memory_format=torch.channels_last)
    residual = randn(1, 16, 4, 4, seed=4).contiguous(memory_format=residual_format)
    conv_parity(x, weight, bias, padding=1, activation="relu", residual=residual)
    assert copies == [copied]
