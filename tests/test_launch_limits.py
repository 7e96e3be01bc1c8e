"""Launch arithmetic for shapes too large to run here: grid limits and int64 index math.

The launchers run on meta tensors (no memory, no data) with the kernel launch intercepted:
each test sees the grid and the arguments a real launch would get, for every autotune config
a GPU could pick, and checks them against the hardware limits (grid axis 0 < 2**31, axes 1
and 2 <= 65,535) and the int64 switch (``INDEX_64``). That the int64 path itself computes
the right offsets is checked by running it (forced on) on small shapes against torch.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, intercept_tuned_launches

from fastconv.kernels import alloc
from fastconv.kernels import conv2d as ck
from fastconv.kernels import conv2d_stem as sk
from fastconv.kernels import conv2d_tma as tk
from fastconv.kernels import conv2d_wgrad as wk
from fastconv.kernels import launch as lk
from fastconv.kernels import pool2d as pk
from fastconv.kernels.epilogue import RELU

META = torch.device("meta")
MAX_GRID = (2**31 - 1, 65_535, 65_535)


class Launches:
    """Records the conv launches (grid callable, arguments, meta) instead of running them."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, tuned, kernel, config, grid, args, meta) -> None:
        self.calls.append((kernel, grid, args, meta))


@pytest.fixture
def conv_launches(monkeypatch) -> Launches:
    launches = Launches()
    monkeypatch.setattr(sk, "launch", launches)
    intercept_tuned_launches(monkeypatch, launches)  # the cp.async and wgrad kernels
    # the cp.async kernel's launches: the TMA kernel (sm_90, and the interpreter) has its own
    # limits, tested in tests/test_conv2d_tma.py
    monkeypatch.setattr(tk, "_tma_device", lambda tensor: False)
    return launches


def conv_configs(kernel):
    """Every GPU config (all dot kinds) of a conv kernel."""
    factory = {
        ck._implicit_gemm_kernel: ck.conv_configs,
        sk._conv2d_stem_fwd_kernel: sk.stem_configs,
        wk._conv2d_bwd_weight_kernel: wk.wgrad_configs,
    }[kernel]
    return [c for kind in ck.TILES for c in factory(kind, interpreter=False)]


def assert_grids_within_limits(launch) -> list[tuple[int, ...]]:
    kernel, grid, _, meta = launch
    grids = []
    for config in conv_configs(kernel):
        g = grid({**meta, **config.kwargs})
        assert all(0 < size <= limit for size, limit in zip(g, MAX_GRID, strict=False)), g
        grids.append(g)
    return grids


def run_conv_launchers(n, c, h, w, k, r, s, stride, padding=(0, 0), dtype=torch.float16):
    """Forward, dgrad and wgrad launchers on meta tensors (their launches intercepted)."""
    p = (h + 2 * padding[0] - r) // stride[0] + 1
    q = (w + 2 * padding[1] - s) // stride[1] + 1
    x = torch.empty(n, c, h, w, device=META, dtype=dtype)
    weight = torch.empty(k, c, r, s, device=META, dtype=dtype)
    bias = torch.empty(k, device=META, dtype=dtype)
    y = ck.conv2d_fwd(x, weight, bias, stride, padding, (1, 1), (p, q), RELU)
    ck.conv2d_bwd_input(y, weight, x.shape, stride, padding, (1, 1))
    ck.conv2d_bwd_weight(y, x, weight.shape, stride, padding, (1, 1), True)
    return p, q


# (N, C, H, W, K, R, S, stride, padding): pixel counts or tensors past 2**31 elements
BIG_SHAPES = [
    pytest.param(128, 3, 512, 512, 2, 3, 3, (1, 1), (1, 1), id="issue-wgrad-z-65536"),
    pytest.param(9000, 16, 512, 512, 16, 3, 3, (1, 1), (1, 1), id="NPQ-past-2**31"),
    pytest.param(1, 9000, 512, 512, 4, 3, 3, (1, 1), (1, 1), id="one-sample-past-2**31"),
    pytest.param(64, 8, 600, 600, 8, 1, 1, (300, 300), (0, 0), id="dgrad-90000-phases"),
    pytest.param(2, 3, 64, 64, 4, 3, 3, (1, 1), (1, 1), id="small"),
]


@pytest.mark.parametrize(("n", "c", "h", "w", "k", "r", "s", "stride", "padding"), BIG_SHAPES)
def test_conv_grids_within_hardware_limits_for_every_config(
    conv_launches, n, c, h, w, k, r, s, stride, padding
):
    p, q = run_conv_launchers(n, c, h, w, k, r, s, stride, padding)
    fwd, dgrad, wgrad = conv_launches.calls
    for launch in (fwd, dgrad, wgrad):
        grids = assert_grids_within_limits(launch)
        config = conv_configs(launch[0])[0]
        bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        if launch is fwd:  # every (pixel tile, channel tile) has its program (stem too)
            assert grids[0] == (math.ceil(n * p * q / bm) * math.ceil(k / bn),)
        elif launch is dgrad:  # every (pixel tile, stride phase, channel tile)
            per_phase = n * math.ceil(h / stride[0]) * math.ceil(w / stride[1])
            phases = stride[0] * stride[1]
            assert grids[0] == (math.ceil(per_phase / bm) * phases * math.ceil(c / bn),)
    # wgrad: the split programs cover all N*P*Q rows
    args, meta = wgrad[2], wgrad[3]
    rows_per_split = args[17]
    split = wgrad[1]({**meta, "BLOCK_M": 64, "BLOCK_N": 64})[2]
    assert split <= MAX_GRID[2]
    assert rows_per_split * split >= n * p * q > rows_per_split * (split - 1)


@pytest.mark.parametrize("c", [4, 16], ids=["stem", "implicit-gemm"])
def test_channel_tiles_share_grid_axis_0(conv_launches, c):
    # 2**23 output channels: 131,072 channel tiles of 64, past the 65,535 of axes 1 and 2
    x = torch.empty(1, c, 2, 2, device=META)
    weight = torch.empty(2**23, c, 1, 1, device=META)
    ck.conv2d_fwd(x, weight, None, (1, 1), (0, 0), (1, 1), (2, 2))
    _, grid, _, meta = conv_launches.calls[0]
    assert grid({**meta, "BLOCK_M": 64, "BLOCK_N": 64}) == (131_072,)


def test_grid_past_axis_0_limit_raises_a_clear_error(conv_launches):
    # 2**32 output pixels in 64-pixel tiles x 64 channel tiles: 2**32 programs
    x = torch.empty(2**12, 16, 2**10, 2**10, device=META)
    weight = torch.empty(2**12, 16, 1, 1, device=META)
    ck.conv2d_fwd(x, weight, None, (1, 1), (0, 0), (1, 1), (2**10, 2**10))
    _, grid, _, meta = conv_launches.calls[0]
    with pytest.raises(ValueError, match="conv2d forward: grid axis 0 needs 4294967296 programs"):
        grid({**meta, "BLOCK_M": 64, "BLOCK_N": 64})


@pytest.mark.parametrize("split", [None, 10**6])
def test_wgrad_split_never_passes_grid_axis_2(conv_launches, monkeypatch, split):
    # the shape of the issue: 128 * 512 * 512 rows over a 54-element weight asked for 65,536
    monkeypatch.setattr(wk, "WGRAD_ROWS_PER_SPLIT", 512)
    rows = 128 * 512 * 512
    assert ck.wgrad_split(rows, 2 * 3 * 3 * 3) <= 65_535
    rows_per_split, programs = ck.wgrad_partition(rows, 2 * 3 * 3 * 3, split)
    assert programs <= 65_535 and rows_per_split * programs >= rows


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "k", "r", "s", "stride", "padding", "expected"),
    [
        pytest.param(2, 3, 64, 64, 4, 3, 3, (1, 1), (1, 1), (False,) * 3, id="small"),
        # N*P*Q = 2.4e9 pixels (x and y as large): pixels and offsets both pass 2**31
        pytest.param(9000, 1, 512, 512, 1, 1, 1, (1, 1), (0, 0), (True,) * 3, id="pixels"),
        # one sample of 2.4e9 elements (N*P*Q tiny): offsets inside the sample pass 2**31
        pytest.param(1, 9000, 512, 512, 4, 3, 3, (1, 1), (1, 1), (True,) * 3, id="one-sample"),
        # 2**30 pixels: a tile or split slice past the end could wrap int32; int64 too
        pytest.param(4096, 1, 512, 512, 1, 1, 1, (1, 1), (0, 0), (True,) * 3, id="2**30-pixels"),
        # 2**28 pixels: int32 for dgrad; the stem forward pads x's one channel to 4 and
        # wgrad to 16, and those copies span 2**30 and 2**32 elements
        pytest.param(1024, 1, 512, 512, 1, 1, 1, (1, 1), (0, 0), (True, False, True), id="2**28"),
    ],
)
def test_conv_switches_to_int64_exactly_when_needed(
    conv_launches, n, c, h, w, k, r, s, stride, padding, expected
):
    run_conv_launchers(n, c, h, w, k, r, s, stride, padding)
    assert tuple(meta["INDEX_64"] for _, _, _, meta in conv_launches.calls) == expected


def test_int64_rule_covers_a_masked_tile_past_the_end():
    # pid * BLOCK_M + BLOCK_M - 1 for the last tile, and wgrad's row_start + rows_per_split
    # (< 2 * rows): both stay below 2**31 whenever INDEX_64 is off.
    largest_int32 = max(p for p in range(2**29, 2**31, 2**16) if not ck.needs_int64(p))
    assert 2 * largest_int32 + 128 < 2**31


@pytest.fixture
def forced_int64(monkeypatch):
    seen = []

    def always(*args):
        seen.append(True)
        return True

    monkeypatch.setattr(ck, "needs_int64", always)
    monkeypatch.setattr(wk, "needs_int64", always)
    return seen


@pytest.mark.parametrize("stride", [1, 2])
def test_int64_index_path_matches_torch(forced_int64, triton_backend, stride):
    """The INDEX_64 code of all three kernels, forced on, against float64 torch."""
    from fastconv.functional import conv2d_bias_relu

    torch.manual_seed(3)
    # 9 input channels: the implicit-GEMM forward (the stem kernel's own test forces it too)
    x = torch.randn(2, 9, 7, 6, device=DEVICE, requires_grad=True)
    weight = torch.randn(6, 9, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(6, device=DEVICE, requires_grad=True)
    y = conv2d_bias_relu(x, weight, bias, stride, 1)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    assert len(forced_int64) == 3  # fwd, dgrad, wgrad each took the int64 path
    x64, w64, b64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight, bias))
    y64 = F.relu(F.conv2d(x64, w64, b64, stride, 1))
    y64.backward(grad_y.cpu().double())
    for ours, ref in ((y, y64), (x.grad, x64.grad), (weight.grad, w64.grad), (bias.grad, b64.grad)):
        torch.testing.assert_close(ours.detach().cpu().double(), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------- pooling


class PoolKernelSpy:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.calls.append((self.name, grid, args, meta))

        return launch


@pytest.fixture
def pool_launches(monkeypatch):
    calls = []
    for name in dir(pk):
        if name.startswith("_") and name.endswith("_kernel"):
            monkeypatch.setattr(pk, name, PoolKernelSpy(name, calls))
    return calls


@pytest.mark.parametrize(
    ("shape", "int64"),
    [
        pytest.param((2, 3, 16, 16), False, id="small"),
        pytest.param((9000, 4, 256, 256), True, id="past-2**31"),
    ],
)
def test_pool_grids_within_limits_and_int64_past_2_31(pool_launches, shape, int64):
    x = torch.empty(shape, device=META, dtype=torch.float16)
    n, c, h, w = shape
    out = (h // 2, w // 2)
    cf = torch.contiguous_format
    y, argmax = pk.max_pool2d_fwd(x, (2, 2), (2, 2), (0, 0), (1, 1), out, True)
    pk.max_pool2d_bwd(y, argmax, x.shape, cf, (2, 2), (2, 2), (0, 0), (1, 1))
    pk.avg_pool2d_fwd(x, (2, 2), (2, 2), (0, 0), out, True, None)
    pk.avg_pool2d_bwd(y, x.shape, cf, (2, 2), (2, 2), (0, 0), True, None)
    pk.adaptive_avg_pool2d_fwd(x, (7, 7))
    pk.adaptive_avg_pool2d_bwd(torch.empty(n, c, 7, 7, device=META, dtype=x.dtype), x.shape, cf)
    assert len(pool_launches) == 6
    for name, grid, _args, meta in pool_launches:
        assert len(grid) == 1 and 0 < grid[0] <= MAX_GRID[0], (name, grid)
        block = meta.get("BLOCK_M") or meta["BLOCK_R"] * meta["BLOCK_I"]
        pooled = (7, 7) if "adaptive" in name else out
        numel = x.numel() if "bwd" in name else n * c * math.prod(pooled)
        assert grid[0] * block >= numel, name
        assert meta["INDEX_64"] is int64, name


# ------------------------------------- the last programs of a > 2**31 launch, interpreted

requires_interpreter = pytest.mark.skipif(
    torch.cuda.is_available(), reason="runs single programs in Triton's CPU interpreter"
)


@pytest.fixture
def run_programs(monkeypatch):
    """``run(launch, full_grid, first)``: run the programs of ``full_grid`` from index
    ``first`` on (per axis) to the end, in the interpreter, as if the whole grid ran.

    CPU tensors are the interpreter's host copies already (same storage), so its copy back
    after the run is skipped: it would touch every page of the 4-13 GB outputs here."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    set_idx, set_dim = builder.set_grid_idx, builder.set_grid_dim
    monkeypatch.setattr(interpreter.GridExecutor, "_restore_args_dev", lambda *args: None)

    def run(launch, full_grid, first):
        kernel, _, args, meta = launch
        config = lk.INTERPRETER_CONFIGS[0]
        first = tuple(first) + (0,) * (3 - len(first))
        full = tuple(full_grid) + (1,) * (3 - len(full_grid))
        part = tuple(f - s for f, s in zip(full, first, strict=True))
        monkeypatch.setattr(builder, "set_grid_dim", lambda *_: set_dim(*full))
        monkeypatch.setattr(
            builder,
            "set_grid_idx",
            lambda x, y, z: set_idx(x + first[0], y + first[1], z + first[2]),
        )
        kernel[part](
            *args, **meta, **config.kwargs,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
        monkeypatch.setattr(builder, "set_grid_dim", set_dim)
        monkeypatch.setattr(builder, "set_grid_idx", set_idx)

    return run


# 63 x 63 pixels per sample and enough samples for N*H*W past 2**31 (not a tile multiple)
BIG_N, HW = 2**31 // (63 * 63) + 2, 63
BIG_PIXELS = BIG_N * HW * HW


def expanded(*shape, dtype=torch.float16):
    """A (BIG_N, ...) channels-last tensor that stores one sample (batch stride 0): no memory
    needed, and the kernels read it as it is (an NCHW one would be copied channels-last)."""
    torch.manual_seed(5)
    sample = torch.randn(1, *shape).to(dtype).contiguous(memory_format=torch.channels_last)
    return sample.expand(BIG_N, *shape)


def pixel_index(first_pixel):
    """(n, h, w) index tensors of the flattened pixels from ``first_pixel`` to the end."""
    f = torch.arange(first_pixel, BIG_PIXELS)
    return f // (HW * HW), f // HW % HW, f % HW


def last_two_tiles():
    block = lk.INTERPRETER_CONFIGS[0].kwargs["BLOCK_M"]
    tiles = math.ceil(BIG_PIXELS / block)
    return tiles, (tiles - 2) * block


@requires_interpreter
@pytest.mark.parametrize("op", ["fwd", "dgrad"])
def test_last_tiles_past_2_31_pixels(conv_launches, run_programs, op):
    """The last two pixel tiles of a launch over 2.15e9 pixels (13 GB output, untouched but
    for the pages written) compute and store what torch computes, where int32 pixel math
    would wrap."""
    # 16 input channels for the forward (8 or fewer would take the stem kernel, which copies
    # x padded: 17 GB here); 2 output channels of dgrad
    weight = torch.randn(3, 16 if op == "fwd" else 2, 1, 1).half()
    with alloc.poison_allocations(False):
        if op == "fwd":
            x, bias = expanded(16, HW, HW), torch.randn(3).half()
            out = ck.conv2d_fwd(x, weight, bias, (1, 1), (0, 0), (1, 1), (HW, HW), RELU)
        else:
            grad_y = expanded(3, HW, HW)
            out = ck.conv2d_bwd_input(grad_y, weight, (BIG_N, 2, HW, HW), (1, 1), (0, 0), (1, 1))
    (launch,) = conv_launches.calls
    assert launch[3]["INDEX_64"] and BIG_PIXELS > 2**31
    tiles, first_pixel = last_two_tiles()
    n, h, w = pixel_index(first_pixel - 1)
    out[n, :, h, w] = float("nan")
    run_programs(launch, (tiles, 1), (tiles - 2, 0))

    got = out[n, :, h, w].double()  # (pixels, channels)
    assert got[0].isnan().all()  # the pixel before the programs that ran: untouched
    if op == "fwd":
        x_pix = x[0, :, h[1:], w[1:]].double()  # (C, pixels) of the one stored sample
        expected = F.relu(weight.double().reshape(3, 16) @ x_pix + bias.double()[:, None]).T
    else:
        g_pix = grad_y[0, :, h[1:], w[1:]].double()
        expected = (weight.double().reshape(3, 2).T @ g_pix).T
    torch.testing.assert_close(got[1:], expected, atol=2e-3, rtol=1e-3)


@requires_interpreter
def test_wgrad_last_split_past_2_31_rows(conv_launches, run_programs):
    """The last split-K program of a wgrad over 2.15e9 rows sums exactly its rows."""
    # 16 channels each: wgrad reads channels_last tensors of 16k channels without a copy
    grad_y, x = expanded(16, HW, HW), expanded(16, HW, HW)
    ck.conv2d_bwd_weight(grad_y, x, (16, 16, 1, 1), (1, 1), (0, 0), (1, 1), True)
    (launch,) = conv_launches.calls
    _, grid, args, meta = launch
    assert meta["INDEX_64"]
    rows_per_split, parts_w, parts_b = args[17], args[2], args[3]
    split = parts_w.shape[0]
    assert split <= 65_535 and rows_per_split * (split - 1) < BIG_PIXELS <= rows_per_split * split
    run_programs(launch, (1, 1, split), (0, 0, split - 1))

    _, h, w = pixel_index((split - 1) * rows_per_split)
    g, xs = grad_y[0, :, h, w].double(), x[0, :, h, w].double()
    torch.testing.assert_close(parts_w[-1].double(), g @ xs.T, atol=1e-2, rtol=1e-4)
    torch.testing.assert_close(parts_b[-1].double(), g.sum(1), atol=1e-2, rtol=1e-4)
    assert parts_w[-2].isnan().all()  # poisoned, and the other programs did not run
