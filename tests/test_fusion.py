"""fastconv.fusion.convert: the FX pass on torchvision models (structure counted from the
graph, outputs and gradients), a slice of each block type on the Triton kernels with no aten
convolution, every activation pattern, the one-user rule, placement, what is left to torch
and why, the module-swap fallback, state_dict keys and the report."""

import copy
import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import DEVICE
from torch import fx, nn

from fastconv import layers
from fastconv.backend import use_backend
from fastconv.conv_bn import Conv2dBatchNormAct
from fastconv.convert import randomize_batchnorms
from fastconv.fusion import convert


def _torchvision(name: str, mode: str) -> nn.Module:
    """The model with random weights and BatchNorms, dropout and stochastic depth off; in
    train mode vgg11_bn gets a small classifier (its 120M-parameter one would dominate the
    test's time and is no convolution)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    if name == "vgg11_bn" and mode == "train":
        model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 4))
    randomize_batchnorms(model)
    model.train(mode == "train")
    for module in model.modules():  # random masks would differ between the two models
        if isinstance(module, nn.Dropout) or type(module).__name__ == "StochasticDepth":
            module.eval()
    return model


# --------------------------------------------------------------------------- whole models

_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Hardswish)
_ADDS = (operator.add, operator.iadd, torch.add)
_EVAL_IDENTITIES = (nn.Dropout, torchvision.ops.StochasticDepth)


class _KeepStochasticDepth(fx.Tracer):
    """A plain tracer, except that torchvision's StochasticDepth stays a module, as convert
    keeps it (its forward reads self.training at call time)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__name__ == "StochasticDepth" or super().is_leaf_module(m, qualname)


def _expected(model: nn.Module) -> dict[str, int]:
    """What convert must fuse, counted on the original's plain FX graph (independently of
    fastconv.patterns): BatchNorms after a conv, activations after a conv or conv-BN, adds of
    a conv-BN (or of a StochasticDepth or Dropout after one: the identity in eval mode), and
    those adds followed by a ReLU, each where the node before it has no other user."""
    gm = fx.GraphModule(model, _KeepStochasticDepth().trace(model))
    modules = dict(gm.named_modules())

    def is_module(node, types):
        return node.op == "call_module" and isinstance(modules[node.target], types)

    convs = [n for n in gm.graph.nodes if is_module(n, nn.Conv2d)]
    bns = [
        n
        for n in gm.graph.nodes
        if is_module(n, nn.BatchNorm2d) and n.args[0] in convs and len(n.args[0].users) == 1
    ]
    # (a node with two users cannot fuse into the one before it: the other needs its output)
    heads = {n for n in [*convs, *bns] if len(n.users) == 1}
    heads |= {
        n
        for n in gm.graph.nodes
        if is_module(n, _EVAL_IDENTITIES) and n.args[0] in heads & set(bns) and len(n.users) == 1
    }
    acts = [n for n in gm.graph.nodes if is_module(n, _ACTIVATION_MODULES) and n.args[0] in heads]
    adds = [
        n
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target in _ADDS and any(a in heads for a in n.args[:2])
    ]
    add_relus = [a for a in adds if any(is_module(u, nn.ReLU) for u in a.users)]
    return {
        "convs": len(convs),
        "batchnorms": len(bns),
        "activations": len(acts) + len(add_relus),
        "adds": len(adds),
        "add_relus": len(add_relus),
    }


def _fused_counts(gm: fx.GraphModule) -> dict[str, int]:
    """The same counts read from the converted graph."""
    modules = dict(gm.named_modules())
    calls = [(n, modules[n.target]) for n in gm.graph.nodes if n.op == "call_module"]
    convs = [(n, m) for n, m in calls if isinstance(m, nn.Conv2d)]
    assert all(isinstance(m, layers.Conv2d) for _, m in convs), "a conv left to torch"
    assert not any(isinstance(m, nn.BatchNorm2d) for _, m in calls), "a BatchNorm left"
    fused = [(n, m) for n, m in convs if isinstance(m, layers.Conv2dAct)]
    with_residual = [(n, m) for n, m in fused if "residual" in n.kwargs]
    return {
        "convs": len(convs),
        "batchnorms": sum(isinstance(m, Conv2dBatchNormAct) for _, m in fused),
        "activations": sum(m.activation != "identity" for _, m in fused),
        "adds": len(with_residual),
        "add_relus": sum(m.activation == "relu" for _, m in with_residual),
    }


# model -> (residual adds, of them followed by ReLU)
MODELS = {
    "resnet18": (8, 8),
    "resnet50": (16, 16),
    "mobilenet_v2": (10, 0),
    "efficientnet_b0": (9, 0),  # its adds follow a StochasticDepth after a conv-BN
    "vgg11_bn": (0, 0),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_structure_and_parity(name, mode, torch_backend):
    """Every conv on fastconv, every BatchNorm after a conv folded, every activation after a
    conv or conv-BN and every residual add (+ ReLU) fused (counted in the graph, and the
    report agrees); the output (eval) or output and every gradient (train) match the
    original's (torch backend: the structure, not the kernels, is under test here)."""
    model = _torchvision(name, mode)
    keys = list(model.state_dict())
    converted, report = convert(model)
    expected = _expected(model)
    counts = _fused_counts(converted)
    assert counts == expected
    assert (counts["adds"], counts["add_relus"]) == MODELS[name]
    assert report.method == "fx" and report.mode == mode
    assert report.convs == report.convs_fastconv == counts["convs"]
    assert report.batchnorms == report.batchnorms_folded == counts["batchnorms"]
    assert report.activations_fused == counts["activations"]
    assert report.adds_fused == counts["adds"]
    assert report.pools == report.pools_fastconv
    assert list(converted.state_dict()) == keys

    x = torch.randn(2, 3, 32, 32)
    if mode == "eval":
        with torch.no_grad():
            expected_y = copy.deepcopy(model).double()(x.double())
            torch.testing.assert_close(converted(x), expected_y.float(), atol=1e-4, rtol=1e-3)
        return
    reference = copy.deepcopy(model)  # float32: same ops as the converted model in train mode
    y, y_ref = converted(x), reference(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    y_ref.backward(grad_out)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    reference_params = dict(reference.named_parameters())
    for param_name, param in converted.named_parameters():
        expected_grad = reference_params[param_name].grad
        torch.testing.assert_close(param.grad, expected_grad, atol=1e-5, rtol=1e-4)
    for buffer_name, buffer in reference.named_buffers():
        torch.testing.assert_close(converted.get_buffer(buffer_name), buffer, msg=buffer_name)


# --------------------------------------------------------------------------- Triton slices


def _slices():
    """(id, model name, slice builder, input shape): one of each block type."""
    return [
        ("resnet18-stem", "resnet18", lambda m: nn.Sequential(*[*m.children()][:4]), (2, 3, 8, 8)),
        ("resnet18-basicblock-downsample", "resnet18", lambda m: m.layer2[0], (2, 64, 4, 4)),
        ("resnet50-bottleneck", "resnet50", lambda m: m.layer1[0], (2, 64, 4, 4)),
        ("mobilenet_v2-inverted-residual", "mobilenet_v2", lambda m: m.features[3], (2, 24, 4, 4)),
        ("efficientnet_b0-stem", "efficientnet_b0", lambda m: m.features[0], (2, 3, 8, 8)),
        ("efficientnet_b0-mbconv-se", "efficientnet_b0", lambda m: m.features[2][1], (2, 24, 4, 4)),
        ("vgg11_bn-features", "vgg11_bn", lambda m: m.features[:4], (2, 3, 8, 8)),
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(
    ("model_name", "build", "shape"),
    [case[1:] for case in _slices()],
    ids=[case[0] for case in _slices()],
)
def test_torchvision_block_on_triton(
    model_name, build, shape, mode, triton_backend, record_aten_ops
):
    """A block of each type, converted, on the Triton kernels (no aten convolution or pooling
    forward or backward) against the original in float64: output, and in train mode the
    input gradient and every parameter gradient."""
    block = build(_torchvision(model_name, mode)).to(DEVICE)
    converted, report = convert(block)
    assert report.convs == report.convs_fastconv and report.left_to_torch == []
    reference = copy.deepcopy(block).double()
    x = torch.randn(shape, device=DEVICE, requires_grad=mode == "train")
    if mode == "eval":
        with torch.no_grad(), record_aten_ops() as recorder:
            y = converted(x)
        assert recorder.forbidden() == []
        expected = reference(x.double()).float()
        torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
        return
    with record_aten_ops() as recorder:
        y = converted(x)
        grad_out = torch.randn_like(y)
        y.backward(grad_out)
    assert recorder.forbidden() == []
    x_ref = x.detach().double().requires_grad_()
    y_ref = reference(x_ref)
    y_ref.backward(grad_out.double())
    close = dict(atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(y, y_ref.float(), **close)
    torch.testing.assert_close(x.grad, x_ref.grad.float(), **close)
    # The original in float32 (torch ops) bounds what rounding alone explains: a conv bias
    # before a train-mode BatchNorm has a gradient that is 0 in exact arithmetic.
    original = copy.deepcopy(block)
    original(x.detach()).backward(grad_out)
    reference_params = dict(reference.named_parameters())
    original_params = dict(original.named_parameters())
    for param_name, param in converted.named_parameters():
        expected_grad = reference_params[param_name].grad
        error = (param.grad.double() - expected_grad).abs().max().item()
        torch_error = (original_params[param_name].grad.double() - expected_grad).abs().max()
        limit = 2e-4 * expected_grad.abs().max().item() + 10 * torch_error.item()
        assert error <= limit, f"{param_name}: {error:.2e} > {limit:.2e}"


# --------------------------------------------------------------------------- patterns


class Activations(nn.Module):
    """One conv -> BN -> activation chain per way of writing an activation."""

    WAYS = {
        "nn.ReLU": (lambda self, z: self.act["relu"](z), "relu"),
        "nn.ReLU(inplace)": (lambda self, z: self.act["relu_inplace"](z), "relu"),
        "F.relu": (lambda self, z: F.relu(z), "relu"),
        "F.relu(inplace)": (lambda self, z: F.relu(z, inplace=True), "relu"),
        "torch.relu": (lambda self, z: torch.relu(z), "relu"),
        "torch.relu_": (lambda self, z: torch.relu_(z), "relu"),
        "x.relu()": (lambda self, z: z.relu(), "relu"),
        "x.relu_()": (lambda self, z: z.relu_(), "relu"),
        "nn.ReLU6": (lambda self, z: self.act["relu6"](z), "relu6"),
        "F.relu6": (lambda self, z: F.relu6(z), "relu6"),
        "nn.Hardtanh(0,6)": (lambda self, z: self.act["hardtanh"](z), "relu6"),
        "F.hardtanh(0,6)": (lambda self, z: F.hardtanh(z, 0.0, 6.0), "relu6"),
        "nn.LeakyReLU": (lambda self, z: self.act["leaky"](z), "leaky_relu"),
        "F.leaky_relu": (lambda self, z: F.leaky_relu(z, 0.3), "leaky_relu"),
        "nn.SiLU": (lambda self, z: self.act["silu"](z), "silu"),
        "F.silu": (lambda self, z: F.silu(z), "silu"),
        "nn.Hardswish": (lambda self, z: self.act["hardswish"](z), "hardswish"),
        "F.hardswish": (lambda self, z: F.hardswish(z), "hardswish"),
        "nn.GELU": (lambda self, z: self.act["gelu"](z), "gelu"),
        "nn.GELU(tanh)": (lambda self, z: self.act["gelu_tanh"](z), "gelu_tanh"),
        "F.gelu(tanh)": (lambda self, z: F.gelu(z, approximate="tanh"), "gelu_tanh"),
        "nn.Sigmoid": (lambda self, z: self.act["sigmoid"](z), "sigmoid"),
        "torch.sigmoid": (lambda self, z: torch.sigmoid(z), "sigmoid"),
        "F.sigmoid": (lambda self, z: F.sigmoid(z), "sigmoid"),
    }

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in self.WAYS)
        self.bns = nn.ModuleList(nn.BatchNorm2d(3) for _ in self.WAYS)
        self.act = nn.ModuleDict(dict(
            relu=nn.ReLU(), relu_inplace=nn.ReLU(inplace=True), relu6=nn.ReLU6(),
            hardtanh=nn.Hardtanh(0.0, 6.0), leaky=nn.LeakyReLU(0.2), silu=nn.SiLU(),
            hardswish=nn.Hardswish(), gelu=nn.GELU(), gelu_tanh=nn.GELU("tanh"),
            sigmoid=nn.Sigmoid(),
        ))  # fmt: skip

    def forward(self, x):
        outputs = []
        for (way, _), conv, bn in zip(self.WAYS.values(), self.convs, self.bns, strict=True):
            outputs.append(way(self, bn(conv(x))))
        return torch.cat(outputs, 1)


def test_every_activation_pattern_fuses(torch_backend):
    model = Activations()
    randomize_batchnorms(model)
    model.eval()
    converted, report = convert(model)
    fused = {name: converted.get_submodule(name) for name, _ in report.fused}
    assert len(fused) == len(Activations.WAYS) == report.activations_fused
    for index, (way, (_, activation)) in enumerate(Activations.WAYS.items()):
        module = fused[f"convs.{index}"]
        assert type(module) is Conv2dBatchNormAct, way
        assert module.activation == activation, way
    assert fused[f"convs.{list(Activations.WAYS).index('nn.LeakyReLU')}"].negative_slope == 0.2
    assert fused[f"convs.{list(Activations.WAYS).index('F.leaky_relu')}"].negative_slope == 0.3
    assert report.left_to_torch == []
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).float()
        torch.testing.assert_close(converted(x), expected, atol=1e-5, rtol=1e-5)


class Residuals(nn.Module):
    """Residual adds written four ways, the residual computed after the conv."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(4))
        self.shortcut = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a = self.bns[0](self.convs[0](x))
        other = self.shortcut(x) * 0.5  # computed after convs.0
        y = torch.relu(a + other)  # conv-BN first
        y = F.relu(other + self.bns[1](self.convs[1](y)))  # conv-BN second
        y = torch.add(self.bns[2](self.convs[2](y)), y).relu()  # torch.add
        z = self.bns[3](self.convs[3](y))
        z += y  # iadd
        return z


def test_residual_add_patterns_and_placement(torch_backend):
    model = Residuals()
    randomize_batchnorms(model)
    model.eval()
    converted, report = convert(model)
    assert report.adds_fused == 4 and report.batchnorms_folded == 4
    assert report.activations_fused == 3
    modules = dict(converted.named_modules())
    fused_calls = [n for n in converted.graph.nodes if n.target in {f"convs.{i}" for i in range(4)}]
    assert all("residual" in n.kwargs for n in fused_calls)
    assert [modules[n.target].activation for n in fused_calls] == ["relu"] * 3 + ["identity"]
    order = [n.name for n in converted.graph.nodes]
    # convs.0's fused call moved after the residual it needs
    assert order.index(fused_calls[0].kwargs["residual"].name) < order.index(fused_calls[0].name)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).float()
        torch.testing.assert_close(converted(x), expected, atol=1e-5, rtol=1e-5)


class SharedOutputs(nn.Module):
    """Outputs used twice: nothing after them may fuse."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        a = self.conv1(x)
        b = self.bn1(a)  # conv1's output has 2 users: not folded
        c = self.bn2(self.conv2(b + a))  # folded
        return self.relu(c) + c  # c has 2 users: the ReLU is not fused


def test_only_single_user_steps_fuse_and_the_rest_says_why(torch_backend):
    model = SharedOutputs()
    randomize_batchnorms(model)
    model.eval()
    converted, report = convert(model)
    assert [name for name, _ in report.fused] == ["conv2"]
    assert type(converted.conv1) is layers.Conv2d
    assert type(converted.conv2) is Conv2dBatchNormAct and converted.conv2.activation == "identity"
    why = dict(report.left_to_torch)
    assert "conv1 (Conv2d), whose output has 2 users" in why["bn1"]
    assert "follows bn2 (BatchNorm2d), whose output has 2 users" in why["relu"]
    assert (report.batchnorms, report.batchnorms_folded) == (2, 1)
    assert (report.activations, report.activations_fused) == (1, 0)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)


class Leftovers(nn.Module):
    """Things convert leaves to torch, each for a reason it must state."""

    def __init__(self):
        super().__init__()
        self.hooked = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_hooked_conv = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_no_stats = nn.BatchNorm2d(4, track_running_stats=False)
        self.pool = nn.MaxPool2d(2)
        self.bn_after_pool = nn.BatchNorm2d(4)
        self.relu_after_pool = nn.ReLU()
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.bn_after_reflect = nn.BatchNorm2d(4)  # folded

    def forward(self, x):
        y = self.bn_hooked_conv(self.hooked(x))
        y = self.bn_no_stats(self.conv(y))
        y = self.relu_after_pool(self.bn_after_pool(self.pool(y)))
        return self.bn_after_reflect(self.reflect(y))


def test_left_to_torch_with_reasons(torch_backend):
    model = Leftovers()
    randomize_batchnorms(model)
    model.eval()
    model.hooked.register_forward_hook(lambda module, args, output: None)
    converted, report = convert(model)
    why = dict(report.left_to_torch)
    assert "has forward hooks" in why["hooked"]
    assert "follows hooked (Conv2d), left to torch" in why["bn_hooked_conv"]
    assert "track_running_stats=False" in why["bn_no_stats"]
    assert "follows pool (MaxPool2d), not a convolution" in why["bn_after_pool"]
    assert "follows bn_after_pool (BatchNorm2d)" in why["relu_after_pool"]
    assert type(converted.hooked) is nn.Conv2d
    assert type(converted.reflect) is Conv2dBatchNormAct  # padding modes fuse too
    assert type(converted.pool) is layers.MaxPool2d
    assert (report.convs, report.convs_fastconv) == (3, 2)
    assert (report.batchnorms, report.batchnorms_folded) == (4, 1)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-5)


class WeightScaledConv2d(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, 0.5 * self.weight, self.bias)


def test_subclass_kept_and_functional_calls_converted(torch_backend):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.scaled = WeightScaledConv2d(3, 4, 3)
            self.weight = nn.Parameter(torch.randn(4, 4, 1, 1))

        def forward(self, x):
            y = F.conv2d(self.scaled(x), self.weight)
            return F.adaptive_avg_pool2d(F.max_pool2d(y, 2), 1)

    model = Model()
    converted, report = convert(model)
    assert (
        "WeightScaledConv2d subclasses nn.Conv2d; kept as is"
        in dict(report.left_to_torch)["scaled"]
    )
    targets = {n.target for n in converted.graph.nodes if n.op == "call_function"}
    from fastconv import functional as fcf

    assert {fcf.conv2d, fcf.max_pool2d, fcf.adaptive_avg_pool2d} <= targets
    assert (report.convs, report.convs_fastconv, report.pools, report.pools_fastconv) == (
        2,
        1,
        2,
        2,
    )
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))


# --------------------------------------------------------------------------- API


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: FX cannot trace it
            return self.features(x)
        return self.features(-x)


def test_untraceable_model_falls_back_to_module_swap(torch_backend):
    model = Untraceable()
    converted, report = convert(model)
    assert report.method == "module swap"
    assert report.fallback_reason.startswith("torch.fx could not trace it: ")
    assert "\n" not in report.fallback_reason
    assert type(converted) is Untraceable and converted is not model
    assert [type(m) for m in converted.features] == [
        layers.Conv2dReLU,
        nn.Identity,
        layers.MaxPool2d,
    ]
    assert (report.convs_fastconv, report.activations_fused, report.pools_fastconv) == (1, 1, 1)
    assert "module swap (torch.fx could not trace it" in str(report)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))


def test_original_unchanged_and_inplace_shares_parameters(torch_backend):
    model = _torchvision("resnet18", "eval")
    types = [(n, type(m)) for n, m in model.named_modules()]
    state = copy.deepcopy(model.state_dict())
    converted, _ = convert(model)
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    assert converted.conv1.weight is not model.conv1.weight

    shared, _ = convert(model, inplace=True)
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert shared.conv1.weight is model.conv1.weight
    assert shared.get_submodule("layer1.0.bn1") is model.layer1[0].bn1


def test_state_dict_loads_both_ways(torch_backend):
    original = _torchvision("mobilenet_v2", "eval")
    converted, _ = convert(_torchvision("mobilenet_v2", "eval"))
    assert list(converted.state_dict()) == list(original.state_dict())
    with torch.no_grad():
        for tensor in converted.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01)
    original.load_state_dict(converted.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x), atol=1e-4, rtol=1e-4)
    fresh, _ = convert(_torchvision("mobilenet_v2", "eval"))
    fresh.load_state_dict(original.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), converted(x), atol=1e-6, rtol=1e-6)


def test_report_table_and_row(torch_backend):
    _, report = convert(_torchvision("vgg11_bn", "eval"))
    text = str(report)
    assert text.splitlines()[0] == "fastconv.convert: fx, model in eval mode"
    assert "  convs on fastconv      8/8" in text
    assert "  BatchNorms folded      8/8" in text
    assert "  activations fused     8/10" in text
    assert "  torch  classifier.1: follows classifier.0 (Linear), not a convolution" in text
    row = report.row()
    assert row == {
        "mode": "eval",
        "method": "fx",
        "convs on fastconv": "8/8",
        "pools on fastconv": "6/6",
        "BatchNorms folded": "8/8",
        "activations fused": "8/10",
        "adds fused": "0",
        "left to torch": "2",
    }


def test_convert_is_importable_from_layers():
    from fastconv.layers import ConversionReport as FromLayers
    from fastconv.layers import convert as from_layers
    from fastconv.report import ConversionReport

    assert from_layers is convert and FromLayers is ConversionReport


def test_converting_twice_changes_nothing(torch_backend):
    converted, _ = convert(_torchvision("resnet18", "eval"))
    again, report = convert(converted)
    assert report.convs == report.convs_fastconv == 20
    assert report.batchnorms_folded == 0 and report.left_to_torch == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), use_backend("torch"):
        torch.testing.assert_close(again(x), converted(x))
