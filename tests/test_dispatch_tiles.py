"""Size, split and tile decisions of the conv launchers, each tested on both sides of its boundary.

Issue 30: every decision a launcher takes from the shapes is a boundary where the code changes
what runs. This file covers the ones that pick index widths, grids, splits and tiles:

* ``launch.needs_int64``: int32 vs int64 index math (``INDEX_64``), exactly at
  ``2 * largest + 4096 >= 2**31``, as a pure function and through every launcher that reads
  it (on meta tensors, the launch intercepted: no memory), plus the forced int64 path of the
  kernels no other test forces (TMA, activation backward) against float64 torch;
* ``launch.checked_grid``: the hardware grid limits, on and one past each;
* ``conv2d_wgrad.wgrad_split`` / ``wgrad_partition``: each cap of the split-K on both sides of
  where it starts to bind, as pure functions and end to end (the caps forced by patching the
  module's constants on a tiny shape, the split read from the launch's grid axis 2);
* ``conv2d_depthwise.depthwise_partition``: column blocks (Q = 16 vs 17, also end to end), the
  programs and workspace caps of the automatic split, rows per slice;
* the autotune pruners (``conv2d._prune_configs``, ``conv2d_tma._prune_configs``,
  ``conv2d_depthwise._prune``, ``epilogue.tile_fits_epilogue``): which GPU tiles they keep on
  each side of every rule, and the fallback when none is kept. Under the interpreter the
  autotuners hold one config and never prune, so these are pure-function tests; that every
  kept tile computes the right result is tests/test_autotune_configs.py's job.

End-to-end cases run through ``tests/parity.py``'s ``conv_parity`` (output and every gradient
against float64 torch) and read the side taken from the recorded launch (kernel, constexprs,
grid).
"""

import pytest
import torch
import triton
from conftest import DEVICE, intercept_tuned_launches
from parity import conv_parity, kernel_names
from test_launch_limits import Launches, PoolKernelSpy

from fastconv.kernels import conv2d as ck
from fastconv.kernels import conv2d_depthwise as dw
from fastconv.kernels import conv2d_stem as sk
from fastconv.kernels import conv2d_tma as tk
from fastconv.kernels import conv2d_wgrad as wk
from fastconv.kernels import epilogue as eb
from fastconv.kernels import launch as lk
from fastconv.kernels.layout import element_span

META = torch.device("meta")
ONE, ZERO = (1, 1), (0, 0)

# --------------------------------------------------------------------------- int32 vs int64

# The smallest largest-quantity (pixel count or element span) that needs int64 index math:
# 2 * largest + 4096 >= 2**31 (launch.needs_int64's rule).
FIRST_INT64 = (2**31 - 4096) // 2
INT64_SIDES = [
    pytest.param(FIRST_INT64 - 1, False, id="int32-one-below"),
    pytest.param(FIRST_INT64, True, id="int64-at-boundary"),
]


def strided_span(span: int) -> torch.Tensor:
    """A 2-element meta view whose element span is ``span`` (its second element span - 1 on)."""
    return torch.empty_strided((2,), (span - 1,), device=META)


@pytest.mark.parametrize(("largest", "int64"), INT64_SIDES)
@pytest.mark.parametrize(
    "operands",
    [
        pytest.param(lambda n: (n,), id="pixel-count"),
        pytest.param(lambda n: (1, torch.empty(n, device=META)), id="tensor-numel"),
        pytest.param(lambda n: (1, strided_span(n)), id="strided-view-span"),
        pytest.param(lambda n: (1, torch.empty(3, device=META), strided_span(n)), id="last-tensor"),
    ],
)
def test_needs_int64_switches_exactly_at_the_boundary(operands, largest, int64):
    """needs_int64: False one below the boundary, True on it, whichever quantity is largest."""
    assert lk.needs_int64(*operands(largest)) is int64


def channels_last_view(channels: int, span: int, dtype=torch.float32) -> torch.Tensor:
    """A (1, channels, 1, 2) meta view with unit channel stride (the launchers read it as it
    is) whose second pixel starts ``span - channels`` elements on: element span ``span``."""
    strides = (span, 1, span, span - channels)
    return torch.empty_strided((1, channels, 1, 2), strides, device=META, dtype=dtype)


def meta(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(shape, device=META, dtype=dtype)


def two_factors(span: int, more_than: int = 4) -> tuple[int, int]:
    """(k, q) with k * q == span and k > ``more_than``: the channels x pixels of an output of
    ``span`` elements larger than an input of ``more_than`` channels a pixel."""
    k = next(d for d in range(more_than + 1, span) if span % d == 0)
    return k, span // k


# Each launcher run on meta tensors whose largest needs_int64 quantity is ``span``: a strided
# operand the launcher reads without a copy, or an output of ``span`` elements. Returns the
# name of the kernel that must have been launched.
def gemm_forward(span):
    ck.conv2d_fwd(channels_last_view(16, span), meta(4, 16, 1, 1), None, ONE, ZERO, ONE, (1, 2))
    return "_implicit_gemm_kernel"


def gemm_forward_output(span):  # y (1, k, 1, q) larger than x (1, 16, 1, q)
    k, q = two_factors(span, more_than=16)
    ck.conv2d_fwd(meta(1, 16, 1, q), meta(k, 16, 1, 1), None, ONE, ZERO, ONE, (1, q))
    return "_implicit_gemm_kernel"


def gemm_dgrad(span):
    grad_y = channels_last_view(16, span)
    ck.conv2d_bwd_input(grad_y, meta(16, 4, 1, 1), (1, 4, 1, 2), ONE, ZERO, ONE)
    return "_implicit_gemm_kernel"


def gemm_wgrad(span):
    grad_y, x = channels_last_view(16, span), meta(1, 16, 1, 2)
    ck.conv2d_bwd_weight(grad_y, x, (16, 16, 1, 1), ONE, ZERO, ONE, True)
    return "_conv2d_bwd_weight_kernel"


def depthwise_forward(span):
    x = channels_last_view(16, span)
    ck.conv2d_fwd(x, meta(16, 1, 1, 1), None, ONE, ZERO, ONE, (1, 2), groups=16)
    return "_depthwise_fwd_kernel"


def depthwise_dgrad(span):
    grad_y = channels_last_view(16, span)
    ck.conv2d_bwd_input(grad_y, meta(16, 1, 1, 1), (1, 16, 1, 2), ONE, ZERO, ONE, groups=16)
    return "_depthwise_dgrad_kernel"


def depthwise_wgrad(span):
    grad_y, x = channels_last_view(16, span), meta(1, 16, 1, 2)
    ck.conv2d_bwd_weight(grad_y, x, (16, 1, 1, 1), ONE, ZERO, ONE, True, groups=16)
    return "_depthwise_wgrad_kernel"


def stem_forward(span):  # y (1, k, 1, q) is the largest: x_pad has 4 channels a pixel
    k, q = two_factors(span)
    ck.conv2d_fwd(meta(1, 3, 1, q), meta(k, 3, 1, 1), None, ONE, ZERO, ONE, (1, q))
    return "_conv2d_stem_fwd_kernel"


def tma_forward(span):  # the TMA kernel's INDEX_64 reads the pixels and the output only
    k, q = two_factors(span)
    x, weight = meta(1, 16, 1, q, dtype=torch.float16), meta(k, 16, 1, 1, dtype=torch.float16)
    ck.conv2d_fwd(x, weight, None, ONE, ZERO, ONE, (1, q))
    return "_tma_implicit_gemm_kernel"


def tma_dgrad(span):  # grad_x (1, 8, 1, q): TMA reads the weight's 8 channels as 16-byte rows
    q = span // 8
    grad_y, weight = meta(1, 16, 1, q, dtype=torch.float16), meta(16, 8, 1, 1, dtype=torch.float16)
    ck.conv2d_bwd_input(grad_y, weight, (1, 8, 1, q), ONE, ZERO, ONE)
    return "_tma_implicit_gemm_kernel"


tma_dgrad.granularity = 8  # its span is 8 * q: the int32 side is the multiple of 8 below


def activation_backward(span):
    eb.activation_bwd(meta(1, 1, 1, span), meta(1, 1, 1, span), "relu", 0.0)
    return "_activation_bwd_kernel"


INT64_LAUNCHERS = [
    gemm_forward, gemm_forward_output, gemm_dgrad, gemm_wgrad,
    depthwise_forward, depthwise_dgrad, depthwise_wgrad,
    stem_forward, tma_forward, tma_dgrad, activation_backward,
]  # fmt: skip


@pytest.fixture
def meta_launches(monkeypatch):
    """(launches, largest): every conv-family launch recorded as (kernel, grid, args, meta)
    instead of run, and the largest quantity of each needs_int64 call. The TMA kernel takes
    meta tensors as if they were on an sm_90 device."""
    launches = Launches()
    for module in (sk, dw):
        monkeypatch.setattr(module, "launch", launches)
    intercept_tuned_launches(monkeypatch, launches)  # the cp.async, TMA and wgrad kernels
    monkeypatch.setattr(tk, "_tma_device", lambda tensor: True)
    activation_spy = PoolKernelSpy(eb._activation_bwd_kernel, launches.calls)
    monkeypatch.setattr(eb, "_activation_bwd_kernel", activation_spy)
    largest = []

    def recording_needs_int64(pixels, *tensors):
        largest.append(max([pixels, *(element_span(t) for t in tensors)]))
        return lk.needs_int64(pixels, *tensors)

    for module in (ck, sk, wk, dw, tk, eb):
        monkeypatch.setattr(module, "needs_int64", recording_needs_int64)
    return launches, largest


@pytest.mark.parametrize(("span", "int64"), INT64_SIDES)
@pytest.mark.parametrize("launcher", INT64_LAUNCHERS, ids=lambda f: f.__name__)
def test_launcher_index_width_at_the_int64_boundary(meta_launches, launcher, span, int64):
    """Each launcher: INDEX_64 off with its largest quantity one below the boundary, on at it."""
    launches, largest = meta_launches
    kernel_name = launcher(span)
    assert largest == [span - span % getattr(launcher, "granularity", 1)]  # where it says
    ((launched, _, _, launch_meta),) = launches.calls
    assert launched.fn.__name__ == kernel_name
    assert launch_meta["INDEX_64"] is int64


def test_int64_path_of_tma_and_activation_backward_matches_torch(monkeypatch):
    """INDEX_64 side (forced on): TMA fwd + dgrad and activation backward match float64 torch."""
    x = torch.randn(1, 16, 3, 5).to(DEVICE, torch.float16)
    if not tk._tma_device(x):
        pytest.skip("the TMA kernel needs an sm_90 GPU or the interpreter")
    monkeypatch.setattr(tk, "needs_int64", lambda *args: True)
    monkeypatch.setattr(eb, "needs_int64", lambda *args: True)
    weight = (torch.randn(8, 16, 3, 3) / 12).to(DEVICE, torch.float16)
    bias = torch.randn(8).to(DEVICE, torch.float16)
    launches = conv_parity(x, weight, bias, padding=1, activation="relu")
    forced = [launch for launch in launches if launch.name != "_conv2d_bwd_weight_kernel"]
    assert kernel_names(forced) == [
        "_tma_implicit_gemm_kernel", "_activation_bwd_kernel", "_tma_implicit_gemm_kernel",
    ]  # fmt: skip
    assert all(launch.meta["INDEX_64"] for launch in forced)


# --------------------------------------------------------------------------- grid limits


@pytest.mark.parametrize(
    ("grid", "axis"),
    [
        pytest.param((2**31 - 1,), None, id="axis0-at-limit"),
        pytest.param((2**31,), 0, id="axis0-one-past"),
        pytest.param((1, 65_535, 1), None, id="axis1-at-limit"),
        pytest.param((1, 65_536, 1), 1, id="axis1-one-past"),
        pytest.param((1, 1, 65_535), None, id="axis2-at-limit"),
        pytest.param((1, 1, 65_536), 2, id="axis2-one-past"),
    ],
)
def test_checked_grid_at_and_one_past_each_hardware_limit(grid, axis):
    """checked_grid: a grid at an axis's CUDA limit passes, one program more raises naming it."""
    if axis is None:
        assert lk.checked_grid(grid, "test") == grid
    else:
        with pytest.raises(ValueError, match=f"test: grid axis {axis} needs {grid[axis]} programs"):
            lk.checked_grid(grid, "test")


# --------------------------------------------------------------------------- wgrad split-K

ROWS_PER_SPLIT = wk.WGRAD_ROWS_PER_SPLIT
TARGET, TILE = wk.WGRAD_TARGET_PROGRAMS, wk.WGRAD_NOMINAL_TILE
BUDGET = TARGET * TILE  # the programs cap is BUDGET // weight_numel
GRID_Z = wk.MAX_GRID[2]


@pytest.mark.parametrize(
    ("rows", "weight_numel", "split"),
    [
        pytest.param(ROWS_PER_SPLIT, 1, 1, id="rows-cap-one-split"),
        pytest.param(ROWS_PER_SPLIT + 1, 1, 2, id="rows-cap-two-splits"),
        pytest.param(TARGET * ROWS_PER_SPLIT, TILE, TARGET, id="programs-cap-ties-rows-cap"),
        pytest.param(TARGET * ROWS_PER_SPLIT, TILE + 1, TARGET - 1, id="programs-cap-binds"),
        pytest.param(GRID_Z * ROWS_PER_SPLIT, 1, GRID_Z, id="grid-cap-ties-rows-cap"),
        pytest.param(GRID_Z * ROWS_PER_SPLIT + 1, 1, GRID_Z, id="grid-cap-binds"),
        pytest.param(2 * ROWS_PER_SPLIT, BUDGET, 1, id="programs-cap-one-program"),
        pytest.param(2 * ROWS_PER_SPLIT, BUDGET + 1, 1, id="programs-cap-zero-floored-to-one"),
    ],
)
def test_wgrad_split_caps(rows, weight_numel, split):
    """wgrad_split: the rows, programs and grid caps each on both sides of where it binds."""
    assert wk.wgrad_split(rows, weight_numel) == split


@pytest.mark.parametrize(
    ("weight_numel", "split"),
    [
        pytest.param(TILE, TARGET // 2, id="workspace-cap-ties-rows-cap"),
        pytest.param(TILE + 1, TARGET // 2 - 1, id="workspace-cap-binds"),
    ],
)
def test_wgrad_split_workspace_cap(monkeypatch, weight_numel, split):
    """wgrad_split workspace cap (patched below the programs budget): tie side, binding side."""
    monkeypatch.setattr(wk, "WGRAD_MAX_WORKSPACE", BUDGET // 2)
    assert wk.wgrad_split(TARGET // 2 * ROWS_PER_SPLIT, weight_numel) == split


@pytest.mark.parametrize(
    ("rows", "split", "partition"),
    [
        pytest.param(80, 80, (1, 80), id="split-equals-rows"),
        pytest.param(GRID_Z + 1, GRID_Z, (2, GRID_Z // 2 + 1), id="split-at-grid-cap"),
        pytest.param(GRID_Z + 1, GRID_Z + 1, (2, GRID_Z // 2 + 1), id="split-past-grid-cap"),
    ],
)
def test_wgrad_partition_caps_an_explicit_split(rows, split, partition):
    """wgrad_partition: a split at the rows or the grid limit runs; one past the limit, clamped."""
    assert wk.wgrad_partition(rows, 100, split) == partition


WGRAD_NUMEL = 3 * 2  # the weight (3, 2, 1, 1) of the end-to-end cases


@pytest.mark.parametrize(
    ("constants", "rows", "split"),
    [
        pytest.param({}, ROWS_PER_SPLIT, 1, id="rows-cap-one-split"),
        pytest.param({}, ROWS_PER_SPLIT + 1, 2, id="rows-cap-two-splits"),
        pytest.param(
            {"WGRAD_MAX_WORKSPACE": 3 * WGRAD_NUMEL}, 3 * ROWS_PER_SPLIT, 3,
            id="workspace-cap-ties-rows-cap",
        ),
        pytest.param(
            {"WGRAD_MAX_WORKSPACE": 3 * WGRAD_NUMEL - 1}, 3 * ROWS_PER_SPLIT, 2,
            id="workspace-cap-binds",
        ),
        pytest.param(
            {"WGRAD_NOMINAL_TILE": 1, "WGRAD_TARGET_PROGRAMS": 3 * WGRAD_NUMEL},
            3 * ROWS_PER_SPLIT, 3, id="programs-cap-ties-rows-cap",
        ),
        pytest.param(
            {"WGRAD_NOMINAL_TILE": 1, "WGRAD_TARGET_PROGRAMS": 3 * WGRAD_NUMEL - 1},
            3 * ROWS_PER_SPLIT, 2, id="programs-cap-binds",
        ),
        pytest.param(
            {"MAX_GRID": (*lk.MAX_GRID[:2], 3)}, 3 * ROWS_PER_SPLIT, 3, id="grid-cap-ties-rows-cap"
        ),
        pytest.param(
            {"MAX_GRID": (*lk.MAX_GRID[:2], 2)}, 3 * ROWS_PER_SPLIT, 2, id="grid-cap-binds"
        ),
    ],
)  # fmt: skip
def test_wgrad_split_caps_end_to_end(monkeypatch, constants, rows, split):
    """Each wgrad split-K cap, both sides, end to end: parity, and the split is grid axis 2."""
    for name, value in constants.items():
        monkeypatch.setattr(wk, name, value)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 1, rows, device=DEVICE)
    weight = torch.randn(3, 2, 1, 1, device=DEVICE)
    bias = torch.randn(3, device=DEVICE)
    assert weight.numel() == WGRAD_NUMEL
    launches = conv_parity(x, weight, bias)
    (wgrad,) = [launch for launch in launches if launch.name == "_conv2d_bwd_weight_kernel"]
    assert wgrad.grid[2] == split


# --------------------------------------------------------------------------- depthwise wgrad

DW_TARGET, DW_WORKSPACE = dw.WGRAD_TARGET_PROGRAMS, dw.WGRAD_MAX_WORKSPACE
DW_BLOCK_C = dw._NOMINAL_BLOCK_C
# Taps at which the workspace cap (one image of DW_BLOCK_C channels) equals DW_TARGET.
DW_TIE_TAPS = DW_WORKSPACE // (DW_BLOCK_C * DW_TARGET) - 1
# Output rows per image for the automatic-split cases: slices == split for any split s
# with s * s < P_MANY, so the partition shows the split exactly.
P_MANY = 2**23


@pytest.mark.parametrize(
    ("q", "column_blocks"),
    [pytest.param(16, (16, 1), id="q16-one-block"), pytest.param(17, (16, 2), id="q17-two-blocks")],
)
def test_depthwise_column_blocks(q, column_blocks):
    """depthwise_partition: Q_BLOCK = min(next_pow2(Q), 16): Q = 16 one block, 17 two."""
    assert dw.depthwise_partition(1, 1, q, 16, 9, 1)[:2] == column_blocks


@pytest.mark.parametrize(
    ("n", "q", "k", "taps", "split"),
    [
        pytest.param(DW_TARGET // 2, 16, DW_BLOCK_C, 9, 2, id="programs-cap-two-slices"),
        pytest.param(DW_TARGET // 2 + 1, 16, DW_BLOCK_C, 9, 1, id="programs-cap-one-slice"),
        pytest.param(DW_TARGET // 2, 16, DW_BLOCK_C + 1, 9, 1, id="second-channel-block"),
        pytest.param(DW_TARGET // 2, 17, DW_BLOCK_C, 9, 1, id="second-column-block"),
        pytest.param(DW_TARGET + 1, 16, DW_BLOCK_C, 9, 1, id="programs-cap-zero-floored-to-one"),
        pytest.param(1, 16, DW_BLOCK_C, DW_TIE_TAPS, DW_TARGET, id="workspace-cap-ties"),
        pytest.param(
            1, 16, DW_BLOCK_C, DW_TIE_TAPS + 1,
            DW_WORKSPACE // (DW_BLOCK_C * (DW_TIE_TAPS + 2)), id="workspace-cap-binds",
        ),
        pytest.param(1, 16, 1, DW_WORKSPACE - 1, 1, id="workspace-cap-one-slice"),
        pytest.param(1, 16, 1, DW_WORKSPACE, 1, id="workspace-cap-zero-floored-to-one"),
    ],
)  # fmt: skip
def test_depthwise_automatic_split(n, q, k, taps, split):
    """depthwise_partition auto split: programs and workspace caps, both sides of binding each."""
    assert split * split < P_MANY
    assert dw.depthwise_partition(n, P_MANY, q, k, taps)[3] == split


@pytest.mark.parametrize(
    ("p", "slices"),
    [pytest.param(4, (1, 4), id="p4-one-row-each"), pytest.param(5, (2, 3), id="p5-two-rows-each")],
)
def test_depthwise_rows_per_slice(p, slices):
    """depthwise_partition, 4 slices asked: P = 4 gives 1 row each, P = 5 two rows (3 slices)."""
    assert dw.depthwise_partition(1, p, 16, 16, 9, 4)[2:] == slices


@pytest.mark.parametrize(("width", "q_blocks"), [(16, 1), (17, 2)], ids=["q16", "q17"])
def test_depthwise_column_blocks_end_to_end(width, q_blocks):
    """Depthwise Q = 16 (one column block) vs 17 (two) end to end: parity, Q_BLOCK, the grid."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 1, width, device=DEVICE)
    weight = torch.randn(4, 1, 1, 3, device=DEVICE)
    bias = torch.randn(4, device=DEVICE)
    launches = conv_parity(x, weight, bias, padding=(0, 1), groups=4)
    (wgrad,) = [launch for launch in launches if launch.name == "_depthwise_wgrad_kernel"]
    assert wgrad.meta["Q_BLOCK"] == 16
    assert wgrad.grid == (triton.cdiv(4, wgrad.meta["BLOCK_C"]) * q_blocks,)


# --------------------------------------------------------------------------- autotune pruners

GEMM_KINDS = list(ck.TILES)
NO_EPILOGUE = {"HAS_RESIDUAL": False, "SAVE_PREACT": False}


def gemm_tiles(configs) -> list[tuple[int, int]]:
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in configs]


def tma_tiles(configs) -> list[tuple[int, int, int]]:
    return [(c.kwargs["BP"], c.kwargs["BQ"], c.kwargs["BLOCK_N"]) for c in configs]


@pytest.mark.parametrize("kind", GEMM_KINDS)
@pytest.mark.parametrize(
    ("cout", "widths"),
    [
        pytest.param(15, {32}, id="cout15"),
        pytest.param(16, {32}, id="cout16"),
        pytest.param(17, {32}, id="cout17"),
        pytest.param(31, {32}, id="cout31"),
        pytest.param(32, {32, 64}, id="cout32"),
        pytest.param(63, {32, 64}, id="cout63"),
        pytest.param(64, {32, 64, 128}, id="cout64"),
    ],
)
def test_gemm_pruner_tile_width(kind, cout, widths):
    """conv2d._prune_configs BLOCK_N <= max(32, 2*COUT): 64-wide from COUT 32, 128 from 64."""
    configs = ck.conv_configs(kind, interpreter=False)
    kept = ck._prune_configs(configs, {"COUT": cout}, **NO_EPILOGUE)
    assert kept == [c for c in configs if c.kwargs["BLOCK_N"] in widths]


GEMM_FP16_UNDER_CAP = [(64, 128), (128, 64), (64, 64), (64, 32)]


@pytest.mark.parametrize(
    ("flags", "tiles"),
    [
        pytest.param(NO_EPILOGUE, [(128, 128), *GEMM_FP16_UNDER_CAP], id="none"),
        pytest.param({"HAS_RESIDUAL": True}, GEMM_FP16_UNDER_CAP, id="residual"),
        pytest.param({"SAVE_PREACT": True}, GEMM_FP16_UNDER_CAP, id="preact"),
    ],
)
def test_gemm_pruner_second_epilogue_operand(flags, tiles):
    """conv2d._prune_configs, residual/preact: 128x128 dropped, 64*128 tiles (the cap) kept."""
    configs = ck.conv_configs("fp16", interpreter=False)
    assert gemm_tiles(ck._prune_configs(configs, {"COUT": 256}, **flags)) == tiles


@pytest.mark.parametrize("flag", ["HAS_RESIDUAL", "SAVE_PREACT"])
@pytest.mark.parametrize(
    ("elements", "fits"),
    [pytest.param(64 * 128, True, id="at-cap"), pytest.param(64 * 128 + 1, False, id="past-cap")],
)
def test_tile_fits_epilogue_at_the_cap(flag, elements, fits):
    """tile_fits_epilogue: with a second operand 64*128 fits, one more not; without, any size."""
    assert eb.tile_fits_epilogue(elements, {flag: True}) is fits
    assert eb.tile_fits_epilogue(elements, {flag: False})


@pytest.mark.parametrize(
    ("configs", "kept"),
    [
        pytest.param([(128, 128)], [(128, 128)], id="none-fits-all-kept"),
        pytest.param([(128, 128), (64, 32)], [(64, 32)], id="one-fits"),
    ],
)
def test_gemm_pruner_falls_back_to_every_config(configs, kept):
    """conv2d._prune_configs: every config when none is useful, only the useful ones otherwise."""
    configs = [lk.tile_config(m, n, 32, 4, 4) for m, n in configs]
    assert gemm_tiles(ck._prune_configs(configs, {"COUT": 1}, HAS_RESIDUAL=True)) == kept


def tma_prune(kind, cout=256, rows=(56, 56), **flags):
    """The TMA pruner on the GPU list of ``kind``; CPAD 64 leaves every BLOCK_K as it is."""
    named = {"COUT": cout, "ROWS_H": rows[0], "ROWS_W": rows[1], "CIN": 64}
    return tma_tiles(tk._prune_configs(tk.tma_configs(kind, interpreter=False), named, **flags))


def tma_list(kind, keep=lambda bp, bq, block_n: True):
    return [tile for tile in tma_tiles(tk.tma_configs(kind, interpreter=False)) if keep(*tile)]


@pytest.mark.parametrize("kind", list(tk.TMA_TILES))
@pytest.mark.parametrize(
    ("cout", "widths"),
    [
        pytest.param(31, {64}, id="cout31"),
        pytest.param(32, {64}, id="cout32"),
        pytest.param(33, {64}, id="cout33"),
        pytest.param(63, {64}, id="cout63"),
        pytest.param(64, {64, 128}, id="cout64"),
    ],
)
def test_tma_pruner_tile_width(kind, cout, widths):
    """conv2d_tma._prune_configs BLOCK_N <= max(64, 2*COUT): 128-wide kept from COUT = 64 on."""
    assert tma_prune(kind, cout) == tma_list(kind, lambda bp, bq, n: n in widths)


@pytest.mark.parametrize("kind", list(tk.TMA_TILES))
@pytest.mark.parametrize(
    ("rows", "boxes"),
    [
        pytest.param((8, 7), {(8, 8)}, id="8x7-rows"),
        pytest.param((8, 8), {(8, 8), (8, 16), (16, 8)}, id="8x8-rows-at-twice"),
        pytest.param((8, 9), {(8, 8), (8, 16)}, id="8x9-rows"),
        pytest.param((1, 1), {(8, 8), (8, 16), (16, 8), (16, 16)}, id="1x1-none-fits-all-kept"),
    ],
)
def test_tma_pruner_box_coverage(kind, rows, boxes):
    """conv2d_tma._prune_configs box coverage <= 2 x rows: ON it kept, past it dropped; fallback."""
    assert tma_prune(kind, rows=rows) == tma_list(kind, lambda bp, bq, n: (bp, bq) in boxes)


@pytest.mark.parametrize(
    ("flags", "tiles"),
    [
        pytest.param({"HAS_RESIDUAL": True}, [(8, 8, 128), (8, 16, 64), (8, 8, 64)], id="residual"),
        pytest.param({"SAVE_PREACT": True}, [(8, 8, 128), (8, 16, 64), (8, 8, 64)], id="preact"),
        pytest.param(NO_EPILOGUE, tma_list("fp16"), id="none"),
    ],
)  # fmt: skip
def test_tma_pruner_second_epilogue_operand(flags, tiles):
    """conv2d_tma._prune_configs, residual/preact: tiles of 64*128 (the cap) kept, larger not."""
    assert tma_prune("fp16", **flags) == tiles


@pytest.mark.parametrize("op", ["direct", "wgrad"])
@pytest.mark.parametrize(
    ("channels", "fp32_widths", "fp16_widths"),
    [
        pytest.param(8, {16}, {32, 64}, id="C8"),
        pytest.param(16, {16}, {32, 64}, id="C16"),
        pytest.param(17, {16, 32}, {32}, id="C17"),
        pytest.param(32, {16, 32}, {32}, id="C32"),
        pytest.param(33, {16, 32, 64}, {32, 64}, id="C33"),
    ],
)
def test_depthwise_pruner_channel_block(op, channels, fp32_widths, fp16_widths):
    """conv2d_depthwise._prune BLOCK_C <= max(16, next_pow2(C)) around C = 16 and 32; fallback."""
    for kind, widths in (("fp32", fp32_widths), ("fp16", fp16_widths)):
        configs = dw.depthwise_configs(op, kind, interpreter=False)
        kept = dw._prune(configs, {"C_TILED": channels})
        assert kept == [c for c in configs if c.kwargs["BLOCK_C"] in widths], kind
