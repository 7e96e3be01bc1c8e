"""fastconv.models: the catdog nets (VGG-style and residual) on fastconv's kernels against the
same nets written in plain torch.nn (float64): output, input gradient and every parameter
gradient, with no aten convolution or pooling running. The residual net runs in eval mode
(BatchNorm, skip connection and ReLU folded into each convolution) and in train mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_model_matches_float64, conv_activations
from torch import nn

from fastconv import layers
from fastconv.models import (
    CATDOG_ACTIVATIONS,
    activation_for,
    build_model,
    halvings,
    min_input_size,
)
from fastconv.models.catdog import CatDogNet
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


def _forward_backward(model: nn.Module, device, record_aten_ops):
    """``model`` forward and backward on a random (4, 3, 16, 16) batch, with no aten
    convolution or pooling running; returns ``x, y, grad_out`` and the ops recorded."""
    x = torch.randn(4, 3, 16, 16, device=device, requires_grad=True)
    grad_out = torch.randn(4, 2, device=device)
    with record_aten_ops() as recorder:
        y = model(x)
        y.backward(grad_out)
    assert recorder.forbidden() == []
    return x, y, grad_out, recorder


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_catdog_res_matches_torch_nn(training, device, triton_backend, record_aten_ops):
    model, twin = _models(device, training)
    x, y, grad_out, recorder = _forward_backward(model, device, record_aten_ops)
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


class TorchConvAct(nn.Conv2d):
    """``act(conv2d(x) + bias)`` in torch: ``Conv2dAct``'s twin, with the same parameter names."""

    def __init__(self, conv: layers.Conv2dAct) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=1)
        self.act = getattr(F, conv.activation)

    def forward(self, x):
        return self.act(super().forward(x))


def _torch_catdog(model: CatDogNet) -> nn.Module:
    """``model`` in float64 torch.nn: each fused conv unfused, torch's pools."""
    twin = copy.deepcopy(model).double()
    for index, module in enumerate(twin.features):
        if isinstance(module, layers.Conv2dAct):
            twin.features[index] = TorchConvAct(module).double()
        elif isinstance(module, layers.MaxPool2d):
            twin.features[index] = nn.MaxPool2d(2)
    twin.head[0] = nn.AdaptiveAvgPool2d(1)
    twin.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return twin


@pytest.mark.parametrize("activation", CATDOG_ACTIVATIONS)
def test_catdog_matches_torch_nn(activation, device, triton_backend, record_aten_ops):
    torch.manual_seed(0)
    model = CatDogNet(WIDTHS, dropout=0.0, activation=activation).to(device)
    twin = _torch_catdog(model).to(device)
    x, y, grad_out, _ = _forward_backward(model, device, record_aten_ops)
    assert_model_matches_float64(model, twin, x, y, grad_out)


def test_catdog_nets_default_to_silu_and_take_an_activation():
    for name in ("catdog", "catdog-wide", "catdog-small", "catdog-large"):
        assert activation_for(name) == "silu"
        assert conv_activations(build_model(name)) == {"silu"}
    assert conv_activations(build_model("catdog-small", activation="relu")) == {"relu"}
    with pytest.raises(ValueError, match="model catdog can be built with activation silu or relu"):
        build_model("catdog", activation="tanh")


@pytest.mark.parametrize("name", ["catdog-res", "resnet18"])
def test_nets_with_relu_built_in_refuse_another_activation(name):
    assert activation_for(name) == "relu"
    build_model(name, activation="relu")
    with pytest.raises(ValueError, match=f"model {name} can be built with activation relu, not"):
        build_model(name, activation="silu")
