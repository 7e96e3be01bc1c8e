"""fastconv.ema: the exponential moving average of a model's weights (``train --ema``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastconv.ema import weight_ema


def reference_ema(snapshots: list[dict[str, torch.Tensor]], decay: float) -> dict:
    """The documented average in float64: the first update copies, the n-th (n earlier ones)
    keeps ``min(decay, (1 + n) / (10 + n))`` of the average; integer buffers are copied."""
    average = {name: value.double() for name, value in snapshots[0].items()}
    for n, snapshot in enumerate(snapshots[1:], start=1):
        kept = min(decay, (1 + n) / (10 + n))
        for name, value in snapshot.items():
            if value.is_floating_point():
                average[name] = kept * average[name] + (1 - kept) * value.double()
            else:
                average[name] = value.double()
    return average


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_average_follows_the_warmed_up_decay_for_parameters_and_buffers(decay):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model.to(memory_format=torch.channels_last)
    ema = weight_ema(model, decay)
    snapshots = []
    for _ in range(40):  # past the warm-up for decay 0.9: (1 + n) / (10 + n) > 0.9 from n = 80
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(2, 3, 8, 8))  # moves BatchNorm's running statistics and its count
        ema.update_parameters(model)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    want = reference_ema(snapshots, decay)
    got = ema.module.state_dict()
    assert got.keys() == want.keys()
    for name, value in got.items():
        torch.testing.assert_close(value.double(), want[name], rtol=1e-5, atol=1e-5, msg=name)
    assert int(ema.n_averaged) == 40
    assert got["1.num_batches_tracked"] == 40
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    if decay > 0:  # the average is not the last weights
        assert not torch.allclose(got["0.weight"], model[0].weight)


def test_the_average_is_a_copy_the_trained_model_does_not_share():
    model = nn.Linear(3, 2)
    ema = weight_ema(model, 0.9)
    ema.update_parameters(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(ema.module.weight, model.weight)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        weight_ema(nn.Linear(2, 2), decay)
