"""Padding modes (reflect, replicate, circular): fastconv's Triton pad vs torch eager
``F.pad`` vs torch.compile (GPU).

The pad ``nn.Conv2d(padding_mode=...)`` runs before its convolution. fastconv's writes the
padded tensor channels-last (the layout its convolutions read). Each case records GPU time,
effective GB/s (x read and the padded tensor written once; backward: the padded gradient
read and grad_x written) and the speed-up over torch eager.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.checks import check_pad
from benchmarks.environment import CUDA, DTYPE_NAMES, DTYPES, layout_name, requires_gpu
from benchmarks.modes import mode_rounds
from benchmarks.providers import EAGER, pad_op, provider_backend
from benchmarks.shapes import PAD_SHAPES, PadShape
from benchmarks.timing import benchmark_gpu, median_gpu_ms

pytestmark = requires_gpu

PAD_MODES = ("fwd", "bwd")


def bytes_moved(shape: PadShape, output: torch.Tensor) -> int:
    """Minimum traffic of one pass in bytes: the unpadded and the padded tensor once each."""
    return (shape.n * shape.c * shape.h * shape.w + output.numel()) * output.element_size()


@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", PAD_SHAPES, ids=lambda shape: shape.name)
def test_pad2d(benchmark, eager_baseline, memory_format, shape, dtype, mode, provider):
    case = f"pad {shape.name} {DTYPE_NAMES[dtype]} {layout_name(memory_format)} {mode}"
    benchmark.group = case
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=CUDA, dtype=dtype)
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    grad_y = torch.randn_like(F.pad(x.detach(), shape.padding, mode=shape.mode))
    with provider_backend(provider):
        op = pad_op(provider, shape)
        check_pad(op, x, grad_y, shape)
        gpu_ms = benchmark_gpu(benchmark, *mode_rounds(op, (x,), grad_y, mode))
    eager_ms, speedup = eager_baseline.speedup(
        case,
        provider,
        gpu_ms,
        lambda: median_gpu_ms(*mode_rounds(pad_op(EAGER, shape), (x,), grad_y, mode)),
    )
    moved = bytes_moved(shape, grad_y)
    benchmark.extra_info.update(
        kind="pad",
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
