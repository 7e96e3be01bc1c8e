"""An exponential moving average (EMA) of a model's weights, for ``fastconv.train --ema``.

After every optimizer step the average moves towards the trained weights::

    ema <- d_n * ema + (1 - d_n) * weights,    d_n = min(decay, (1 + n) / (10 + n))

where ``n`` counts the updates before this one; the first update copies the weights. The
warm-up ``(1 + n) / (10 + n)`` (timm's ``ModelEmaV3``) keeps the random initial weights from
lingering in the average of a short run. BatchNorm's running statistics are averaged the same
way; integer buffers (BatchNorm's step count) are copied.

Built on :class:`torch.optim.swa_utils.AveragedModel`, whose ``module`` is the averaged copy
(validated and saved by ``fastconv.train``, loaded by ``fastconv.predict``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["weight_ema"]


def _ema_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """``AveragedModel``'s ``multi_avg_fn``: one EMA update of same-device, same-dtype lists.

    The decay is computed on the device from the update count, so a step never waits on it.
    """

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = updates.to(averaged[0].dtype)
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        torch._foreach_lerp_(averaged, current, [weight] * len(averaged))

    return update


def weight_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model``'s parameters and buffers; call ``update_parameters(model)`` after
    every optimizer step. ``decay`` in [0, 1): 0.999 averages over about 1,000 steps."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)
