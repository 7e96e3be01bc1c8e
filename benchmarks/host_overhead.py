"""Where a fastconv call spends its time outside the GPU kernels (CUDA GPU only).

On small layers a call's GPU time is set by how fast the host issues its launches: the first
H200 run (benchmarks/results/nvidia-h200-2026-11-27.md) timed a 2x2 max-pool of a
16x32x64x64 tensor at 0.25 ms for fastconv against 0.04 ms for torch, and fastconv's
convolutions near 0.4-0.7 ms whatever their size. For each op below, at a shape small enough
that the kernels take microseconds, this prints:

* host microseconds per call (median of repeats of 200 back-to-back calls, one sync each),
  fastconv and torch eager;
* the CUDA kernels one fastconv call launches (torch.profiler), by name;
* the 15 Python functions with the most own time in 200 fastconv calls (cProfile).

    python benchmarks/host_overhead.py
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fastconv import functional as FC
from fastconv.backend import use_backend

CALLS = 200
REPEATS = 5


def host_us_per_call(fn: Callable[[], object]) -> float:
    """Median over REPEATS of the wall time of CALLS back-to-back calls, per call."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / CALLS * 1e6)
    return statistics.median(times)


def kernels_per_call(fn: Callable[[], object]) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name[:70] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def own_time_profile(fn: Callable[[], object]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """name -> (fastconv call, torch eager call) on bf16 CUDA tensors."""
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(16, 32, 64, 64, device=dev, dtype=dt)
    w = torch.randn(32, 32, 3, 3, device=dev, dtype=dt)
    b = torch.randn(32, device=dev, dtype=dt)
    xg = x.clone().requires_grad_()
    wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
    gy = torch.randn(16, 32, 64, 64, device=dev, dtype=dt)

    def fc_train_step() -> None:
        FC.conv2d_bias_relu(xg, wg, bg, 1, 1).backward(gy)

    def torch_train_step() -> None:
        F.relu(F.conv2d(xg, wg, bg, 1, 1)).backward(gy)

    return {
        "max_pool2d 2x2 fwd": (lambda: FC.max_pool2d(x, 2), lambda: F.max_pool2d(x, 2)),
        "conv3x3+bias+relu fwd": (
            lambda: FC.conv2d_bias_relu(x, w, b, 1, 1),
            lambda: F.relu(F.conv2d(x, w, b, 1, 1)),
        ),
        "conv3x3+bias+relu fwd+bwd": (fc_train_step, torch_train_step),
    }


def main() -> None:
    rows = []
    with use_backend("triton"):
        for name, (fastconv_call, torch_call) in cases().items():
            fastconv_us, torch_us = host_us_per_call(fastconv_call), host_us_per_call(torch_call)
            kernels = kernels_per_call(fastconv_call)
            print(f"\n=== {name}: fastconv {len(kernels)} kernels: {kernels}")
            own_time_profile(fastconv_call)
            rows.append((name, fastconv_us, torch_us, len(kernels)))
    print(f"\n{'op':28} {'fastconv us/call':>17} {'torch us/call':>14} {'kernels':>8}")
    for name, fastconv_us, torch_us, n_kernels in rows:
        print(f"{name:28} {fastconv_us:17.1f} {torch_us:14.1f} {n_kernels:8d}")


if __name__ == "__main__":
    main()
