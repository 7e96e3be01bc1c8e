"""Device work per call: the kernels each op launches and every other device op it runs.

On a GPU every launch and every copy, fill or reduction beside the kernels costs host time
and a trip through the stream; a call should launch its kernels and nothing else. Here the
launches are intercepted (``fastconv.profiling.record_launches(run=False)``: the host path
runs, no kernel does) and the other device work is read from the profiler
(``fastconv.profiling.device_ops``: allocations and views launch nothing and are not
counted). Allocation poisoning is off: its fills are a test device, not the library's work.
"""

import pytest
import torch
from conftest import DEVICE

from fastconv import backend
from fastconv import functional as fcf
from fastconv.kernels import alloc, conv2d_stem
from fastconv.padding import pad2d
from fastconv.profiling import device_ops, record_launches

GEMM = "_implicit_gemm_kernel"
TMA = "_tma_implicit_gemm_kernel"
WGRAD = "_conv2d_bwd_weight_kernel"


@pytest.fixture(autouse=True)
def stubbed_launches():
    """Triton backend, launches stubbed, allocations not poisoned."""
    with backend.use_backend("triton"), alloc.poison_allocations(False), record_launches(False):
        yield


def device_work(fn) -> tuple[list[str], list[str]]:
    """(kernels launched, other device ops) of one call of ``fn`` after a warm-up call."""
    fn()
    with record_launches(run=False) as launches, device_ops() as ops:
        fn()
    return [launch.name for launch in launches], ops.names


def tensor(*shape, dtype=torch.float16, memory_format=torch.channels_last, grad=False):
    t = torch.randn(*shape, dtype=dtype, device=DEVICE)
    if t.dim() == 4:
        t = t.contiguous(memory_format=memory_format)
    return t.requires_grad_(grad)


POOLS = {
    "max_pool2d": (lambda x: fcf.max_pool2d(x, 2), "_max_pool2d"),
    "avg_pool2d": (lambda x: fcf.avg_pool2d(x, 2), "_avg_pool2d"),
    "adaptive_avg_pool2d": (lambda x: fcf.adaptive_avg_pool2d(x, 1), "_adaptive_avg_pool2d"),
    "pad2d": (lambda x: pad2d(x, (1, 1, 1, 1), "reflect"), "_pad2d"),
}


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("op", POOLS)
def test_pooling_and_padding_launch_one_kernel_each_way_and_nothing_else(op, memory_format):
    """Forward: one kernel, no other device op; backward: one more kernel, nothing else (no
    zero-filled gradient for the non-differentiable argmax either)."""
    fn, prefix = POOLS[op]
    x = tensor(2, 16, 8, 8, memory_format=memory_format)
    forward, ops = device_work(lambda: fn(x))
    assert len(forward) == 1 and forward[0].startswith(prefix), forward
    assert ops == []

    x_grad = x.detach().requires_grad_()
    grad_y = torch.ones_like(fn(x))
    both, ops = device_work(lambda: torch.autograd.grad(fn(x_grad), x_grad, grad_y))
    assert both[0] == forward[0] and len(both) == 2 and both[1].startswith(prefix), both
    assert ops == []


@pytest.mark.parametrize(
    ("dtype", "memory_format", "kernel", "layout_copies"),
    [
        pytest.param(torch.float32, torch.channels_last, GEMM, [], id="gemm-channels_last"),
        pytest.param(
            torch.float32, torch.contiguous_format, GEMM, ["clone", "clone", "clone", "copy_"],
            id="gemm-nchw-copies-x-weight-residual-and-y",
        ),
        pytest.param(
            torch.float16, torch.channels_last, TMA, [], id="tma-channels_last"
        ),
        pytest.param(
            torch.float16, torch.contiguous_format, TMA, ["clone", "clone", "clone", "copy_"],
            id="tma-nchw-copies-x-weight-residual-and-y",
        ),
    ],
)  # fmt: skip
def test_conv_forward_launches_one_kernel_and_only_layout_copies(
    dtype, memory_format, kernel, layout_copies
):
    """A fused convolution forward (bias, residual, ReLU) is one kernel; NCHW operands add
    their channels-last copies and the copy of the result back, nothing else."""
    x = tensor(1, 16, 8, 8, dtype=dtype, memory_format=memory_format)
    weight = tensor(16, 16, 3, 3, dtype=dtype, memory_format=memory_format)
    bias, residual = tensor(16, dtype=dtype), tensor(1, 16, 8, 8, dtype=dtype)
    residual = residual.contiguous(memory_format=memory_format)

    def forward():
        return fcf.fused_conv2d(x, weight, bias, padding=1, activation="relu", residual=residual)

    launches, ops = device_work(forward)
    assert launches == [kernel]
    assert sorted(ops) == layout_copies


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["gemm", "tma"])
def test_conv_with_one_output_pixel_writes_its_result_in_place(dtype):
    """An (N, K, 1, 1) output is the same memory in NCHW and channels_last: a contiguous
    input's convolution writes it directly, no copy back (the input's own layout copy
    stays). The global-pool end of a ResNet at low resolution."""
    x = tensor(2, 16, 3, 3, dtype=dtype, memory_format=torch.contiguous_format)
    weight = tensor(16, 16, 3, 3, dtype=dtype)
    launches, ops = device_work(lambda: fcf.conv2d(x, weight))
    assert len(launches) == 1 and ops == ["clone"]  # x to channels-last


def test_stem_conv_packs_its_weight_once_per_version():
    """A 3-channel stem convolution is its kernel and the zero-padded NHWC copy of x (a fill
    and a copy); the padded weight is made once per version of the weight: an in-place
    update makes a new one, used at once."""
    x = tensor(1, 3, 8, 8, dtype=torch.float32)
    weight = tensor(16, 3, 3, 3, dtype=torch.float32)

    def forward():
        return fcf.conv2d(x, weight, padding=1)

    launches, ops = device_work(forward)
    assert launches == ["_conv2d_stem_fwd_kernel"]
    assert sorted(ops) == ["copy_", "zeros"]  # x_pad
    with torch.no_grad():
        weight.mul_(-1.0)
    with device_ops() as repacked:
        forward()
    assert sorted(repacked.names) == ["copy_", "copy_", "zeros", "zeros"]  # x_pad and w_pad
    packed = conv2d_stem._PADDED_WEIGHTS.get(weight, conv2d_stem.pad_weight, 4)
    assert torch.equal(packed, conv2d_stem.pad_weight(weight, 4))  # the updated weight's


@pytest.mark.parametrize(
    ("dtype", "dgrad"), [(torch.float32, GEMM), (torch.float16, TMA)], ids=["cp.async", "tma"]
)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_conv_backward_launches_dgrad_and_wgrad_only(dtype, dgrad, bias):
    """Without an activation and with one split-K program (64 output pixels, the
    interpreter's rows per split), the backward is the input-gradient and weight-gradient
    kernels and no other device work: both read the channels-last weight in place (fp32
    with tf32 off takes the cp.async kernel, fp16 the TMA one), and wgrad writes grad_w
    (channels-last, as the weight) and grad_b themselves."""
    x = tensor(1, 16, 8, 8, dtype=dtype, grad=True)
    weight = tensor(16, 16, 3, 3, dtype=dtype, grad=True)
    b = tensor(16, dtype=dtype, grad=True) if bias else None
    y = fcf.conv2d(x, weight, b, padding=1)
    grad_y = torch.ones_like(y)
    inputs = (x, weight, b) if bias else (x, weight)
    with torch.backends.cudnn.flags(allow_tf32=False):
        launches, ops = device_work(
            lambda: torch.autograd.grad(y, inputs, grad_y, retain_graph=True)
        )
    assert launches == [dgrad, WGRAD]
    assert ops == []


def test_eval_batchnorm_fold_is_computed_once_per_state():
    """conv + BatchNorm in eval mode, without gradients: the fold's arithmetic runs once per
    state of the BatchNorm; later calls are the kernel alone, and an in-place update of a
    running statistic (a new version) refolds, with the new statistics' result."""
    from fastconv.conv_bn import Conv2dBatchNormAct, fold_batch_norm

    conv = Conv2dBatchNormAct(16, 16, 3, padding=1, activation="relu").to(DEVICE)
    conv = conv.to(memory_format=torch.channels_last)
    batchnorm = torch.nn.BatchNorm2d(16).to(DEVICE).eval()
    x = tensor(1, 16, 6, 6, dtype=torch.float32)
    with torch.no_grad():
        launches, ops = device_work(lambda: conv(x, batchnorm))
        assert launches == [GEMM] and ops == []
        batchnorm.running_mean.add_(1.0)
        with device_ops() as refold:
            conv(x, batchnorm)
        refolded = conv._folded(batchnorm)
    assert {"rsqrt", "mul"} <= set(refold.names)
    for cached, fresh in zip(refolded, fold_batch_norm(conv.bias, batchnorm), strict=True):
        torch.testing.assert_close(cached, fresh, rtol=0, atol=0)
