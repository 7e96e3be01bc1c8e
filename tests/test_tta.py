"""fastconv.tta: probabilities averaged over an image and its mirror image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastconv.tta import class_probabilities


class LayoutProbe(nn.Module):
    """A 1x1 convolution and a linear head that record the memory format of their input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4 * 6 * 6, 2)
        self.channels_last: list[bool] = []

    def forward(self, x):
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.head(self.conv(x).flatten(1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_flip_averages_softmax_over_the_image_and_its_mirror(channels_last):
    torch.manual_seed(0)
    model = LayoutProbe().double()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mirrored = x[..., torch.arange(5, -1, -1)]
    expected = (torch.softmax(model(x), 1) + torch.softmax(model(mirrored), 1)) / 2
    model.channels_last.clear()
    probs = class_probabilities(model, x, flip=True)
    torch.testing.assert_close(probs, expected.float())
    assert model.channels_last == [channels_last, channels_last]  # layout kept for the mirror
    assert not torch.allclose(probs, class_probabilities(model, x).double().float())


def test_without_flip_it_is_the_softmax_of_one_pass():
    torch.manual_seed(0)
    model = LayoutProbe()
    x = torch.randn(3, 3, 6, 6)
    probs = class_probabilities(model, x)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax(model(x), 1))
    assert len(model.channels_last) == 2  # this call and the reference: one pass each
