"""Every autotune config of every conv kernel computes the right result, not only the one
a GPU's autotuner would pick; and every config follows the num_warps rule.

Under the interpreter the autotuners hold one config only, so each GPU config (from the
kernels' own config factories, ``interpreter=False``: the fp16, tf32 and IEEE lists of the
implicit GEMM, run as the forward, dgrad and dgrad at stride 2, and wgrad's three) is
launched explicitly through the launchers' ``config`` argument. Each runs one small shape
sized from its own tiles so that every tile axis has a full tile and a partial one (200
pixels = 128 + 72 = 3 * 64 + 8 = 6 * 32 + 8; channels 1.5 x the tile; the reduction in 1.5
chunks, or 200 rows in two split-K slices of 100). Outputs and workspaces start as NaN
(tests/conftest.py poisons every allocation), and results are compared with float64 torch.
Pooling has no autotune configs (its tiles follow from the shape), tested by
tests/test_pool2d.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE

from fastconv.kernels import conv2d as ck
from fastconv.kernels import conv2d_wgrad as wk
from fastconv.kernels import launch
from fastconv.kernels.epilogue import RELU, activation_bwd

# config list (dot kind) -> (allow_tf32, the dtypes it serves)
DOT_KINDS = {"fp16": (True, [torch.float16]), "tf32": (True, [torch.float32])}
DOT_KINDS["ieee"] = (False, [torch.float32])


def config_lists():
    """{op: [(list name, allow_tf32, dtypes, configs)]} of every GPU config list."""
    factories = {op: ck.conv_configs for op in ("fwd", "dgrad", "dgrad-stride2")}
    factories["wgrad"] = wk.wgrad_configs
    return {
        op: [
            (kind, tf32, dtypes, factory(kind, interpreter=False))
            for kind, (tf32, dtypes) in DOT_KINDS.items()
        ]
        for op, factory in factories.items()
    }


def config_id(config) -> str:
    m, n, k = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return f"{m}x{n}x{k}-w{config.num_warps}-s{config.num_stages}"


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
    bm, bn, bk = (config.kwargs[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    n, h, w, r, s = 2, 10, 10, 3, 3  # 200 output pixels (padding 1, stride 1)
    stride = (2, 2) if op == "dgrad-stride2" else (1, 1)  # dgrad: 4 phases of 50 pixels
    if op == "fwd":  # M pixels, N output channels, reduction over input-channel chunks
        c, k = bk + bk // 2, bn + bn // 2
    elif op.startswith("dgrad"):  # M pixels, N input channels, reduction over K chunks
        c, k = bn + bn // 2, bk + bk // 2
    else:  # M output channels, N channels of a tap, reduction over 200 rows (2 slices)
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
    elif op.startswith("dgrad"):
        grad_x = ck.conv2d_bwd_input(grad_y, weight, x.shape, stride, (1, 1), (1, 1), config=config)
        check(grad_x, x64.grad, k * r * s, "grad input")
    else:
        grad_w, grad_b = ck.conv2d_bwd_weight(
            grad_y, x, weight.shape, (1, 1), (1, 1), (1, 1), True,
            split=2, config=config,
        )  # fmt: skip
        check(grad_w, w64.grad, n * h * w, "grad weight")
        check(grad_b, b64.grad, n * h * w, "grad bias")
    if op != "dgrad-stride2":
        assert grad_y.shape[2:] == (h, w)  # 200 pixels: full and partial tiles of 64 and 128


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


@pytest.mark.parametrize("op", config_lists())
def test_num_warps_capped_at_4_on_the_tap_loop(op):
    # The main loops walk (tap, channel chunk) steps, the loop shape of pytorch issue 173068
    # (miscompiled with 8 warps, Triton issue 1254): every config is capped at 4 warps
    # until docs/decisions.md clears a loop shape for more.
    for _, _, _, configs in config_lists()[op]:
        for config in configs:
            assert config.num_warps <= launch.MAX_NUM_WARPS == 4, config_id(config)
