"""Fused convolutions: fastconv vs cuDNN eager vs torch.compile (GPU only).

``test_conv2d_bias_relu``: conv2d + bias + ReLU on every conv layer of the project's CNN at
64 and 128 px and its training batch size, plus standard VGG/ResNet shapes.
``test_fused_conv2d``: the fused epilogues of ``fused_conv2d``
(:data:`benchmarks.shapes.FUSED_CONV_CASES`: every activation, BatchNorm as scale + bias, a
ResNet block's residual add + ReLU, the CNN's layers with its own activation) against the
same ops run one by one in eager PyTorch and under torch.compile, forward and forward+backward.

Each case records GPU time, TFLOP/s (2*N*K*P*Q*C*R*S per pass; bwd = 2 passes, fwd+bwd = 3;
the epilogue's few operations per output element are not counted) and the speed-up over
cuDNN eager timed in the same session.
"""

from __future__ import annotations

import pytest

from benchmarks.checks import check_conv, check_fused_conv
from benchmarks.environment import (
    CUDA,
    DTYPE_NAMES,
    DTYPES,
    conv_math,
    layout_name,
    requires_gpu,
)
from benchmarks.modes import MODES, mode_rounds
from benchmarks.providers import EAGER, conv_op, fused_conv_op, provider_backend
from benchmarks.shapes import CONV_SHAPES, FUSED_CONV_CASES
from benchmarks.timing import benchmark_gpu, median_gpu_ms

pytestmark = requires_gpu

PASSES = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}
FUSED_CONV_MODES = ("fwd", "fwd+bwd")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda shape: shape.name)
def test_conv2d_bias_relu(benchmark, eager_baseline, memory_format, shape, dtype, mode, provider):
    case = f"conv {shape.name} {conv_math(dtype)} {layout_name(memory_format)} {mode}"
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
        memory_format=layout_name(memory_format),
        mode=mode,
        provider=provider,
        flops=flops,
        tflops=flops / (gpu_ms * 1e-3) / 1e12,
        eager_gpu_ms=eager_ms,
        speedup_vs_eager=speedup,
    )


@pytest.mark.parametrize("mode", FUSED_CONV_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("case", FUSED_CONV_CASES, ids=lambda case: case.name)
def test_fused_conv2d(benchmark, eager_baseline, memory_format, case, dtype, mode, provider):
    shape = case.shape
    case_id = f"fused conv {case.name} {conv_math(dtype)} {layout_name(memory_format)} {mode}"
    benchmark.group = case_id
    inputs, grad_y = case.random_inputs(dtype, CUDA, memory_format)
    with provider_backend(provider):
        op = fused_conv_op(provider, case)
        check_fused_conv(op, inputs, grad_y, case, with_backward=mode != "fwd")
        gpu_ms = benchmark_gpu(benchmark, *mode_rounds(op, inputs, grad_y, mode))
    eager_ms, speedup = eager_baseline.speedup(
        case_id,
        provider,
        gpu_ms,
        lambda: median_gpu_ms(*mode_rounds(fused_conv_op(EAGER, case), inputs, grad_y, mode)),
    )
    flops = shape.flops_per_pass() * PASSES[mode]
    benchmark.extra_info.update(
        kind="epilogue",
        case=shape.name,
        epilogue=case.epilogue.name,
        shape=shape.describe(),
        dtype=DTYPE_NAMES[dtype],
        math=conv_math(dtype),
        memory_format=layout_name(memory_format),
        mode=mode,
        provider=provider,
        flops=flops,
        tflops=flops / (gpu_ms * 1e-3) / 1e12,
        eager_gpu_ms=eager_ms,
        speedup_vs_eager=speedup,
    )
