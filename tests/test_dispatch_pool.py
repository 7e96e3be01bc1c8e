"""Pooling, padding and activation-backward dispatch decisions, each tested on both sides.

Issue 30: each choice a launcher makes from shapes (argmax width, int64 index math, tile and
vector width, which kernel, how many candidate windows a backward gathers, which autotune
configs survive pruning, which activation tensor the forward saves) switches between
implementations at a boundary. For each one, a case just below and just above it (and on it
where ``<=`` and ``<`` differ) checks the output and every gradient against float64 torch
(tests/parity.py, or test_pad2d.py's ``check_pad``) and proves which side ran: the launched
kernel, a constexpr of its launch, its grid, or the dtype of a stored tensor.

Sides that need 2**31 elements run the launchers on meta tensors with the kernel launches
intercepted (as tests/test_launch_limits.py does). The 2**15 argmax width cannot run its
forward here: the forward loops over the window element by element, about 1.4 ms per element
in Triton's interpreter whatever the tile (47 s for a 32,769-element window), so that test
intercepts the forward's launch, reads the dtype of the buffer the kernel would store into,
writes the value the kernel's cast would store (the window's last index) and runs the real
backward kernel on it.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE
from parity import conv_parity, kernel_names, pool_parity
from test_launch_limits import (
    META,
    Launches,
    PoolKernelSpy,
    pool_launches,  # noqa: F401 (a fixture the int64 test uses)
    requires_interpreter,
)
from test_pad2d import check_pad
from torch.testing import assert_close

from fastconv import functional as fcf
from fastconv.backend import use_backend
from fastconv.kernels import pad2d as pad_kernels
from fastconv.kernels import pool2d as pool_kernels
from fastconv.kernels.layout import element_span
from fastconv.profiling import record_launches

CONTIGUOUS, CHANNELS_LAST = torch.contiguous_format, torch.channels_last

# ----------------------------------------------------------------- max-pool argmax width


def _window_input(kernel_size: tuple[int, int], channels: int) -> torch.Tensor:
    """(1, channels, KH, KW), one pooling window per channel: channel 0's maximum is its last
    element (argmax KH*KW - 1, the value a too narrow argmax dtype wraps), the others random."""
    torch.manual_seed(0)
    x = torch.randn(1, channels, *kernel_size)
    x[0, 0, -1, -1] = x.abs().max() + 1
    return x.to(DEVICE)


@pytest.fixture
def stored_argmax(monkeypatch) -> list[torch.Tensor | None]:
    """The compact argmax buffers that ``max_pool2d_fwd`` returns, one per call."""
    stored = []
    launcher = pool_kernels.max_pool2d_fwd

    def spy(*args):
        y, argmax = launcher(*args)
        stored.append(argmax)
        return y, argmax

    monkeypatch.setattr(pool_kernels, "max_pool2d_fwd", spy)
    return stored


@pytest.mark.parametrize(
    ("kernel_size", "argmax_dtype"),
    [
        pytest.param((2, 64), torch.int8, id="window-128-on-the-boundary-int8"),
        pytest.param((3, 43), torch.int16, id="window-129-int16"),
    ],
)
def test_argmax_width_at_2_7(stored_argmax, kernel_size, argmax_dtype):
    """_argmax_dtype, window <= 2**7: 128 elements store int8, 129 int16; the last element's
    index (127, 128) survives, in the gradient and in ``return_indices``."""
    x = _window_input(kernel_size, channels=2)
    pool_parity("max_pool2d", x, kernel_size=kernel_size)
    (argmax,) = stored_argmax
    assert argmax.dtype == argmax_dtype
    assert argmax[0, 0].item() == math.prod(kernel_size) - 1
    with use_backend("triton"):
        _, indices = fcf.max_pool2d(x, kernel_size, return_indices=True)
    _, expected = F.max_pool2d(x.cpu().double(), kernel_size, return_indices=True)
    assert torch.equal(indices.cpu(), expected)


@pytest.mark.parametrize(
    ("kernel_size", "argmax_dtype"),
    [
        pytest.param((128, 256), torch.int16, id="window-32768-on-the-boundary-int16"),
        pytest.param((99, 331), torch.int32, id="window-32769-int32"),
    ],
)
def test_argmax_width_at_2_15(monkeypatch, kernel_size, argmax_dtype):
    """_argmax_dtype, window <= 2**15: 32,768 elements store int16, 32,769 int32; the last
    element's index (32,767, 32,768) stored in that dtype routes the gradient and the index
    (the forward's launch intercepted: see the module docstring)."""
    launches = []
    spy = PoolKernelSpy("_max_pool2d_fwd_kernel", launches)
    monkeypatch.setattr(pool_kernels, "_max_pool2d_fwd_kernel", spy)
    x = _window_input(kernel_size, channels=1)
    geometry = (kernel_size, kernel_size, (0, 0), (1, 1))
    _, argmax = pool_kernels.max_pool2d_fwd(x, *geometry, (1, 1), True)
    ((_, _, args, meta),) = launches
    assert args[2] is argmax and argmax.dtype == argmax_dtype  # the kernel's argmax_ptr
    assert (meta["KH"], meta["KW"], meta["STORE_ARGMAX"]) == (*kernel_size, True)
    last = math.prod(kernel_size) - 1
    argmax.copy_(torch.full(argmax.shape, last, dtype=torch.int32))  # the kernel's int32 cast

    grad_y = torch.randn(1, 1, 1, 1, device=DEVICE)
    grad_x = pool_kernels.max_pool2d_bwd(grad_y, argmax, x.shape, CONTIGUOUS, *geometry)
    x64 = x.cpu().double().requires_grad_()
    y64, indices = F.max_pool2d(x64, kernel_size, return_indices=True)
    y64.backward(grad_y.cpu().double())
    assert indices.item() == last
    assert_close(grad_x.cpu().double(), x64.grad, atol=0, rtol=0)
    computed = fcf._max_pool_indices(argmax, x.shape[-2:], *geometry)
    assert torch.equal(computed.cpu(), indices)


# ----------------------------------------------------------------- pooling int64 switch

SPAN_SIDES = [
    pytest.param(2**31 - 1, False, id="span-2**31-1-int32"),
    pytest.param(2**31, True, id="span-2**31-int64"),
]


@pytest.mark.parametrize(("span", "int64"), SPAN_SIDES)
def test_needs_int64_at_2_31(span, int64):
    """pool2d._needs_int64, span >= 2**31: a dense tensor and a 2-element strided view of
    span 2**31 - 1 stay int32, of span 2**31 switch, alone or beside a small tensor."""
    dense = torch.empty(1, span, 1, 1, device=META)
    strided = torch.empty(2, 1, 1, span - 1, device=META)[..., :1]
    assert element_span(dense) == element_span(strided) == span
    small = torch.empty(1, 1, 2, 2, device=META)
    for tensors in ((dense,), (strided,), (small, dense), (strided, small)):
        assert pool_kernels._needs_int64(*tensors) is int64


@pytest.mark.parametrize(("span", "int64"), SPAN_SIDES)
def test_every_pool_launcher_switches_to_int64_at_2_31(pool_launches, span, int64):  # noqa: F811
    """INDEX_64 of all six pooling launches (meta tensors, launches intercepted) on a
    (1, span, 1, 1) tensor: off at 2**31 - 1 elements, on at 2**31."""
    x = torch.empty(1, span, 1, 1, device=META)
    ones, zeros = (1, 1), (0, 0)
    y, argmax = pool_kernels.max_pool2d_fwd(x, ones, ones, zeros, ones, ones, True)
    pool_kernels.max_pool2d_bwd(y, argmax, x.shape, CONTIGUOUS, ones, ones, zeros, ones)
    pool_kernels.avg_pool2d_fwd(x, ones, ones, zeros, ones, True, None)
    pool_kernels.avg_pool2d_bwd(y, x.shape, CONTIGUOUS, ones, ones, zeros, True, None)
    pool_kernels.adaptive_avg_pool2d_fwd(x, ones)
    pool_kernels.adaptive_avg_pool2d_bwd(y, x.shape, CONTIGUOUS)
    assert [meta["INDEX_64"] for *_, meta in pool_launches] == [int64] * 6


# ----------------------------------------------------------------- pooling tiles and layout


def _fwd_bwd(launches) -> tuple[dict, dict]:
    """(forward, backward) launch meta plus ``grid`` of a pooling op's two launches."""
    forward, backward = launches
    return ({**forward.meta, "grid": forward.grid}, {**backward.meta, "grid": backward.grid})


def _subset(meta: dict, expected: dict) -> dict:
    """``meta`` restricted to the keys of ``expected``."""
    return {key: meta[key] for key in expected}


def _tile(vec: int, block_i: int, grid: int, channels_last: bool) -> dict:
    """The expected meta (and 1-D grid) of a tiled pooling launch."""
    return {"VEC": vec, "BLOCK_I": block_i, "grid": (grid,), "CHANNELS_LAST": channels_last}


def _strided_channels() -> torch.Tensor:
    """Every other channel of a channels_last (1, 16, 2, 2) tensor: channel stride 2, the
    smallest, so memory_format_of calls it channels_last."""
    return torch.randn(1, 16, 2, 2).contiguous(memory_format=CHANNELS_LAST)[:, ::2]


# (input, forward tile, backward tile) of avg_pool2d k2 s2: the forward tiles y, the backward
# grad_x; VEC is the largest power of 2 <= 16 dividing the columns and the other strides,
# BLOCK_I = min(next_pow2(columns), 128).
TILING_CASES = [
    pytest.param((1, 8, 2, 2), CHANNELS_LAST, _tile(8, 8, 1, True), _tile(8, 8, 1, True),
                 id="channels_last-C8-vec8"),
    pytest.param((1, 12, 2, 2), CHANNELS_LAST, _tile(4, 16, 1, True), _tile(4, 16, 1, True),
                 id="channels_last-C12-vec4"),
    pytest.param((1, 16, 2, 2), CHANNELS_LAST, _tile(16, 16, 1, True), _tile(16, 16, 1, True),
                 id="channels_last-C16-vec16"),
    pytest.param((1, 32, 2, 2), CHANNELS_LAST, _tile(16, 32, 1, True), _tile(16, 32, 1, True),
                 id="channels_last-C32-vec-capped-16"),
    pytest.param((1, 128, 2, 2), CHANNELS_LAST, _tile(16, 128, 1, True),
                 _tile(16, 128, 1, True), id="channels_last-C128-one-column-block"),
    pytest.param((1, 129, 2, 2), CHANNELS_LAST, _tile(1, 128, 2, True), _tile(1, 128, 2, True),
                 id="channels_last-C129-two-column-blocks"),
    pytest.param((1, 1, 2, 16), CONTIGUOUS, _tile(8, 8, 1, False), _tile(16, 16, 1, False),
                 id="nchw-W-even"),
    pytest.param((1, 1, 2, 15), CONTIGUOUS, _tile(1, 8, 1, False), _tile(1, 16, 1, False),
                 id="nchw-W-odd"),
    pytest.param(None, None, _tile(8, 8, 1, True), _tile(8, 8, 1, True),
                 id="strided-channel-view-channels_last"),
]  # fmt: skip


@pytest.mark.parametrize(("shape", "memory_format", "forward", "backward"), TILING_CASES)
def test_pool_tiling_sides(shape, memory_format, forward, backward):
    """pool2d._tiling and memory_format_of: VEC 8/4/16 and its cap at 16, one vs two column
    blocks at 128/129 columns, odd vs even W, channels_last vs NCHW columns."""
    torch.manual_seed(0)
    if shape is None:
        x = _strided_channels()
    else:
        x = torch.randn(shape).contiguous(memory_format=memory_format)
    launches = pool_parity("avg_pool2d", x.to(DEVICE), kernel_size=2)
    assert kernel_names(launches) == ["_avg_pool2d_fwd_kernel", "_avg_pool2d_bwd_kernel"]
    got_forward, got_backward = _fwd_bwd(launches)
    assert _subset(got_forward, forward) == forward
    assert _subset(got_backward, backward) == backward


# ----------------------------------------------------------------- adaptive average pooling


@pytest.mark.parametrize(
    ("shape", "memory_format", "output_size", "forward", "candidates"),
    [
        pytest.param((1, 2, 8, 8), CONTIGUOUS, (1, 1),
                     ("_adaptive_avg_pool2d_fwd_kernel", {"BLOCK_K": 64, "BLOCK_M": 16}),
                     (1, 1), id="nchw-window-64-one-block"),
        pytest.param((1, 2, 5, 13), CONTIGUOUS, (1, 1),
                     ("_adaptive_avg_pool2d_fwd_kernel", {"BLOCK_K": 64, "BLOCK_M": 16}),
                     (1, 1), id="nchw-window-65-capped-two-blocks"),
        pytest.param((1, 2, 4, 5), CONTIGUOUS, (3, 4),
                     ("_adaptive_avg_pool2d_fwd_kernel", {"BLOCK_K": 4, "BLOCK_M": 256}),
                     (2, 2), id="nchw-overlapping-windows"),
        pytest.param((1, 8, 5, 13), CHANNELS_LAST, (1, 1),
                     ("_adaptive_avg_pool2d_fwd_nhwc_kernel", {"VEC": 8}),
                     (1, 1), id="channels_last-window-65"),
        pytest.param((1, 8, 4, 5), CHANNELS_LAST, (3, 4),
                     ("_adaptive_avg_pool2d_fwd_nhwc_kernel", {"VEC": 8}),
                     (2, 2), id="channels_last-overlapping-windows"),
    ],
)  # fmt: skip
def test_adaptive_avg_pool_sides(shape, memory_format, output_size, forward, candidates):
    """adaptive_avg_pool2d_fwd: channels_last -> the NHWC kernel, NCHW -> BLOCK_K =
    min(next_pow2(window), 64) (64 vs 65 elements); the backward's CANDIDATES 1 vs 2."""
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=memory_format).to(DEVICE)
    launches = pool_parity("adaptive_avg_pool2d", x, output_size=output_size)
    forward_name, forward_meta = forward
    assert kernel_names(launches) == [forward_name, "_adaptive_avg_pool2d_bwd_kernel"]
    got_forward, got_backward = _fwd_bwd(launches)
    assert _subset(got_forward, forward_meta) == forward_meta
    assert (got_backward["CANDIDATES_H"], got_backward["CANDIDATES_W"]) == candidates


# ----------------------------------------------------------------- backward candidate windows


@pytest.mark.parametrize(
    ("op", "kwargs", "candidates"),
    [
        pytest.param("max_pool2d", {"kernel_size": (3, 2), "stride": (3, 2)}, (1, 1),
                     id="max-stride-equals-kernel"),
        pytest.param("max_pool2d", {"kernel_size": (3, 2), "stride": (2, 1)}, (2, 2),
                     id="max-stride-kernel-minus-1"),
        pytest.param("max_pool2d", {"kernel_size": 2, "stride": 3, "dilation": 2}, (1, 1),
                     id="max-stride-equals-dilated-extent"),
        pytest.param("max_pool2d", {"kernel_size": 2, "stride": 2, "dilation": 2}, (2, 2),
                     id="max-stride-dilated-extent-minus-1"),
        pytest.param("avg_pool2d", {"kernel_size": (3, 2), "stride": (3, 2)}, (1, 1),
                     id="avg-stride-equals-kernel"),
        pytest.param("avg_pool2d", {"kernel_size": (3, 2), "stride": (2, 1)}, (2, 2),
                     id="avg-stride-kernel-minus-1"),
    ],
)  # fmt: skip
def test_pool_backward_candidates(op, kwargs, candidates):
    """CANDIDATES_H/W = ceil(extent / stride) of the max and avg backward: 1 when the stride
    equals the (dilated) window extent, 2 when it is one less (overlapping windows)."""
    torch.manual_seed(0)
    launches = pool_parity(op, torch.randn(1, 2, 7, 7, device=DEVICE), **kwargs)
    _, backward = _fwd_bwd(launches)
    assert (backward["CANDIDATES_H"], backward["CANDIDATES_W"]) == candidates


# ----------------------------------------------------------------- pad2d

# The interpreter's one pad tile, 8 columns x 8 channels, passed as ``config=``: a GPU runs it
# too (one launch, no autotuning), and column blocks start at multiples of 8 everywhere.
PAD_TILE = pad_kernels.pad2d_configs(interpreter=True)[0]


@pytest.mark.parametrize(
    ("channels", "kept"),
    [
        pytest.param(1, [8], id="C1"),
        pytest.param(16, [8], id="C16"),
        pytest.param(17, [32, 8], id="C17"),
        pytest.param(32, [32, 8], id="C32-on-the-boundary"),
        pytest.param(33, [64, 32, 8], id="C33"),
    ],
)
def test_pad_prune_keeps_channel_tiles_up_to_the_channels(channels, kept):
    """pad2d._prune, BLOCK_C <= max(8, next_pow2(C)): the 32-channel tile from C = 17 (not
    16), the 64-channel tile from C = 33 (not 32); both pad autotuners prune with it."""
    configs = pad_kernels.pad2d_configs(interpreter=False)
    pruned = pad_kernels._prune(configs, {"C": channels})
    assert [config.kwargs["BLOCK_C"] for config in pruned] == kept
    for tuned in (pad_kernels._TUNED_FWD, pad_kernels._TUNED_BWD):
        assert tuned.early_config_prune is pad_kernels._prune


@pytest.mark.parametrize("channels", [32, 33], ids=["C32-without-64-tile", "C33-with-64-tile"])
def test_pad_configs_kept_on_each_side_of_the_prune_match_torch(channels):
    """pad2d._prune at 32/33 channels: every GPU config it keeps, run through ``config=``,
    matches float64 torch, forward and backward (NHWC input, NCHW gradient)."""
    pruned = pad_kernels._prune(pad_kernels.pad2d_configs(interpreter=False), {"C": channels})
    torch.manual_seed(0)
    for config in pruned:
        with record_launches() as launches:
            check_pad("reflect", (1, channels, 2, 3), (1, 1, 1, 0), CHANNELS_LAST, CONTIGUOUS,
                      torch.float32, 1e-6, 1e-6, config)  # fmt: skip
        assert [launch.meta["BLOCK_C"] for launch in launches] == [config.kwargs["BLOCK_C"]] * 2


def _pad_meta(launches) -> dict:
    """The VEC_* and *_CHANNELS_LAST constexprs of a pad forward and backward launch."""
    assert kernel_names(launches) == ["_pad2d_fwd_kernel", "_pad2d_bwd_kernel"]
    return {
        key: value
        for launch in launches
        for key, value in launch.meta.items()
        if key.startswith("VEC") or key.endswith("CHANNELS_LAST")
    }


def _pad_vec(x, gy, gx, c, channels_last) -> dict:
    """The expected VEC_* and *_CHANNELS_LAST meta of a pad forward and backward."""
    return dict(VEC_X=x, VEC_GY=gy, VEC_GX=gx, VEC_C=c, X_CHANNELS_LAST=channels_last,
                GY_CHANNELS_LAST=channels_last, GX_CHANNELS_LAST=channels_last)  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "memory_format", "expected"),
    [
        pytest.param((1, 8, 2, 3), CHANNELS_LAST, _pad_vec(8, 8, 8, 8, True), id="C8-vec8"),
        pytest.param((1, 12, 2, 3), CHANNELS_LAST, _pad_vec(4, 4, 4, 4, True), id="C12-vec4"),
        pytest.param((1, 16, 2, 3), CHANNELS_LAST, _pad_vec(16, 16, 16, 16, True),
                     id="C16-vec16"),
        pytest.param((1, 32, 2, 3), CHANNELS_LAST, _pad_vec(16, 16, 16, 16, True),
                     id="C32-vec-capped-16"),
        pytest.param((1, 4, 1, 1), CHANNELS_LAST, _pad_vec(16, 4, 16, 4, True),
                     id="all-row-strides-0-vec16"),
        pytest.param((1, 2, 3, 8), CONTIGUOUS, _pad_vec(8, 2, 8, 2, False), id="nchw-W-even"),
        pytest.param((1, 2, 3, 7), CONTIGUOUS, _pad_vec(1, 1, 1, 2, False), id="nchw-W-odd"),
    ],
)  # fmt: skip
def test_pad_vector_widths(shape, memory_format, expected):
    """pad2d._vec/_row_vec: VEC_C and the row VECs 8/4/16, capped at 16, 16 when every
    row stride is 0, 1 for an odd NCHW W; channels-contiguous vs W-contiguous reads."""
    torch.manual_seed(0)
    with record_launches() as launches:
        check_pad("replicate", shape, (1, 1, 1, 0), memory_format, memory_format,
                  torch.float32, 1e-6, 1e-6, PAD_TILE)  # fmt: skip
    assert _pad_meta(launches) == expected


@pytest.fixture
def column_maps(monkeypatch) -> list[bool]:
    """Whether each ``_source_index`` call of the pad forward maps a block of columns (only a
    block outside the in-image fast path does) rather than the program's row (every one)."""
    calls = []
    original = pad_kernels._source_index

    def spy(i, size, MODE):
        calls.append(len(i.shape) > 0)
        return original(i, size, MODE)

    monkeypatch.setattr(pad_kernels, "_source_index", spy)
    return calls


@requires_interpreter
@pytest.mark.parametrize(
    ("width", "padding", "fast_blocks_per_row"),
    [
        pytest.param(8, (0, 2, 1, 0), 1, id="block-ends-on-the-right-edge-fast"),
        pytest.param(7, (0, 2, 1, 0), 0, id="block-one-past-the-right-edge-border"),
        pytest.param(16, (1, 0, 1, 0), 2, id="left-padding-block-border-then-two-fast"),
    ],
)
def test_pad_in_image_fast_path(column_maps, width, padding, fast_blocks_per_row):
    """_pad2d_fwd_kernel's ``(first >= 0) & (first + BLOCK_W <= W)``: an 8-column block
    ending on W (or starting at 0) copies as is, one past W or in the padding maps columns."""
    torch.manual_seed(0)
    shape = (1, 2, 2, width)
    with record_launches() as launches:
        check_pad("reflect", shape, padding, CONTIGUOUS, CONTIGUOUS, torch.float32, 1e-6, 1e-6,
                  PAD_TILE)  # fmt: skip
    forward = launches[0]
    assert forward.meta["BLOCK_W"] == 8
    (programs,) = forward.grid
    padded_rows = shape[2] + padding[2] + padding[3]
    assert programs - sum(column_maps) == fast_blocks_per_row * padded_rows


# (mode, W, padding): the input column nearest a block edge that a border reads besides its
# own padded column (reflect left: column `left`; reflect right: W - 1 - right; replicate
# right: W - 1) is the first or last of an 8-column block, which must gather it, or one
# column further, inside the neighbouring block, and the block before or after skips it.
BORDER_BLOCK_CASES = [
    pytest.param("reflect", 16, (8, 0, 1, 0), id="reflect-left-mirror-col-8-first-of-block-1"),
    pytest.param("reflect", 16, (7, 0, 1, 0), id="reflect-left-mirror-col-7-last-of-block-0"),
    pytest.param("reflect", 10, (0, 2, 1, 0), id="reflect-right-mirror-col-7-last-of-block-0"),
    pytest.param("reflect", 11, (0, 2, 1, 0), id="reflect-right-mirror-col-8-first-of-block-1"),
    pytest.param("replicate", 8, (0, 2, 1, 0), id="replicate-right-strip-col-7-last-of-block-0"),
    pytest.param("replicate", 9, (0, 2, 1, 0), id="replicate-right-strip-col-8-first-of-block-1"),
]


@pytest.mark.parametrize(("mode", "width", "padding"), BORDER_BLOCK_CASES)
def test_pad_backward_border_blocks(mode, width, padding):
    """_pad2d_bwd_kernel's block tests, reflect ``first <= left`` and ``first + BLOCK_W >
    W - 1 - right``, replicate ``first + BLOCK_W >= W``: a border's nearest mirrored column
    on either side of an 8-column block edge reaches the gradient."""
    torch.manual_seed(0)
    with record_launches() as launches:
        check_pad(mode, (1, 2, 2, width), padding, CONTIGUOUS, CONTIGUOUS, torch.float32,
                  1e-6, 1e-6, PAD_TILE)  # fmt: skip
    assert launches[1].name == "_pad2d_bwd_kernel" and launches[1].meta["BLOCK_W"] == 8


@pytest.mark.parametrize(
    ("padded_width", "int64"),
    [
        pytest.param(2**30 - 2049, False, id="int32"),
        pytest.param(2**30 - 2048, True, id="int64"),
    ],
)
def test_pad_int64_switch(monkeypatch, padded_width, int64):
    """pad2d's INDEX_64 = launch.needs_int64 (2 * largest + 4096 >= 2**31): the forward and
    backward on meta tensors (launches intercepted) with an output one element below/at it."""
    launches = Launches()
    monkeypatch.setattr(pad_kernels, "launch", launches)
    shape = (1, 1, 1, padded_width - 2)
    padding = (1, 1, 0, 0)
    y = pad_kernels.pad2d_fwd(torch.empty(shape, device=META), padding, "reflect")
    pad_kernels.pad2d_bwd(y, shape, padding, "reflect")
    assert [meta["INDEX_64"] for *_, meta in launches.calls] == [int64, int64]


@pytest.mark.parametrize("memory_format", [CONTIGUOUS, CHANNELS_LAST], ids=["nchw", "nhwc"])
def test_pad_int64_path_matches_torch(monkeypatch, memory_format):
    """The INDEX_64 side of pad2d, forced on a small shape, against float64 torch."""
    monkeypatch.setattr(pad_kernels, "needs_int64", lambda *args: True)
    torch.manual_seed(0)
    with record_launches() as launches:
        check_pad("circular", (2, 3, 5, 9), (2, 1, 3, 2), memory_format, memory_format,
                  torch.float32, 1e-6, 1e-6, PAD_TILE)  # fmt: skip
    assert [launch.meta["INDEX_64"] for launch in launches] == [True, True]


# ----------------------------------------------------------------- activation backward


@pytest.mark.parametrize(
    ("negative_slope", "save_preact"),
    [
        pytest.param(-0.01, True, id="slope-negative-saves-z"),
        pytest.param(0.0, False, id="slope-0-on-the-boundary-saves-y"),
        pytest.param(0.01, False, id="slope-positive-saves-y"),
    ],
)
def test_leaky_relu_saved_tensor(negative_slope, save_preact):
    """activations.saved_for_backward, leaky_relu slope >= 0 saves y, < 0 saves z
    (SAVE_PREACT): a y-based derivative is wrong wherever z < 0 at a negative slope."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3), torch.randn(6)
    z = F.conv2d(x.double(), weight.double(), bias.double())
    assert (z < 0).sum() > 10 and (z > 0).sum() > 10
    launches = conv_parity(
        x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE),
        activation="leaky_relu", negative_slope=negative_slope,
    )  # fmt: skip
    assert launches[0].meta["SAVE_PREACT"] is save_preact
    assert "_activation_bwd_kernel" in kernel_names(launches)
