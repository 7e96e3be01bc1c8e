"""fastconv.layers.convert (the FX pass of fastconv.fusion) on hand-made and torchvision models
without BatchNorms, and its module-by-module fallback, fastconv.module_swap.swap_modules:
fusion inside nn.Sequential (and its subclasses), replacement, modules kept (hooks,
subclasses), parity. BatchNorm folding and the FX patterns: tests/test_fusion.py."""

import copy
import warnings

import pytest
import torch
import torchvision
from conftest import assert_model_matches_float64
from torch import nn

from fastconv import layers
from fastconv.backend import use_backend
from fastconv.conv_bn import Conv2dBatchNormAct
from fastconv.module_swap import swap_modules

FASTCONV_CLASSES = (layers.Conv2d, layers.MaxPool2d, layers.AvgPool2d, layers.AdaptiveAvgPool2d)


class ResidualBlock(nn.Module):
    """Conv and ReLU as attributes, not in a Sequential: fused by FX, not by the module swap."""

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
    """(N, 3, 8, 8) -> (N, 4); the comments say what the module swap (and FX) must do."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 0: fused with 1
        nn.ReLU(inplace=True),  # 1: swap: -> Identity (FX: gone)
        nn.Sequential(
            nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),  # 2.0: fused with 2.1
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()),  # 2.2.0: fused with 2.2.1
        ),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # 3: fused with 4
        nn.ReLU(),
        ResidualBlock(4),  # 5.conv: swap: replaced, 5.relu kept (FX: fused)
        nn.MaxPool2d(2),  # 6: replaced
        nn.Conv2d(4, 4, 1),  # 7: swap: replaced (FX: fused with the BatchNorm)
        nn.BatchNorm2d(4),  # 8
        WeightScaledConv2d(4, 4, 1),  # 9: kept (subclass)
        nn.AvgPool2d(2),  # 10: replaced
        nn.AdaptiveAvgPool2d(1),  # 11: replaced
        nn.Flatten(),
    )


def _module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(module)) for name, module in model.named_modules()]


def test_module_swap_hand_made_model_report():
    model = _hand_made_model()
    converted, report = swap_modules(model)

    assert [name for name, _ in report.fused] == ["0", "2.0", "2.2.0", "3"]
    assert report.left_to_torch == [("9", "WeightScaledConv2d subclasses nn.Conv2d; kept as is")]
    types = dict(_module_types(converted))
    assert types["0"] is layers.Conv2dReLU and types["1"] is nn.Identity
    assert types["2.2.0"] is layers.Conv2dReLU and types["2.2.1"] is nn.Identity
    assert types["2.0"] is layers.Conv2dReLU and types["2.1"] is nn.Identity
    assert types["3"] is layers.Conv2dReLU and types["4"] is nn.Identity
    assert types["5.conv"] is layers.Conv2d and types["5.relu"] is nn.ReLU
    assert types["6"] is layers.MaxPool2d and types["7"] is layers.Conv2d
    assert types["9"] is WeightScaledConv2d
    assert types["10"] is layers.AvgPool2d and types["11"] is layers.AdaptiveAvgPool2d
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert (report.convs, report.convs_fastconv, report.pools, report.pools_fastconv) == (
        7,
        6,
        3,
        3,
    )
    assert (report.batchnorms, report.batchnorms_folded) == (1, 0)
    assert (report.activations, report.activations_fused) == (5, 4)

    text = str(report)
    assert text.startswith("fastconv.convert: module swap, model in train mode")
    assert "  torch  9: WeightScaledConv2d subclasses nn.Conv2d" in text


def test_convert_hand_made_model_with_fx():
    model = _hand_made_model()
    converted, report = layers.convert(model)
    assert report.method == "fx"
    assert [name for name, _ in report.fused] == ["0", "2.0", "2.2.0", "3", "5.conv", "7"]
    types = dict(_module_types(converted))
    assert types["0"] is layers.Conv2dAct and "1" not in types
    assert types["2.0"] is layers.Conv2dAct and types["3"] is layers.Conv2dAct
    assert types["7"] is Conv2dBatchNormAct and types["8"] is nn.BatchNorm2d
    assert types["9"] is WeightScaledConv2d
    assert list(converted.state_dict()) == list(model.state_dict())
    assert report.left_to_torch == [("9", "WeightScaledConv2d subclasses nn.Conv2d; kept as is")]


def test_convert_hand_made_model_matches_original(device, triton_backend, record_aten_ops):
    """Output and every gradient on Triton vs the original in float64, no aten convolution or
    pooling (the subclassed convolution, which would run in torch, made a plain one)."""
    torch.manual_seed(0)
    model = _hand_made_model()
    model[9] = nn.Conv2d(4, 4, 1)
    model = model.to(device).eval()
    reference = copy.deepcopy(model).double()
    converted, _ = layers.convert(model)
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    grad_out = torch.randn(2, 4, device=device)

    with record_aten_ops() as recorder:
        y = converted(x)
        y.backward(grad_out)
    assert recorder.forbidden() == []
    assert_model_matches_float64(converted, reference, x, y, grad_out)


def test_convert_leaves_original_unchanged():
    model = _hand_made_model()
    types, state = _module_types(model), copy.deepcopy(model.state_dict())
    converted, _ = layers.convert(model, inplace=False)
    assert converted is not model
    assert _module_types(model) == types
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key])
    assert converted.get_submodule("0").weight.data_ptr() != model[0].weight.data_ptr()


def test_convert_inplace_shares_parameters_and_keeps_mode_dtype_device():
    model = _hand_made_model().double().train()
    model[2].eval()
    types = _module_types(model)
    weight, bias = model[0].weight, model[0].bias
    converted, _ = layers.convert(model, inplace=True)
    assert converted is not model and _module_types(model) == types  # FX: a new GraphModule
    fused = converted.get_submodule("0")
    assert type(fused) is layers.Conv2dAct
    assert fused.weight is weight and fused.bias is bias
    assert fused.training and converted.get_submodule("6").training
    assert not converted.get_submodule("2.2.0").training
    for name, tensor in [*converted.named_parameters(), *converted.named_buffers()]:
        assert tensor.device.type == "cpu", name
        assert tensor.dtype in (torch.float64, torch.int64), name


def test_module_swap_inplace_modifies_the_model():
    model = _hand_made_model().double().train()
    model[2].eval()
    weight, bias = model[0].weight, model[0].bias
    converted, _ = swap_modules(model, inplace=True)
    assert converted is model
    assert type(model[0]) is layers.Conv2dReLU
    assert model[0].weight is weight and model[0].bias is bias
    assert model[0].training and model[6].training and model[7].training
    assert not model[2][2][0].training


def test_convert_leaves_fastconv_modules():
    model = nn.Sequential(layers.Conv2dReLU(3, 4, 3), nn.ReLU(), layers.MaxPool2d(2))
    converted, report = swap_modules(model, inplace=True)
    assert [type(m) for m in converted] == [layers.Conv2dReLU, nn.ReLU, layers.MaxPool2d]
    assert report.fused == [] and report.left_to_torch == []
    assert (report.convs_fastconv, report.pools_fastconv) == (1, 1)


def test_convert_fuses_fastconv_conv2d_with_relu():
    model = nn.Sequential(layers.Conv2d(3, 4, 3), nn.ReLU())
    converted, report = swap_modules(model)
    assert [type(m) for m in converted] == [layers.Conv2dReLU, nn.Identity]
    assert [name for name, _ in report.fused] == ["0"]
    converted, report = layers.convert(model)
    assert type(converted.get_submodule("0")) is layers.Conv2dAct
    assert report.activations_fused == 1


def test_convert_single_layer():
    conv = nn.Conv2d(3, 4, 3, bias=False)
    converted, report = layers.convert(conv)
    assert type(converted) is layers.Conv2d and converted.bias is None
    assert torch.equal(converted.weight, conv.weight)
    assert (
        report.method == "module swap" and report.fallback_reason == "the model is a single layer"
    )
    assert report.convs_fastconv == report.convs == 1

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
    container_cls, override, device, triton_backend, record_aten_ops
):
    """The module swap does not fuse in a subclass that overrides how nn.Sequential runs its
    children: its conv and pool are replaced one by one, the ReLU kept and listed in
    ``report.left_to_torch`` with the reason."""
    torch.manual_seed(0)
    block = container_cls(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    model = nn.Sequential(nn.Identity(), block).to(device)
    converted, report = swap_modules(model)

    types = dict(_module_types(converted))
    assert types["1"] is container_cls
    if override is None:
        assert [name for name, _ in report.fused] == ["1.0"]
        assert types["1.0"] is layers.Conv2dReLU and types["1.1"] is nn.Identity
        assert report.left_to_torch == []
    else:
        assert report.fused == []
        assert types["1.0"] is layers.Conv2d and types["1.1"] is nn.ReLU
        [(name, reason)] = report.left_to_torch
        assert name == "1.1" and reason.startswith("ReLU after 1.0 not fused: ")
        assert f"{container_cls.__name__} overrides nn.Sequential.{override}" in reason
        assert "  torch  1.1: ReLU after 1.0 not fused" in str(report)
    assert types["1.2"] is layers.MaxPool2d

    x = torch.randn(2, 3, 6, 6, device=device)
    with torch.no_grad():
        with record_aten_ops() as recorder:
            actual = converted(x)
        assert recorder.forbidden() == []
        expected = copy.deepcopy(model).double()(x.double()).float()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("container_cls", "fused"),
    [(ReLUFirst, False), (SkipsReLU, False), (ReversedIteration, False), (NamedSequential, True)],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_fx_follows_the_forward_that_runs(container_cls, fused, torch_backend):
    """FX traces what a Sequential subclass really runs: the ReLU fuses only where it runs
    right after the convolution."""
    model = container_cls(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    converted, report = layers.convert(model)
    assert report.method == "fx" and report.activations_fused == int(fused)
    assert report.convs_fastconv == 1 and report.pools_fastconv == 1
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))


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
    converted, report = swap_modules(model)

    assert report.fused == []
    why = dict(report.left_to_torch)
    assert list(why) == ["0", "3", "4"]
    assert "has forward hooks, which a replacement would lose" in why["0"]
    assert "ReLU after 2 not fused: has forward hooks" in why["3"]
    assert "has forward pre hooks" in why["4"]
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
    assert converted.get_submodule("0") is conv and type(converted.get_submodule("1")) is nn.ReLU
    assert report.fused == [] and [name for name, _ in report.left_to_torch] == ["0", "1"]
    converted, report = swap_modules(model, inplace=True)
    assert converted[0] is conv and type(converted[1]) is nn.ReLU
    assert report.fused == [] and [name for name, _ in report.left_to_torch] == ["0"]


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_convert_runs_padding_modes_on_fastconv(
    padding_mode, device, triton_backend, record_aten_ops
):
    """A padded conv -> BatchNorm -> ReLU fuses (eval: folded into the epilogue) and runs on
    fastconv with the pool: no aten convolution or pooling."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode=padding_mode)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.MaxPool2d(2)).to(device).eval()
    converted, report = layers.convert(model)
    fused = converted.get_submodule("0")
    assert type(fused) is Conv2dBatchNormAct and fused.padding_mode == padding_mode
    assert fused.activation == "relu" and report.left_to_torch == []
    x = torch.randn(1, 4, 6, 6, device=device)
    with torch.no_grad():
        with record_aten_ops() as recorder:
            actual = converted(x)
        expected = copy.deepcopy(model).double()(x.double()).float()
    assert recorder.forbidden() == []
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


VGG11_FUSED = [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)]

# (torchvision model, input size, fused convs (each with its ReLU), pools): models without
# BatchNorm; those with it are in tests/test_fusion.py. alexnet needs 63x63: its last max pool
# needs a 3x3 input. The two classifier ReLUs follow a Linear: left to torch.
TORCHVISION_CASES = [
    ("vgg11", 32, VGG11_FUSED, 6),  # 5 max pools + adaptive average pool
    ("alexnet", 63, [f"features.{i}" for i in (0, 3, 6, 8, 10)], 4),
]
# In Triton's interpreter each of these models takes minutes (alexnet 80 s, vgg11 features
# 170 s forward alone), so on the CPU their parity runs on the torch backend and
# test_convert_torchvision_stem_on_triton runs the Triton kernels on each model's first
# layers; on a GPU the whole models run on Triton.
WHOLE_MODEL_BACKEND = "triton" if torch.cuda.is_available() else "torch"


@pytest.mark.parametrize(
    ("name", "size", "fused", "pools"),
    TORCHVISION_CASES,
    ids=[case[0] for case in TORCHVISION_CASES],
)
def test_convert_torchvision_model(name, size, fused, pools, device, record_aten_ops):
    """What convert fuses and leaves in a whole torchvision model, and that the result
    computes the original's function (on Triton with a GPU; on the CPU on the torch backend,
    the stems run on Triton in test_convert_torchvision_stem_on_triton)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).to(device).eval()
    types = _module_types(model)
    converted, report = layers.convert(model)

    assert [entry_name for entry_name, _ in report.fused] == fused
    assert report.convs == report.convs_fastconv == len(fused)
    assert report.pools == report.pools_fastconv == pools
    assert (report.activations, report.activations_fused) == (len(fused) + 2, len(fused))
    classifier_relus = {
        "vgg11": ["classifier.1", "classifier.4"],
        "alexnet": ["classifier.2", "classifier.5"],
    }
    assert [entry_name for entry_name, _ in report.left_to_torch] == classifier_relus[name]
    assert _module_types(model) == types
    converted_modules = dict(converted.named_modules())
    for entry_name in fused:
        module = converted_modules[entry_name]
        assert type(module) is layers.Conv2dAct and module.activation == "relu"

    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        expected = model.double()(x.double()).float()
        with use_backend(WHOLE_MODEL_BACKEND), record_aten_ops() as recorder:
            actual = converted(x)
    if WHOLE_MODEL_BACKEND == "triton":
        assert recorder.forbidden() == []
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)


# (torchvision model, its first layers, input size, fused names, replaced names); the
# first layers of models with BatchNorm run on Triton in tests/test_fusion.py.
TORCHVISION_STEMS = [
    # 3x3 conv fused with its ReLU, 2x2 max pool
    ("vgg11", lambda model: model.features[:3], 8, ["0"], ["2"]),
    # 11x11 stride-4 conv fused with its ReLU, 3x3 stride-2 max pool
    ("alexnet", lambda model: model.features[:3], 15, ["0"], ["2"]),
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
    name, stem, size, fused, replaced, device, triton_backend, record_aten_ops
):
    """The first layers of each torchvision model, converted, on the Triton kernels (no aten
    conv or pool) vs the original in float64: the output of every fused or replaced module
    (a fused one against the original conv + ReLU) and of the whole stem."""
    torch.manual_seed(0)
    model = stem(getattr(torchvision.models, name)(weights=None)).to(device).eval()
    converted, report = layers.convert(model)
    assert [entry_name for entry_name, _ in report.fused] == fused
    assert all(isinstance(converted.get_submodule(n), FASTCONV_CLASSES) for n in replaced)
    assert report.left_to_torch == []
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
