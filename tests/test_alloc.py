"""The allocation hook of the kernel launchers (fastconv.kernels.alloc): poisoned buffers.

The suite runs with poisoning on (tests/conftest.py), so an element a kernel forgets to
write reads NaN, or an impossible argmax, in every parity test.
"""

import inspect
import re

import pytest
import torch

from fastconv.kernels import alloc, conv2d_depthwise, conv2d_stem, conv2d_tma, conv2d_wgrad, layout
from fastconv.kernels import conv2d as conv2d_kernels
from fastconv.kernels import pool2d as pool_kernels


def test_the_suite_runs_with_poisoning_on():
    assert alloc.poisoning_enabled()


@pytest.mark.parametrize(
    "memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_buffers_are_nan(dtype, memory_format):
    out = alloc.empty((2, 3, 4, 5), dtype=dtype, device="cpu", memory_format=memory_format)
    assert out.dtype == dtype and out.shape == (2, 3, 4, 5)
    assert out.is_contiguous(memory_format=memory_format)
    assert out.isnan().all()


@pytest.mark.parametrize(
    ("dtype", "sentinel"),
    [(torch.int8, -128), (torch.int16, -(2**15)), (torch.int32, -(2**31)), (torch.int64, -(2**63))],
)
def test_integer_buffers_hold_a_negative_sentinel_no_argmax_takes(dtype, sentinel):
    # max-pool argmax is r*KW + s >= 0 (and -1 only inside the kernel)
    out = alloc.empty((3, 4), dtype=dtype, device="cpu")
    assert (out == sentinel).all()


def test_zeros_are_never_poisoned():
    assert torch.equal(alloc.zeros((2, 3), dtype=torch.float32, device="cpu"), torch.zeros(2, 3))


def test_switched_off_buffers_are_not_filled(monkeypatch):
    filled = []
    monkeypatch.setattr(torch.Tensor, "fill_", lambda self, value: filled.append(value))
    with alloc.poison_allocations(False):
        assert not alloc.poisoning_enabled()
        alloc.empty((4,), dtype=torch.float32, device="cpu")
    assert filled == []
    assert alloc.poisoning_enabled()  # the context manager restored the suite's setting


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False), ("", False)],
)
def test_environment_variable_switches_poisoning(monkeypatch, value, enabled):
    monkeypatch.setenv(alloc.ENV_VAR, value)
    with alloc.poison_allocations(None):  # defer to the environment
        assert alloc.poisoning_enabled() is enabled
        out = alloc.empty((4,), dtype=torch.float32, device="cpu")
        if enabled:
            assert out.isnan().all()


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(alloc.ENV_VAR, "maybe")
    with (
        alloc.poison_allocations(None),
        pytest.raises(ValueError, match="FASTCONV_POISON_ALLOCATIONS must be one of .* 'maybe'"),
    ):
        alloc.poisoning_enabled()


# Every module that allocates kernel outputs or workspaces, and the call it allocates them
# with (``layout.nhwc_output`` goes through ``alloc.empty``).
ALLOCATING_MODULES = {
    "conv2d": (conv2d_kernels, "nhwc_output("),
    "conv2d_tma": (conv2d_tma, "nhwc_output("),
    "conv2d_stem": (conv2d_stem, "alloc.empty("),
    "conv2d_wgrad": (conv2d_wgrad, "alloc.empty("),
    "conv2d_depthwise": (conv2d_depthwise, "alloc.empty("),
    "pool2d": (pool_kernels, "alloc.empty("),
    "layout": (layout, "alloc.empty("),
}


@pytest.mark.parametrize(
    ("module", "allocation"), ALLOCATING_MODULES.values(), ids=list(ALLOCATING_MODULES)
)
def test_launchers_allocate_only_through_the_hook(module, allocation):
    # a launcher that called torch.empty directly would escape poisoning
    source = inspect.getsource(module)
    direct = re.findall(r"torch\.(?:empty|empty_like|empty_strided|zeros)\(|\.new_\w+\(", source)
    assert direct == []
    assert allocation in source
