"""fastconv.layers.convert: fusion, replacement, skipped modules, parity on torchvision models."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from fastconv import layers
from fastconv.backend import use_backend

FASTCONV_CLASSES = (
    layers.Conv2d,
    layers.Conv2dReLU,
    layers.MaxPool2d,
    layers.AvgPool2d,
    layers.AdaptiveAvgPool2d,
)


@pytest.fixture
def no_tf32(monkeypatch):
    """fp32 convolutions in full precision on a GPU too, so float64 parity holds."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


class ResidualBlock(nn.Module):
    """Conv and ReLU as attributes, not in a Sequential: replaced, never fused."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x)) + x


class WeightScaledConv2d(nn.Conv2d):
    """A subclass with its own forward: convert must keep it."""

    def forward(self, x):
        return self._conv_forward(x, 0.5 * self.weight, self.bias)


def _hand_made_model() -> nn.Sequential:
    """(N, 3, 8, 8) -> (N, 4); the comments say what convert must do with each module."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0: fused with 1
        nn.ReLU(inplace=True),  # 1: -> Identity
        nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1, groups=2),  # 2.0: skipped (groups)
            nn.ReLU(),  # 2.1: kept
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()),  # 2.2.0: fused with 2.2.1
        ),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # 3: skipped (padding_mode)
        nn.ReLU(),  # 4: kept
        ResidualBlock(4),  # 5.conv: replaced, 5.relu kept
        nn.MaxPool2d(2),  # 6: replaced
        nn.Conv2d(4, 4, 1),  # 7: replaced (a BatchNorm follows, not a ReLU)
        nn.BatchNorm2d(4),  # 8
        WeightScaledConv2d(4, 4, 1),  # 9: skipped (subclass)
        nn.AvgPool2d(2),  # 10: replaced
        nn.AdaptiveAvgPool2d(1),  # 11: replaced
        nn.Flatten(),
    )


def _module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(module)) for name, module in model.named_modules()]


def test_convert_hand_made_model_report():
    model = _hand_made_model()
    converted, report = layers.convert(model)

    assert [name for name, _ in report.fused] == ["0", "2.2.0"]
    assert [name for name, _ in report.replaced] == ["5.conv", "6", "7", "10", "11"]
    skipped = dict(report.skipped)
    assert list(skipped) == ["2.0", "3", "9"]
    assert "groups=2 is not supported" in skipped["2.0"]
    assert "padding_mode='reflect' is not supported" in skipped["3"]
    assert "WeightScaledConv2d subclasses nn.Conv2d" in skipped["9"]

    types = dict(_module_types(converted))
    assert types["0"] is layers.Conv2dReLU and types["1"] is nn.Identity
    assert types["2.2.0"] is layers.Conv2dReLU and types["2.2.1"] is nn.Identity
    assert types["2.0"] is nn.Conv2d and types["2.1"] is nn.ReLU
    assert types["3"] is nn.Conv2d and types["4"] is nn.ReLU
    assert types["5.conv"] is layers.Conv2d and types["5.relu"] is nn.ReLU
    assert types["6"] is layers.MaxPool2d and types["7"] is layers.Conv2d
    assert types["9"] is WeightScaledConv2d
    assert types["10"] is layers.AvgPool2d and types["11"] is layers.AdaptiveAvgPool2d
    assert converted.state_dict().keys() == model.state_dict().keys()

    text = str(report)
    assert text.startswith("fastconv.convert: 2 fused, 5 replaced, 3 skipped")
    assert "groups=2 is not supported" in text


def test_convert_hand_made_model_matches_original(device, triton_backend, no_tf32):
    torch.manual_seed(0)
    model = _hand_made_model().to(device).eval()
    reference = copy.deepcopy(model).double()
    converted, _ = layers.convert(model)
    x = torch.randn(2, 3, 8, 8, device=device)
    with torch.no_grad():
        torch.testing.assert_close(
            converted(x), reference(x.double()).float(), atol=1e-4, rtol=1e-4
        )


def test_convert_leaves_original_unchanged():
    model = _hand_made_model()
    types, state = _module_types(model), copy.deepcopy(model.state_dict())
    converted, _ = layers.convert(model, inplace=False)
    assert converted is not model
    assert _module_types(model) == types
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key])
    assert converted[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_convert_inplace_shares_parameters_and_keeps_mode_dtype_device():
    model = _hand_made_model().double().train()
    model[2].eval()
    weight, bias = model[0].weight, model[0].bias
    converted, _ = layers.convert(model, inplace=True)
    assert converted is model
    assert type(model[0]) is layers.Conv2dReLU
    assert model[0].weight is weight and model[0].bias is bias
    assert model[0].training and model[6].training and model[7].training
    assert not model[2][2][0].training
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor.device.type == "cpu", name
        assert tensor.dtype in (torch.float64, torch.int64), name


def test_convert_leaves_fastconv_modules():
    model = nn.Sequential(layers.Conv2dReLU(3, 4, 3), nn.ReLU(), layers.MaxPool2d(2))
    converted, report = layers.convert(model, inplace=True)
    assert [type(m) for m in converted] == [layers.Conv2dReLU, nn.ReLU, layers.MaxPool2d]
    assert report == layers.ConversionReport()


def test_convert_fuses_fastconv_conv2d_with_relu():
    model = nn.Sequential(layers.Conv2d(3, 4, 3), nn.ReLU())
    converted, report = layers.convert(model)
    assert [type(m) for m in converted] == [layers.Conv2dReLU, nn.Identity]
    assert [name for name, _ in report.fused] == ["0"]


def test_convert_single_layer():
    conv = nn.Conv2d(3, 4, 3, bias=False)
    converted, report = layers.convert(conv)
    assert type(converted) is layers.Conv2d and converted.bias is None
    assert torch.equal(converted.weight, conv.weight)
    assert [name for name, _ in report.replaced] == [""]

    pool = nn.MaxPool2d(3, 2, 1, dilation=2, return_indices=True, ceil_mode=True)
    converted, _ = layers.convert(pool)
    assert type(converted) is layers.MaxPool2d
    assert repr(converted) == repr(pool)


def test_convert_rejects_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        layers.convert({})


VGG11_FUSED = [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)]

# (torchvision model, input size, fused names, replaced count, skipped count).
# alexnet needs 63x63: its last max pool needs a 3x3 input.
TORCHVISION_CASES = [
    ("vgg11", 32, VGG11_FUSED, 6, 0),  # 5 max pools + adaptive average pool
    ("alexnet", 63, [f"features.{i}" for i in (0, 3, 6, 8, 10)], 4, 0),
    ("resnet18", 32, [], 22, 0),  # 20 convs (not in Sequentials) + 2 pools
    ("mobilenet_v2", 32, [], 35, 17),  # 17 depthwise convs skipped
]
# In Triton's interpreter each of these models takes minutes (alexnet 80 s, resnet18 170 s
# forward alone), so on the CPU their parity runs on the torch backend and
# test_convert_resnet18_slice_on_triton runs the Triton kernels; on a GPU they run Triton.
WHOLE_MODEL_BACKEND = "triton" if torch.cuda.is_available() else "torch"


@pytest.mark.parametrize(
    ("name", "size", "fused", "replaced", "skipped"),
    TORCHVISION_CASES,
    ids=[case[0] for case in TORCHVISION_CASES],
)
def test_convert_torchvision_model(
    name, size, fused, replaced, skipped, device, no_tf32, record_aten_ops
):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).to(device).eval()
    types = _module_types(model)
    converted, report = layers.convert(model)

    assert [entry_name for entry_name, _ in report.fused] == fused
    assert (len(report.replaced), len(report.skipped)) == (replaced, skipped)
    assert all("groups=" in reason for _, reason in report.skipped)
    assert _module_types(model) == types
    converted_modules = dict(converted.named_modules())
    assert all(type(converted_modules[entry_name]) is layers.Conv2dReLU for entry_name in fused)
    for entry_name, _ in report.replaced:
        assert isinstance(converted_modules[entry_name], FASTCONV_CLASSES)

    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        expected = model.double()(x.double()).float()
        with use_backend(WHOLE_MODEL_BACKEND), record_aten_ops() as recorder:
            actual = converted(x)
    if WHOLE_MODEL_BACKEND == "triton" and not skipped:
        assert recorder.forbidden() == []
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)


def test_convert_resnet18_slice_on_triton(device, triton_backend, no_tf32, record_aten_ops):
    """resnet18's stem and first stage (7x7 stride-2 conv, max pool, 4 convs in residual blocks)."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    model = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
    model = model.to(device).eval()
    converted, report = layers.convert(model)
    assert [name for name, _ in report.replaced] == [
        "0",
        "3",
        "4.0.conv1",
        "4.0.conv2",
        "4.1.conv1",
        "4.1.conv2",
    ]
    x = torch.randn(1, 3, 16, 16, device=device)
    with torch.no_grad():
        expected = model.double()(x.double()).float()
        with record_aten_ops() as recorder:
            actual = converted(x)
    assert recorder.forbidden() == []
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)
