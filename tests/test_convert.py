"""fastconv.layers.convert: fusion, replacement, skipped modules, parity on torchvision models."""

import copy
import warnings

import pytest
import torch
import torchvision
from conftest import assert_model_matches_float64
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


class ReLUFirst(nn.Sequential):
    """Runs its children last to first: its ReLU comes before its convolution."""

    def forward(self, x):
        for module in reversed(self):
            x = module(x)
        return x


class SkipsReLU(nn.Sequential):
    """Runs its convolution and its pool, never its ReLU."""

    def forward(self, x):
        return self[2](self[0](x))


class ReversedIteration(nn.Sequential):
    """Keeps nn.Sequential.forward, whose ``for module in self`` goes last to first."""

    def __iter__(self):
        return reversed(list(self._modules.values()))


class NamedSequential(nn.Sequential):
    """A subclass that runs its children exactly as nn.Sequential does."""

    def describe(self) -> str:
        return "conv, relu, pool"


def _hand_made_model() -> nn.Sequential:
    """(N, 3, 8, 8) -> (N, 4); the comments say what convert must do with each module."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0: fused with 1
        nn.ReLU(inplace=True),  # 1: -> Identity
        nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),  # 2.0: skipped
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
    assert "padding_mode='circular' is not supported" in skipped["2.0"]
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
    assert "padding_mode='circular' is not supported" in text


def _conv_and_pool_ops(recorder) -> list[str]:
    return sorted(op for op in recorder.ops if "conv" in op or "pool" in op)


def test_convert_hand_made_model_matches_original(device, triton_backend, no_tf32, record_aten_ops):
    """Output and every gradient on Triton vs the original in float64; only the 3 skipped
    convolutions run in torch (one aten convolution each way), every other op in Triton."""
    torch.manual_seed(0)
    model = _hand_made_model().to(device).eval()
    reference = copy.deepcopy(model).double()
    converted, _ = layers.convert(model)
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    grad_out = torch.randn(2, 4, device=device)

    with record_aten_ops() as recorder:
        y = converted(x)
        y.backward(grad_out)
    assert _conv_and_pool_ops(recorder) == ["convolution"] * 3 + ["convolution_backward"] * 3
    assert_model_matches_float64(converted, reference, x, y, grad_out)


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


# Sequential subclasses: (class, name of the override that stops fusion, or None to fuse).
SEQUENTIAL_SUBCLASSES = [
    (ReLUFirst, "forward"),
    (SkipsReLU, "forward"),
    (ReversedIteration, "__iter__"),
    (NamedSequential, None),
]


@pytest.mark.parametrize(
    ("container_cls", "override"),
    SEQUENTIAL_SUBCLASSES,
    ids=[cls.__name__ for cls, _ in SEQUENTIAL_SUBCLASSES],
)
def test_convert_sequential_subclass_fuses_only_in_order(
    container_cls, override, device, triton_backend, no_tf32, record_aten_ops
):
    """A subclass that overrides how nn.Sequential runs its children is not fused: its conv and
    pool are replaced one by one, the ReLU kept, the pair listed in ``report.unfused``."""
    torch.manual_seed(0)
    block = container_cls(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    model = nn.Sequential(nn.Identity(), block).to(device)
    converted, report = layers.convert(model)

    types = dict(_module_types(converted))
    assert types["1"] is container_cls
    if override is None:
        assert [name for name, _ in report.fused] == ["1.0"]
        assert types["1.0"] is layers.Conv2dReLU and types["1.1"] is nn.Identity
        assert report.unfused == []
    else:
        assert report.fused == []
        assert types["1.0"] is layers.Conv2d and types["1.1"] is nn.ReLU
        [(name, reason)] = report.unfused
        assert name == "1.0"
        assert f"{container_cls.__name__} overrides nn.Sequential.{override}" in reason
        assert "1 not fused" in str(report) and "  unfused  1.0: " in str(report)
        assert [name for name, _ in report.replaced] == ["1.0", "1.2"]
    assert types["1.2"] is layers.MaxPool2d

    x = torch.randn(2, 3, 6, 6, device=device)
    with torch.no_grad():
        with record_aten_ops() as recorder:
            actual = converted(x)
        assert recorder.forbidden() == []
        expected = copy.deepcopy(model).double()(x.double()).float()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_convert_keeps_modules_with_hooks():
    """A replacement would lose a module's hooks: a hooked conv is kept, a hooked ReLU unfused."""
    calls = []
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0: a forward hook -> kept as is
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),  # 2: replaced, not fused: the ReLU has a hook
        nn.ReLU(),  # 3: doubles its output through a hook
        nn.MaxPool2d(2),  # 4: a forward pre-hook -> kept as is
    )
    model[0].register_forward_hook(lambda module, args, output: calls.append("conv"))
    model[3].register_forward_hook(lambda module, args, output: 2 * output)
    model[4].register_forward_pre_hook(lambda module, args: calls.append("pool"))
    converted, report = layers.convert(model)

    assert report.fused == []
    assert [name for name, _ in report.replaced] == ["2"]
    assert [name for name, _ in report.skipped] == ["0", "4"]
    assert "has forward hooks, which a replacement would lose" in dict(report.skipped)["0"]
    assert "has forward pre hooks" in dict(report.skipped)["4"]
    assert [name for name, _ in report.unfused] == ["2"]
    assert "has forward hooks" in dict(report.unfused)["2"]
    assert [type(m) for m in converted] == [
        nn.Conv2d,
        nn.ReLU,
        layers.Conv2d,
        nn.ReLU,
        nn.MaxPool2d,
    ]
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad(), use_backend("torch"):
        torch.testing.assert_close(converted(x), model(x))
    assert calls == ["conv", "pool", "conv", "pool"]


def test_convert_keeps_weight_norm_conv():
    """weight_norm recomputes the weight in a forward pre-hook: the conv must stay as it is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for the parametrization
        conv = nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    model = nn.Sequential(conv, nn.ReLU())
    converted, report = layers.convert(model, inplace=True)  # weight_norm cannot be deep-copied
    assert converted[0] is conv and type(converted[1]) is nn.ReLU
    assert report.fused == [] and [name for name, _ in report.skipped] == ["0"]


# Convolutions the kernels do not run: convert leaves them to torch and says why.
UNSUPPORTED_CONVS = {
    "reflect": (
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        "padding_mode='reflect' is not supported",
    ),
    "replicate": (
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"),
        "padding_mode='replicate' is not supported",
    ),
    "circular": (
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
        "padding_mode='circular' is not supported",
    ),
}


@pytest.mark.parametrize(
    ("conv", "reason"), UNSUPPORTED_CONVS.values(), ids=list(UNSUPPORTED_CONVS)
)
def test_convert_leaves_unsupported_conv_to_torch(
    conv, reason, device, triton_backend, no_tf32, record_aten_ops
):
    torch.manual_seed(0)
    model = nn.Sequential(copy.deepcopy(conv), nn.ReLU(), nn.MaxPool2d(2)).to(device)
    converted, report = layers.convert(model)
    assert [type(m) for m in converted] == [nn.Conv2d, nn.ReLU, layers.MaxPool2d]
    assert report.fused == [] and [name for name, _ in report.replaced] == ["2"]
    [(name, text)] = report.skipped
    assert name == "0" and reason in text
    x = torch.randn(1, 4, 6, 6, device=device)
    with torch.no_grad():
        with record_aten_ops() as recorder:
            actual = converted(x)
        expected = model(x)
    assert _conv_and_pool_ops(recorder) == ["convolution"]  # the conv in torch, the pool not
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


VGG11_FUSED = [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)]

# (torchvision model, input size, fused names, replaced count, skipped count).
# alexnet needs 63x63: its last max pool needs a 3x3 input.
TORCHVISION_CASES = [
    ("vgg11", 32, VGG11_FUSED, 6, 0),  # 5 max pools + adaptive average pool
    ("alexnet", 63, [f"features.{i}" for i in (0, 3, 6, 8, 10)], 4, 0),
    ("resnet18", 32, [], 22, 0),  # 20 convs (not in Sequentials) + 2 pools
    ("mobilenet_v2", 32, [], 52, 0),  # 52 convs (17 depthwise), none in a conv-ReLU pair
]
# In Triton's interpreter each of these models takes minutes (alexnet 80 s, resnet18 170 s,
# vgg11 features 170 s forward alone), so on the CPU their parity runs on the torch backend
# and test_convert_torchvision_stem_on_triton runs the Triton kernels on each model's first
# layers; on a GPU the whole models run on Triton.
WHOLE_MODEL_BACKEND = "triton" if torch.cuda.is_available() else "torch"


@pytest.mark.parametrize(
    ("name", "size", "fused", "replaced", "skipped"),
    TORCHVISION_CASES,
    ids=[case[0] for case in TORCHVISION_CASES],
)
def test_convert_torchvision_model(
    name, size, fused, replaced, skipped, device, no_tf32, record_aten_ops
):
    """What convert fuses, replaces and skips in a whole torchvision model, and that the result
    computes the original's function (on Triton with a GPU; on the CPU on the torch backend,
    the stems run on Triton in test_convert_torchvision_stem_on_triton)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).to(device).eval()
    types = _module_types(model)
    converted, report = layers.convert(model)

    assert [entry_name for entry_name, _ in report.fused] == fused
    assert (len(report.replaced), len(report.skipped)) == (replaced, skipped)
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


def _resnet18_stem(resnet: nn.Module) -> nn.Sequential:
    return nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)


# (torchvision model, its first layers, input size, fused names, replaced names).
TORCHVISION_STEMS = [
    # 3x3 conv fused with its ReLU, 2x2 max pool
    ("vgg11", lambda model: model.features[:3], 8, ["0"], ["2"]),
    # 11x11 stride-4 conv fused with its ReLU, 3x3 stride-2 max pool
    ("alexnet", lambda model: model.features[:3], 15, ["0"], ["2"]),
    # 7x7 stride-2 conv, max pool, 4 convs in residual blocks (not fusable)
    (
        "resnet18",
        _resnet18_stem,
        16,
        [],
        ["0", "3", "4.0.conv1", "4.0.conv2", "4.1.conv1", "4.1.conv2"],
    ),
    # stride-2 conv + BatchNorm + ReLU6 in a Conv2dNormActivation (a Sequential subclass)
    ("mobilenet_v2", lambda model: model.features[:1], 8, [], ["0.0"]),
]


def _record_outputs(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Filled with the output of each named submodule of ``model`` as it runs (a copy: an
    in-place ReLU may follow)."""
    outputs = {}
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(name, output.clone())
        )
    return outputs


@pytest.mark.parametrize(
    ("name", "stem", "size", "fused", "replaced"),
    TORCHVISION_STEMS,
    ids=[case[0] for case in TORCHVISION_STEMS],
)
def test_convert_torchvision_stem_on_triton(
    name, stem, size, fused, replaced, device, triton_backend, no_tf32, record_aten_ops
):
    """The first layers of each torchvision model, converted, on the Triton kernels (no aten
    conv or pool) vs the original in float64: the output of every fused or replaced module
    (a fused one against the original conv + ReLU) and of the whole stem."""
    torch.manual_seed(0)
    model = stem(getattr(torchvision.models, name)(weights=None)).to(device).eval()
    converted, report = layers.convert(model)
    assert [entry_name for entry_name, _ in report.fused] == fused
    assert [entry_name for entry_name, _ in report.replaced] == replaced
    assert report.skipped == [] and report.unfused == []
    reference = copy.deepcopy(model).double()
    expected_outputs = _record_outputs(reference, fused + replaced)
    actual_outputs = _record_outputs(converted, fused + replaced)
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        expected = reference(x.double()).float()
        with record_aten_ops() as recorder:
            actual = converted(x)
    assert recorder.forbidden() == []
    for module_name in fused + replaced:
        reference_output = expected_outputs[module_name].float()
        if module_name in fused:
            reference_output = torch.relu(reference_output)
        torch.testing.assert_close(
            actual_outputs[module_name], reference_output, atol=1e-4, rtol=1e-3, msg=module_name
        )
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)
