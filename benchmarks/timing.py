"""Timing for pytest-benchmark's pedantic mode: each round is one synchronized measurement.

GPU rounds: ``setup`` refills the inputs with fresh random numbers, flushes the L2 cache
(as :func:`triton.testing.do_bench` does) and synchronizes; the timed target records a CUDA
event, runs the op, records a second event and synchronizes. pytest-benchmark's own
statistics are therefore host wall time of a synchronized round (launch overhead included),
and the CUDA events give the GPU time of the same round, from which TFLOP/s, GB/s and
speed-ups are computed. Warm-up rounds (compilation, autotuning, caches) are excluded.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

GPU_ROUNDS = 50
GPU_WARMUP_ROUNDS = 10
L2_FLUSH_BYTES = 256 * 1024**2  # larger than any current GPU's L2 cache, as in do_bench

Prepare = Callable[[], tuple]
"""Makes one round's arguments (untimed); the op is then called as ``op(*arguments)``."""


@functools.cache
def _l2_flush_buffer() -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")


class CudaEventRounds:
    """A pedantic target that times ``op`` with CUDA events, one synchronized call per round."""

    def __init__(self, op: Callable[..., Any]) -> None:
        self.op = op
        self.gpu_ms: list[float] = []
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def setup(self, prepare: Prepare) -> tuple[tuple, dict]:
        """Fresh arguments from ``prepare``, a cold L2 cache and an idle GPU."""
        arguments = prepare()
        _l2_flush_buffer().zero_()
        torch.cuda.synchronize()
        return arguments, {}

    def __call__(self, *arguments: Any) -> None:
        self._start.record()
        self.op(*arguments)
        self._end.record()
        self._end.synchronize()
        self.gpu_ms.append(self._start.elapsed_time(self._end))


def median_gpu_ms(
    op: Callable[..., Any],
    prepare: Prepare,
    rounds: int = GPU_ROUNDS,
    warmup_rounds: int = GPU_WARMUP_ROUNDS,
) -> float:
    """Median GPU milliseconds of ``op``, timed as in :func:`benchmark_gpu` but outside pytest."""
    timer = CudaEventRounds(op)
    for _ in range(warmup_rounds + rounds):
        arguments, _ = timer.setup(prepare)
        timer(*arguments)
    return statistics.median(timer.gpu_ms[warmup_rounds:])


def benchmark_gpu(
    benchmark,
    op: Callable[..., Any],
    prepare: Prepare,
    rounds: int = GPU_ROUNDS,
    warmup_rounds: int = GPU_WARMUP_ROUNDS,
) -> float:
    """Run ``op`` under ``benchmark.pedantic``; return the median GPU time of the timed rounds (ms).

    Also stores ``gpu_ms`` (that median) and ``gpu_ms_min`` in ``benchmark.extra_info``.
    """
    timer = CudaEventRounds(op)
    benchmark.pedantic(
        timer,
        setup=functools.partial(timer.setup, prepare),
        rounds=rounds,
        warmup_rounds=warmup_rounds,
    )
    # Under --benchmark-disable pedantic makes a single call, which is all there is to report.
    timed = timer.gpu_ms[warmup_rounds : warmup_rounds + rounds] or timer.gpu_ms
    gpu_ms = statistics.median(timed)
    benchmark.extra_info.update(gpu_ms=gpu_ms, gpu_ms_min=min(timed))
    return gpu_ms


class WallClockRounds:
    """A pedantic target that records each call's host wall time (for CPU cases)."""

    def __init__(self, op: Callable[..., Any]) -> None:
        self.op = op
        self.seconds: list[float] = []

    def __call__(self, *arguments: Any) -> None:
        start = time.perf_counter()
        self.op(*arguments)
        self.seconds.append(time.perf_counter() - start)


def median_wall_seconds(
    op: Callable[..., Any], prepare: Prepare, rounds: int, warmup_rounds: int
) -> float:
    """Median wall seconds of ``op``, timed as in :func:`benchmark_cpu` but outside pytest."""
    timer = WallClockRounds(op)
    for _ in range(warmup_rounds + rounds):
        timer(*prepare())
    return statistics.median(timer.seconds[warmup_rounds:])


def benchmark_cpu(
    benchmark, op: Callable[..., Any], prepare: Prepare, rounds: int, warmup_rounds: int
) -> float:
    """Run ``op`` on the CPU under ``benchmark.pedantic``; return its median seconds per round."""
    timer = WallClockRounds(op)
    benchmark.pedantic(
        timer, setup=lambda: (prepare(), {}), rounds=rounds, warmup_rounds=warmup_rounds
    )
    timed = timer.seconds[warmup_rounds : warmup_rounds + rounds] or timer.seconds
    return statistics.median(timed)
