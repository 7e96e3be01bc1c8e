"""Fused conv2d + bias + ReLU: fastconv vs cuDNN eager vs torch.compile (GPU only).

Shapes: every conv layer of the project's CNN at 64 and 128 px and its training batch
size, plus standard VGG/ResNet shapes. Each case records GPU time, TFLOP/s
(2*N*K*P*Q*C*R*S per pass; bwd = 2 passes, fwd+bwd = 3) and the speed-up over cuDNN eager
timed in the same session.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.checks import check_conv
from benchmarks.environment import CUDA, DTYPE_NAMES, DTYPES, conv_math, requires_gpu
from benchmarks.modes import MODES, mode_rounds
from benchmarks.providers import EAGER, conv_op, provider_backend
from benchmarks.shapes import CONV_SHAPES
from benchmarks.timing import benchmark_gpu, median_gpu_ms

pytestmark = requires_gpu

PASSES = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda shape: shape.name)
def test_conv2d_bias_relu(benchmark, eager_baseline, memory_format, shape, dtype, mode, provider):
    case = f"conv {shape.name} {conv_math(dtype)} {mode}"
    benchmark.group = case
    inputs, grad_y = shape.random_inputs(dtype, CUDA, memory_format)
    with provider_backend(provider):
        op = conv_op(provider, shape)
        check_conv(op, inputs, grad_y, shape, with_backward=mode != "fwd")
        gpu_ms = benchmark_gpu(benchmark, *mode_rounds(op, inputs, grad_y, mode))
    eager_ms, speedup = eager_baseline.speedup(
        case,
        provider,
        gpu_ms,
        lambda: median_gpu_ms(*mode_rounds(conv_op(EAGER, shape), inputs, grad_y, mode)),
    )
    flops = shape.flops_per_pass() * PASSES[mode]
    benchmark.extra_info.update(
        kind="conv",
        case=shape.name,
        shape=shape.describe(),
        dtype=DTYPE_NAMES[dtype],
        math=conv_math(dtype),
        memory_format="channels_last" if memory_format == torch.channels_last else "nchw",
        mode=mode,
        provider=provider,
        flops=flops,
        tflops=flops / (gpu_ms * 1e-3) / 1e12,
        eager_gpu_ms=eager_ms,
        speedup_vs_eager=speedup,
    )
