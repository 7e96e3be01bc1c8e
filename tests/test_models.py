"""fastconv.models.catdog_res: the residual net on fastconv's kernels against the same net written
in plain torch.nn (float64): output, input gradient and every parameter gradient, in eval mode
(BatchNorm, skip connection and ReLU folded into each convolution) and in train mode, with no
aten convolution or pooling running."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_model_matches_float64
from torch import nn

from fastconv.models import build_model, halvings, min_input_size
from fastconv.models.catdog_res import CatDogResNet

WIDTHS = (4, 8, 8, 16)


class TorchConvBatchNormReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x, residual=None):
        z = self.bn(self.conv(x))
        return torch.relu(z if residual is None else z + residual)


class TorchResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = TorchConvBatchNormReLU(channels, channels)
        self.second = TorchConvBatchNormReLU(channels, channels)

    def forward(self, x):
        return self.second(self.first(x), residual=x)


class TorchCatDogResNet(nn.Module):
    """The architecture of :class:`CatDogResNet` in torch.nn, with the same state_dict keys."""

    def __init__(self, widths, num_classes: int = 2) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            TorchConvBatchNormReLU(3, w0),
            nn.MaxPool2d(2),
            TorchConvBatchNormReLU(w0, w1),
            TorchResidualBlock(w1),
            nn.MaxPool2d(2),
            TorchConvBatchNormReLU(w1, w2),
            nn.MaxPool2d(2),
            TorchConvBatchNormReLU(w2, w3),
            TorchResidualBlock(w3),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(w3, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


def _models(device, training: bool) -> tuple[CatDogResNet, TorchCatDogResNet]:
    """The fastconv net (float32, random BatchNorm statistics) and its float64 torch twin."""
    torch.manual_seed(0)
    model = CatDogResNet(WIDTHS, dropout=0.0)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.5)
    twin = TorchCatDogResNet(WIDTHS).double()
    twin.load_state_dict(model.state_dict())
    return model.to(device).train(training), twin.to(device).train(training)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_catdog_res_matches_torch_nn(training, device, triton_backend, record_aten_ops):
    model, twin = _models(device, training)
    x = torch.randn(4, 3, 16, 16, device=device, requires_grad=True)
    grad_out = torch.randn(4, 2, device=device)
    with record_aten_ops() as recorder:
        y = model(x)
        y.backward(grad_out)
    assert recorder.forbidden() == []
    if not training:  # every BatchNorm folded into its convolution's epilogue
        assert not any("batch_norm" in op for op in recorder.ops)
    assert_model_matches_float64(model, twin, x, y, grad_out)
    if training:  # the BatchNorm modules updated their running statistics as torch's did
        for name, buffer in model.named_buffers():
            torch.testing.assert_close(
                buffer.double(), twin.get_buffer(name).double(), atol=1e-5, rtol=1e-5, msg=name
            )


def test_catdog_res_is_offered_by_name():
    model = build_model("catdog-res")
    assert isinstance(model, CatDogResNet)
    assert halvings("catdog-res") == 3 and min_input_size("catdog-res") == 8
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 2)  # the smallest input it takes


def test_catdog_res_needs_four_widths():
    with pytest.raises(ValueError, match="widths must give 4 channel counts"):
        CatDogResNet((8, 16, 32))
