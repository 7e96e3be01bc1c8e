"""fastconv's own host path per call, with the kernel launches stubbed (no GPU needed).

On a GPU a small layer's time is the host's: validation, layout decisions, allocations,
autograd, the launch arguments. These cases run that Python on tiny channels_last fp16 CPU
tensors under Triton's interpreter with every launch replaced by a record
(``fastconv.profiling.record_launches(run=False)``), so the time is fastconv's path alone:
no kernel runs, and the tensors are too small for the CPU's own execution of the other device
ops to matter. Each case also reports, per call, the kernels launched, the other device ops
(``fastconv.profiling.device_ops``) and the Python function calls. Timings are reported,
never asserted; issue 31's targets (2-core CPU, run alone): 25 us per convolution forward,
100 us per forward + backward, 25 us per pooling call.

The interpreter differs from a GPU's path in what it picks, not in how: one autotune config
(no autotuner key), wgrad's split every 64 rows instead of 512 (the forward + backward case
takes one image, which splits on neither), and the TMA path taken on the CPU as on sm_90.
Each signature's launch is planned on its first call (``fastconv.kernels.plans``), as on a
GPU, where the autotuner's choice is then reused too. On a GPU,
``benchmarks/host_overhead.py`` times the real calls.

    pytest benchmarks/test_bench_host.py --benchmark-only
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from fastconv import backend
from fastconv import functional as fcf
from fastconv.conv_bn import Conv2dBatchNormAct
from fastconv.fusion import convert
from fastconv.kernels import alloc
from fastconv.padding import pad2d
from fastconv.profiling import device_ops, record_launches

pytestmark = pytest.mark.skipif(
    not backend.TRITON_INTERPRETER,
    reason="the stubbed host path runs under Triton's interpreter (CPU machines); on a GPU "
    "benchmarks/host_overhead.py times the real calls",
)

CL = torch.channels_last


def _tensor(*shape: int, grad: bool = False) -> torch.Tensor:
    t = torch.randn(*shape, dtype=torch.float16)
    if t.dim() == 4:
        t = t.contiguous(memory_format=CL)
    return t.requires_grad_(grad)


def inference(module, *args):
    with torch.no_grad():
        return module(*args)


def _conv_cases() -> dict[str, Callable[[], object]]:
    x, w, b = _tensor(2, 16, 8, 8), _tensor(16, 16, 3, 3), _tensor(16)
    # one image: 64 output pixels, so the interpreter's wgrad does not split its reduction
    # either (64 rows per split here, 512 on a GPU, where (2, 16, 8, 8) would not split)
    xg, wg = _tensor(1, 16, 8, 8, grad=True), _tensor(16, 16, 3, 3, grad=True)
    bg = _tensor(16, grad=True)
    grad_y = _tensor(1, 16, 8, 8)
    block = Conv2dBatchNormAct(16, 16, 3, padding=1, activation="relu").half()
    block = block.to(memory_format=CL)
    bn = nn.BatchNorm2d(16).half().eval()
    residual = _tensor(2, 16, 8, 8)

    def forward_backward():
        y = fcf.fused_conv2d(xg, wg, bg, padding=1, activation="relu")
        return torch.autograd.grad(y, (xg, wg, bg), grad_y)

    return {
        "conv3x3+bias+relu forward": lambda: fcf.fused_conv2d(
            x, w, b, padding=1, activation="relu"
        ),
        "conv3x3+bias+relu forward+backward": forward_backward,
        "conv+BN+residual+relu forward (eval, no_grad)": lambda: inference(block, x, bn, residual),
    }


def _pool_cases() -> dict[str, Callable[[], object]]:
    x = _tensor(2, 16, 8, 8)
    return {
        "max_pool2d 2x2 forward": lambda: fcf.max_pool2d(x, 2),
        "avg_pool2d 2x2 forward": lambda: fcf.avg_pool2d(x, 2),
        "adaptive_avg_pool2d 1x1 forward": lambda: fcf.adaptive_avg_pool2d(x, 1),
        "pad2d reflect forward": lambda: pad2d(x, (1, 1, 1, 1), "reflect"),
    }


def _resnet18_case() -> dict[str, Callable[[], object]]:
    model, _ = convert(torchvision.models.resnet18(num_classes=2).eval())
    model = model.half().to(memory_format=CL)
    x = _tensor(1, 3, 32, 32)

    return {"converted resnet18 forward (eval, no_grad, 1x3x32x32)": lambda: inference(model, x)}


def _python_calls(fn: Callable[[], object]) -> int:
    """Python function calls one ``fn()`` makes (sys.setprofile's "call" events)."""
    calls = 0

    def count(frame, event, arg) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


CASES = {}
if backend.TRITON_INTERPRETER:
    CASES = {**_conv_cases(), **_pool_cases(), **_resnet18_case()}


@pytest.mark.parametrize("case", list(CASES))
def test_host_path_per_call(benchmark, case):
    """Microseconds per call of fastconv's host path, launches stubbed; extra_info gives the
    launches, other device ops and Python calls of one call."""
    fn = CASES[case]
    benchmark.group = "host path per call (launches stubbed)"
    stubbed = record_launches(run=False)
    with backend.use_backend("triton"), alloc.poison_allocations(False), stubbed:
        fn()  # warm-up: caches, the autotuner's single config
        with record_launches(run=False) as launches, device_ops() as ops:
            fn()
        python_calls = _python_calls(fn)
        benchmark(fn)
    benchmark.extra_info.update(
        launches=len(launches),
        kernels=sorted({launch.name for launch in launches}),
        device_ops=len(ops.names),
        device_op_names=sorted(set(ops.names)),
        python_calls=python_calls,
    )
