"""2D pooling (max, average, adaptive average): fastconv vs torch eager vs torch.compile (GPU).

Shapes: the pooling layers of the project's CNN at 64 and 128 px and its training batch
size, plus standard VGG/ResNet/DenseNet ones. Each case records GPU time, effective GB/s
(input read and output written once per pass: fwd reads x and writes y, bwd reads grad_y,
plus x for max pooling's argmax, and writes grad_x) and the speed-up over torch eager.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.checks import check_pool, tie_free_pool_input
from benchmarks.environment import CUDA, DTYPE_NAMES, DTYPES, layout_name, requires_gpu
from benchmarks.modes import mode_rounds
from benchmarks.providers import EAGER, pool_op, provider_backend
from benchmarks.shapes import POOL_SHAPES, PoolShape
from benchmarks.timing import benchmark_gpu, median_gpu_ms

pytestmark = requires_gpu

POOL_MODES = ("fwd", "bwd")


def bytes_moved(shape: PoolShape, output: torch.Tensor, mode: str) -> int:
    """Minimum traffic of one ``mode`` pass in bytes (see the module docstring)."""
    n_input = shape.n * shape.c * shape.h * shape.w
    elements = n_input + output.numel()
    if mode == "bwd" and shape.op == "max_pool2d":
        elements += n_input
    return elements * output.element_size()


@pytest.mark.parametrize("mode", POOL_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", POOL_SHAPES, ids=lambda shape: shape.name)
def test_pool2d(benchmark, eager_baseline, memory_format, shape, dtype, mode, provider):
    case = f"pool {shape.name} {DTYPE_NAMES[dtype]} {layout_name(memory_format)} {mode}"
    benchmark.group = case
    if shape.op == "max_pool2d":
        x = tie_free_pool_input(shape, dtype, CUDA)
    else:
        x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=CUDA, dtype=dtype)
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    grad_y = torch.randn_like(getattr(F, shape.op)(x.detach(), **shape.kwargs))
    with provider_backend(provider):
        op = pool_op(provider, shape)
        check_pool(op, x, grad_y, shape)
        gpu_ms = benchmark_gpu(benchmark, *mode_rounds(op, (x,), grad_y, mode))
    eager_ms, speedup = eager_baseline.speedup(
        case,
        provider,
        gpu_ms,
        lambda: median_gpu_ms(*mode_rounds(pool_op(EAGER, shape), (x,), grad_y, mode)),
    )
    moved = bytes_moved(shape, grad_y, mode)
    benchmark.extra_info.update(
        kind="pool",
        case=shape.name,
        shape=shape.describe(),
        dtype=DTYPE_NAMES[dtype],
        memory_format=layout_name(memory_format),
        mode=mode,
        provider=provider,
        bytes=moved,
        gbps=moved / (gpu_ms * 1e-3) / 1e9,
        eager_gpu_ms=eager_ms,
        speedup_vs_eager=speedup,
    )
