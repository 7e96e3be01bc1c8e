"""Every autotune config of every conv kernel computes the right result, not only the one
a GPU's autotuner would pick; and every config follows the num_warps rule.

Under the interpreter the autotuners hold one config only, so each GPU config (from the
kernels' own config factories, ``interpreter=False, wide=True``: the fp16, tf32 and IEEE
lists of the implicit GEMM, run as the forward, dgrad and dgrad at stride 2, the TMA
kernel's fp16 and tf32 lists, run as the forward and dgrad, and wgrad's three, each with the
8-warp tiles of the ``FASTCONV_WIDE_TILES`` switch) is launched explicitly through the
launchers' ``config`` argument. Each runs one small shape sized from its own tiles so that
every tile axis has a full tile and a partial one (200 pixels = 128 + 72 = 3 * 64 + 8 = 6 *
32 + 8, or 392 = 256 + 136 for 256-pixel tiles; a TMA box of 1.5 x BP by 1.5 x BQ pixels;
channels 1.5 x the tile; the reduction in 1.5 chunks, or 200 rows in two split-K slices of
100). Outputs and workspaces start as NaN (tests/conftest.py poisons every allocation), and
results are compared with float64 torch. Pooling has no autotune configs (its tiles follow
from the shape), tested by tests/test_pool2d.py.
"""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE

from fastconv.kernels import conv2d as ck
from fastconv.kernels import conv2d_tma as tk
from fastconv.kernels import conv2d_wgrad as wk
from fastconv.kernels import launch
from fastconv.kernels.epilogue import RELU, activation_bwd

# config list (dot kind) -> (allow_tf32, the dtypes it serves)
DOT_KINDS = {"fp16": (True, [torch.float16]), "tf32": (True, [torch.float32])}
DOT_KINDS["ieee"] = (False, [torch.float32])

# op -> (config factory, its dot kinds); the TMA kernel has no IEEE fp32 list.
KERNELS = {op: (ck.conv_configs, list(ck.TILES)) for op in ("fwd", "dgrad", "dgrad-stride2")}
KERNELS |= {op: (tk.tma_configs, list(tk.TMA_TILES)) for op in ("tma-fwd", "tma-dgrad")}
KERNELS["wgrad"] = (wk.wgrad_configs, list(wk.MAX_BLOCK_K))

# The 8-warp tiles that FASTCONV_WIDE_TILES appends (docs/decisions.md), per factory and
# dot kind, as config_id names them.
WIDE_CONFIG_IDS = {
    ck.conv_configs: {
        "fp16": ["128x256x32-w8-s4", "256x128x32-w8-s4"],
        "tf32": [],
        "ieee": [],
    },
    tk.tma_configs: {
        "fp16": ["8x16x256x64-w8-s4", "16x16x128x64-w8-s4"],
        "tf32": ["8x16x256x32-w8-s4", "16x16x128x32-w8-s4"],
    },
    wk.wgrad_configs: {
        "fp16": ["128x256x32-w8-s4", "256x128x32-w8-s4"],
        "tf32": ["128x256x16-w8-s4"],
        "ieee": [],
    },
}


def config_lists(wide: bool = True):
    """{op: [(list name, allow_tf32, dtypes, configs)]} of every GPU config list, with the
    8-warp tiles or without."""
    return {
        op: [(kind, *DOT_KINDS[kind], factory(kind, False, wide)) for kind in kinds]
        for op, (factory, kinds) in KERNELS.items()
    }


def config_id(config) -> str:
    """The tile (BLOCK_M x BLOCK_N x BLOCK_K, or BP x BQ x BLOCK_N x BLOCK_K), warps, stages:
    the compile gate's ``config_tag``."""
    tile = "x".join(str(size) for size in config.kwargs.values())
    return f"{tile}-w{config.num_warps}-s{config.num_stages}"


def all_configs():
    """(op, allow_tf32, dtype, config) for every config of every list and the dtypes it
    serves."""
    cases = []
    for op, lists in config_lists().items():
        for name, tf32, dtypes, configs in lists:
            for config in configs:
                for dtype in dtypes:
                    dt = str(dtype).removeprefix("torch.")
                    case_id = f"{op}-{name}-{dt}-{config_id(config)}"
                    cases.append(pytest.param(op, tf32, dtype, config, id=case_id))
    return cases


def tolerance(dtype, tf32):
    if dtype == torch.float16:
        return 2e-5, 1e-3
    if not tf32 or not torch.cuda.is_available():  # the interpreter ignores tf32
        return 2e-5, 1e-4
    return 2e-3, 1e-2


@pytest.mark.parametrize(("op", "tf32", "dtype", "config"), all_configs())
def test_every_config_matches_torch(monkeypatch, op, tf32, dtype, config):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    bn, bk = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
    n, r, s = 2, 3, 3  # padding 1, stride 1: as many output pixels as input pixels
    if op.startswith("tma"):  # boxes of BP x BQ output (forward) or input (dgrad) pixels
        bp, bq = config.kwargs["BP"], config.kwargs["BQ"]
        h, w = bp + bp // 2, bq + bq // 2
    elif op == "wgrad" or config.kwargs["BLOCK_M"] <= 128:
        h = w = 10  # 200 pixels
    else:
        h = w = 14  # 392 pixels for 256-pixel tiles
    stride = (2, 2) if op == "dgrad-stride2" else (1, 1)  # dgrad: 4 phases of a quarter
    role = op.removeprefix("tma-")
    if role == "fwd":  # M pixels, N output channels, reduction over input-channel chunks
        c, k = bk + bk // 2, bn + bn // 2
    elif role.startswith("dgrad"):  # M pixels, N input channels, reduction over K chunks
        c, k = bn + bn // 2, bk + bk // 2
    else:  # M output channels, N channels of a tap, reduction over 200 rows (2 slices)
        bm = config.kwargs["BLOCK_M"]
        c, k = bn + bn // 2, bm + bm // 2
    torch.manual_seed(11)
    x = torch.randn(n, c, h, w).to(DEVICE, dtype)
    weight = (torch.randn(k, c, r, s) / math.sqrt(c * r * s)).to(DEVICE, dtype)
    bias = torch.randn(k).to(DEVICE, dtype)
    atol, rtol = tolerance(dtype, tf32)

    x64, w64, b64 = (t.cpu().double().requires_grad_() for t in (x, weight, bias))
    pre64 = F.conv2d(x64, w64, b64, stride, padding=1)
    y64 = F.relu(pre64)
    grad_y = torch.randn(y64.shape).to(DEVICE, dtype)
    relu_output = y64.detach().to(DEVICE, dtype)  # the saved forward output the mask reads
    g64 = grad_y.cpu().double() * (relu_output.cpu() > 0)
    assert (relu_output == 0).any() and (relu_output > 0).any()
    pre64.backward(g64)

    def check(actual, expected, reduction, what):
        assert not actual.isnan().any(), f"{what}: unwritten (NaN) elements"
        torch.testing.assert_close(
            actual.cpu().double(),
            expected,
            atol=atol * math.sqrt(reduction),
            rtol=rtol,
            msg=lambda m: f"{what} with {config_id(config)}: {m}",
        )

    grad_y = activation_bwd(grad_y, relu_output, "relu", 0.0)
    if op == "fwd":
        y = ck.conv2d_fwd(x, weight, bias, (1, 1), (1, 1), (1, 1), (h, w), RELU, config=config)
        check(y, y64.detach(), c * r * s, "output")
    elif op == "tma-fwd":
        y = tk.conv2d_fwd_tma(x, weight, bias, (1, 1), (1, 1), (1, 1), (h, w), RELU, config)
        check(y, y64.detach(), c * r * s, "output")
    elif op.startswith("dgrad"):
        grad_x = ck.conv2d_bwd_input(grad_y, weight, x.shape, stride, (1, 1), (1, 1), config=config)
        check(grad_x, x64.grad, k * r * s, "grad input")
    elif op == "tma-dgrad":
        grad_x = tk.conv2d_bwd_input_tma(grad_y, weight, x.shape, stride, (1, 1), (1, 1), config)
        check(grad_x, x64.grad, k * r * s, "grad input")
    else:
        grad_w, grad_b = ck.conv2d_bwd_weight(
            grad_y, x, weight.shape, (1, 1), (1, 1), (1, 1), True,
            split=2, config=config,
        )  # fmt: skip
        check(grad_w, w64.grad, n * h * w, "grad weight")
        check(grad_b, b64.grad, n * h * w, "grad bias")
    if op != "dgrad-stride2":
        assert grad_y.shape[2:] == (h, w)  # full and partial tiles (boxes) of every size


def test_config_argument_launches_exactly_that_config():
    """``config`` reaches the kernel launch (else the test above would run the interpreter's
    one autotuner config every time)."""
    launched = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: launched.append(meta)

    config = ck.conv_configs(interpreter=False)[0]
    launch.launch(None, Kernel(), config, None, (), {"R": 3})
    assert launched == [
        {"R": 3, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    ]


@pytest.mark.parametrize("op", KERNELS)
def test_default_configs_capped_at_4_warps_on_the_tap_loop(op):
    # The main loops walk (tap, channel chunk) steps, the loop shape of pytorch issue 173068
    # (miscompiled with 8 warps, Triton issue 1254): every default config is capped at 4
    # warps; the 8-warp tiles stay behind FASTCONV_WIDE_TILES until a GPU run clears them.
    for _, _, _, configs in config_lists(wide=False)[op]:
        for config in configs:
            assert config.num_warps <= launch.MAX_NUM_WARPS == 4, config_id(config)


@pytest.mark.parametrize("op", KERNELS)
def test_wide_lists_add_exactly_the_documented_8_warp_tiles(op):
    factory, _ = KERNELS[op]
    default, wide = config_lists(wide=False)[op], config_lists(wide=True)[op]
    for (kind, *_, default_configs), (_, *_, wide_configs) in zip(default, wide, strict=True):
        expected = [config_id(c) for c in default_configs] + WIDE_CONFIG_IDS[factory][kind]
        assert [config_id(c) for c in wide_configs] == expected, kind


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("On", True), (" yes ", True), ("true", True), ("", False), ("0", False)]
    + [("off", False), ("no", False), ("FALSE", False)],
)
def test_wide_tiles_switch_values(monkeypatch, value, enabled):
    monkeypatch.setenv(launch.WIDE_TILES_ENV_VAR, value)
    assert launch.wide_tiles_requested() is enabled


@pytest.mark.parametrize("value", ["2", "enabled", "1 0"])
def test_wide_tiles_switch_rejects_other_values(monkeypatch, value):
    monkeypatch.setenv(launch.WIDE_TILES_ENV_VAR, value)
    message = "FASTCONV_WIDE_TILES must be one of 1, true, on, yes, 0, false, off, no"
    with pytest.raises(ValueError, match=message):
        launch.wide_tiles_requested()


# What the compiled autotuners hold, read in a fresh process without the interpreter (under
# it an autotuner holds one config): the warp counts of every conv autotuner's configs.
AUTOTUNER_WARPS = (
    "from fastconv.kernels import conv2d, conv2d_tma, conv2d_wgrad\n"
    "tuners = [*conv2d._TUNED.values(), *conv2d_tma._TUNED.values(), "
    "*conv2d_wgrad._TUNED.values()]\n"
    "print(sorted({c.num_warps for tuner in tuners for c in tuner.configs}))"
)


def _import_with_switch(value: str | None) -> subprocess.CompletedProcess:
    unset = ("TRITON_INTERPRET", launch.WIDE_TILES_ENV_VAR)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if value is not None:
        env[launch.WIDE_TILES_ENV_VAR] = value
    command = [sys.executable, "-c", AUTOTUNER_WARPS]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("value", "warps"), [(None, "[4]"), ("0", "[4]"), ("1", "[4, 8]")])
def test_autotuners_follow_the_switch_at_import(value, warps):
    result = _import_with_switch(value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == warps


def test_a_bad_switch_value_fails_the_import():
    result = _import_with_switch("sometimes")
    assert result.returncode != 0
    assert "ValueError: FASTCONV_WIDE_TILES must be one of" in result.stderr
