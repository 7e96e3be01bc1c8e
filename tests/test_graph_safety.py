"""CUDA-graph safety: no op's path reads a tensor on the host or builds one per call.

A captured CUDA graph replays device work only; a call that synchronizes with the host,
reads a value there (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(tensor)``) or copies a
freshly built host tensor to the device (``torch.tensor(...)`` per call) cannot be captured,
and costs a stall outside a graph. These tests make every such call raise, then run a
forward and backward of each op, and of a converted resnet18 in eval and train mode, after
one warm-up call (which may fill caches, as the warm-up before a capture does). Launches are
stubbed (``fastconv.profiling.record_launches(run=False)``): the interpreter itself reads
tensors on the host, the library must not.
"""

import contextlib

import pytest
import torch
import torchvision
from conftest import DEVICE

from fastconv import backend
from fastconv import functional as fcf
from fastconv.fusion import convert
from fastconv.kernels import alloc
from fastconv.padding import pad2d
from fastconv.profiling import record_launches

HOST_READS = {
    torch.Tensor: ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"),
    torch: ("tensor", "as_tensor", "from_numpy"),
    torch.cuda: ("synchronize",),
}


@contextlib.contextmanager
def host_reads_forbidden(monkeypatch: pytest.MonkeyPatch):
    """Every host read or per-call host tensor in HOST_READS raises inside the block."""

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} called on an op's path (breaks CUDA-graph capture)")

        return fail

    with monkeypatch.context() as patch:
        for owner, names in HOST_READS.items():
            for name in names:
                patch.setattr(owner, name, forbidden(name))
        yield


def test_the_guard_catches_a_host_read(monkeypatch):
    """The guard itself: a tensor read on the host inside it raises."""
    with host_reads_forbidden(monkeypatch), pytest.raises(AssertionError, match="item"):
        torch.ones(1).item()


def tensor(*shape, grad=True):
    t = torch.randn(*shape, device=DEVICE).contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


OPS = {
    "conv2d+bias+relu": lambda x: fcf.fused_conv2d(
        x, WEIGHT, BIAS, padding=1, activation="relu", residual=RESIDUAL
    ),
    "conv2d gelu (saves the pre-activation)": lambda x: fcf.fused_conv2d(
        x, WEIGHT, None, stride=2, padding=1, activation="gelu"
    ),
    "depthwise conv2d": lambda x: fcf.fused_conv2d(x, DEPTHWISE, None, padding=1, groups=8),
    "max_pool2d": lambda x: fcf.max_pool2d(x, 2),
    "max_pool2d return_indices": lambda x: fcf.max_pool2d(x, 2, return_indices=True)[0],
    "avg_pool2d": lambda x: fcf.avg_pool2d(x, 3, 2, 1),
    "adaptive_avg_pool2d": lambda x: fcf.adaptive_avg_pool2d(x, 3),
    "pad2d": lambda x: pad2d(x, (1, 2, 1, 2), "reflect"),
}
WEIGHT, BIAS = tensor(8, 8, 3, 3), torch.randn(8, device=DEVICE, requires_grad=True)
RESIDUAL, DEPTHWISE = tensor(2, 8, 6, 6), tensor(8, 1, 3, 3)


def forward_backward(fn, x) -> None:
    y = fn(x)
    torch.autograd.grad(y, [x], torch.ones_like(y))


@pytest.fixture(autouse=True)
def stubbed_triton():
    with backend.use_backend("triton"), alloc.poison_allocations(False), record_launches(False):
        yield


@pytest.mark.parametrize("op", OPS)
def test_ops_read_nothing_on_the_host(monkeypatch, op):
    """Forward and backward of each op, after a warm-up, with every host read forbidden."""
    x = tensor(2, 8, 6, 6)
    forward_backward(OPS[op], x)
    with host_reads_forbidden(monkeypatch):
        forward_backward(OPS[op], x)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_converted_resnet18_reads_nothing_on_the_host(monkeypatch, mode):
    """A converted resnet18 (BatchNorms folded in eval mode, run as themselves in train
    mode), forward and backward, with every host read forbidden."""
    model, _ = convert(torchvision.models.resnet18(num_classes=2).to(DEVICE).eval())
    model = model.train(mode == "train").to(memory_format=torch.channels_last)
    x = tensor(2, 3, 32, 32)
    forward_backward(model, x)
    with host_reads_forbidden(monkeypatch):
        forward_backward(model, x)
