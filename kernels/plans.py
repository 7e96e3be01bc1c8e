"""Per-signature memos of the launchers' host work (docs/decisions.md, "Launch plans").

What a convolution launch needs besides its tensors (the path it takes, its grid, its
constexpr meta-parameters, its scalar arguments, the autotuner's config) depends only on the
tensors' metadata and the call's arguments. On a small layer computing it every call cost
more host time than the launch itself, so the launchers compute it once per
:func:`signature` and keep it in a :class:`PlanCache`; later calls allocate, build their
descriptors and launch.

:class:`TunedLaunch` is the autotuner's part: the first launch of a signature goes through
``triton.autotune`` (which benchmarks on a GPU and caches its choice), later ones launch the
kernel directly with the config it chose, skipping the autotuner's per-call key and argument
dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import NamedTuple

import torch
import triton
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "Launch",
    "PlanCache",
    "TunedLaunch",
    "WeightCache",
    "clear_plans",
    "dot_precision",
    "planning_tensor",
    "signature",
]


def signature(t: Tensor) -> tuple:
    """What a launch decision may read from ``t``: shape, strides, dtype, device and whether
    its base is 16-byte aligned (TMA descriptors and Triton's pointer specialization)."""
    return t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0


def planning_tensor(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """A tensor laid out as a launch will allocate it, on the meta device (no memory): what
    a plan reads of an output before the call allocates the real one."""
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)


class PlanCache:
    """A dict of plans by key, holding at most ``limit`` (the oldest goes first): a model has a
    few dozen signatures, a run with changing shapes would otherwise grow it without end."""

    _instances: list[PlanCache] = []

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.plans: dict[Hashable, object] = {}
        PlanCache._instances.append(self)

    def get(self, key: Hashable):
        return self.plans.get(key)

    def put(self, key: Hashable, plan):
        if len(self.plans) >= self.limit:
            del self.plans[next(iter(self.plans))]
        self.plans[key] = plan
        return plan


def clear_plans() -> None:
    """Forget every launcher's plans and derived weights (they are rebuilt at the next call):
    for tests, and to free the small device tables and packed weights they hold."""
    for cache in PlanCache._instances:
        cache.plans.clear()
    for weights in WeightCache._instances:
        weights.entries.clear()


class Launch(NamedTuple):
    """A launch without an autotuner, fixed but for its tensors: ``launch(*tensors)`` runs
    ``kernel[grid](*tensors, *scalars, **meta)``."""

    kernel: object
    grid: tuple[int, ...]
    scalars: tuple
    meta: dict

    def __call__(self, *tensors: Tensor) -> None:
        self.kernel[self.grid](*tensors, *self.scalars, **self.meta)


class TunedLaunch:
    """One signature's launches of an autotuned ``kernel``: the first through ``tuned`` (its
    ``triton.autotune`` wrapper), the later ones straight to ``kernel`` with the chosen config.

    ``grid`` is a function of the meta-parameters until the config is known, then the grid
    itself; ``config`` fixes the config from the start (the tests run every config).
    """

    __slots__ = ("config", "grid", "kernel", "meta", "tuned")

    def __init__(
        self,
        tuned,
        kernel,
        grid: Callable[[dict], tuple[int, ...]],
        meta: dict,
        config: triton.Config | None = None,
    ) -> None:
        self.tuned, self.kernel, self.grid, self.meta = tuned, kernel, grid, meta
        self.config = None
        if config is not None:
            self._fix(config)

    def _fix(self, config: triton.Config) -> None:
        self.config = config
        self.meta = {**self.meta, **config.all_kwargs()}
        self.grid = self.grid(self.meta)

    def __call__(self, *args) -> None:
        if self.config is None:
            self.tuned.best_config = None  # the autotuner's run sets this call's choice
            self.tuned[self.grid](*args, **self.meta)
            if self.tuned.best_config is not None:  # None: the run was intercepted (tests)
                self._fix(self.tuned.best_config)
        else:
            self.kernel[self.grid](*args, **self.meta)


def dot_precision(dtype: torch.dtype) -> bool | None:
    """cuDNN's TF32 flag where it decides a dot's precision (fp32), else None: part of the
    key of every plan whose kernel multiplies ``dtype`` operands."""
    return torch.backends.cudnn.allow_tf32 if dtype is torch.float32 else None


class WeightCache:
    """A tensor derived from a weight (a packed copy a kernel reads), made once per version of
    the weight: held weakly by the weight object (the entry goes with it) and remade when the
    weight's storage, layout or ``_version`` (an optimizer step, any in-place update) is not
    the one it was made from. Inference tensors keep no version, so theirs is made per call.
    """

    _instances: list[WeightCache] = []

    def __init__(self) -> None:
        self.entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        WeightCache._instances.append(self)

    def get(self, weight: Tensor, make: Callable[[Tensor], Tensor], *args) -> Tensor:
        """``make(weight, *args)``, from the cache when this version of ``weight`` made it."""
        if weight.is_inference():
            return make(weight, *args)
        state = (weight._version, weight.data_ptr(), weight.stride(), args)
        cached = self.entries.get(weight)
        if cached is not None and cached[0] == state:
            return cached[1]
        with torch.no_grad():
            derived = make(weight, *args)
        self.entries[weight] = (state, derived)
        return derived
