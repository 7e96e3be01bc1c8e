"""What a fastconv call costs outside its kernels: the launches it makes and the device ops.

On a GPU a call costs its Python path, its kernel launches and whatever other device work it
does (copies, fills, arithmetic). All three can be counted on any machine:

* :func:`record_launches` records every Triton kernel launched inside it (name, constexpr
  meta-parameters, grid), and with ``run=False`` replaces the launch itself with the record,
  so only the host path runs (under Triton's interpreter a CPU tensor then costs what the
  Python around the launch costs, nothing more);
* :func:`device_ops` lists the aten ops that would launch device work, as the profiler saw
  them (allocations, views and metadata ops are left out: they launch nothing).

    with record_launches(run=False) as launches, device_ops() as ops:
        y = fastconv.functional.fused_conv2d(x, w, b, padding=1, activation="relu")
    print([launch.name for launch in launches], ops.names)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

__all__ = ["DeviceOps", "KernelLaunch", "device_ops", "record_launches"]


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One Triton kernel launch: the kernel's function name, its keyword arguments (the
    constexpr meta-parameters such as ``INDEX_64`` or ``BLOCK_M``) and its grid (a tuple)."""

    name: str
    meta: dict
    grid: object


@contextlib.contextmanager
def record_launches(run: bool = True) -> Iterator[list[KernelLaunch]]:
    """Record every Triton kernel launched inside, in order (through an autotuner or not).

    ``run=False`` skips the launches (nothing is computed: outputs keep whatever their
    allocation held), so that only the host path is timed or counted.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: list[KernelLaunch] = []
    saved = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def recording(original):
        def run_kernel(self, *args, grid, warmup, **kwargs):
            if warmup:
                return original(self, *args, grid=grid, warmup=warmup, **kwargs)
            resolved_grid = grid(kwargs) if callable(grid) else tuple(grid)
            launches.append(KernelLaunch(self.fn.__name__, dict(kwargs), resolved_grid))
            if run:
                return original(self, *args, grid=grid, warmup=warmup, **kwargs)
            return None

        return run_kernel

    for cls, original in saved.items():
        cls.run = recording(original)
    try:
        yield launches
    finally:
        for cls, original in saved.items():
            cls.run = original


# aten ops that launch nothing on a device: allocation, views, metadata and autograd
# bookkeeping. Every other op a call runs is device work (a copy, a fill, arithmetic).
_NOT_DEVICE_WORK = frozenset(
    {
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
        "view", "_unsafe_view", "as_strided", "alias", "permute", "transpose", "t", "expand",
        "reshape", "_reshape_alias", "squeeze", "unsqueeze", "select", "slice", "narrow",
        "unflatten", "flatten", "split", "chunk", "unbind", "detach", "detach_", "lift_fresh",
        "resolve_conj", "resolve_neg", "contiguous", "to", "result_type", "size", "stride",
        "is_same_size", "set_", "_has_compatible_shallow_copy_type", "promote_types",
    }
)  # fmt: skip


class DeviceOps:
    """The aten ops seen inside :func:`device_ops` that do device work, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []


def _is_device_work(event) -> bool:
    return event.name.startswith("aten::") and event.name[6:] not in _NOT_DEVICE_WORK


def _inside_device_work(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if _is_device_work(parent):
            return True
        parent = parent.cpu_parent
    return False


@contextlib.contextmanager
def device_ops() -> Iterator[DeviceOps]:
    """Record the aten ops run inside that launch device work, each once: the outermost op
    that does device work counts, not the ops it is made of (``zeros`` is one fill,
    ``clone`` one copy, ``sum`` one reduction, whatever the CPU implementation calls)."""
    ops = DeviceOps()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        yield ops
    for event in profiler.events():
        if _is_device_work(event) and not _inside_device_work(event):
            ops.names.append(event.name.removeprefix("aten::"))
