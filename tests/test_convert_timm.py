"""fastconv.fusion.convert on timm (a test dependency: fastconv imports nothing from it) and on
modules that are the identity in eval mode: timm's norm-act layers (BatchNormAct2d,
SyncBatchNormAct, FrozenBatchNormAct2d) folded with their activation, timm's activation
modules and create_act_layer's, DropPath / StochasticDepth / Dropout before a residual add
(skipped in eval mode, run in train mode). Whole timm models at full size on the torch
backend (counts, state_dict keys, parity in both modes whichever mode they were converted
in), hand-made blocks on the Triton kernels, what the report says. Whole small timm models
on Triton: tests/test_convert_timm_triton.py."""

import copy
import functools
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from timm.layers import (
    BatchNormAct2d,
    DropPath,
    FrozenBatchNormAct2d,
    activations,
    activations_me,
    convert_sync_batchnorm,
    create_act_layer,
)
from timm_models import TORCH_EPILOGUE_OPS, assert_nothing_left, check_eval_parity, tiny_model
from torch import nn

from fastconv.conv_bn import Conv2dBatchNormAct
from fastconv.convert import randomize_batchnorms
from fastconv.fusion import convert
from fastconv.patterns import recognized


def assert_same_training_step(converted, original, x, seed=1) -> None:
    """One forward and backward of a copy of ``converted`` and of a float32 copy of
    ``original`` with the same random state (the same dropout and drop-path masks): outputs,
    gradients of the input and of every parameter, and buffers (running statistics) agree."""
    converted, reference = copy.deepcopy(converted), copy.deepcopy(original)
    x = x.detach().requires_grad_()
    x_ref = x.detach().requires_grad_()
    torch.manual_seed(seed)
    y = converted(x)
    torch.manual_seed(seed)
    y_ref = reference(x_ref)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    y.backward(grad_out)
    y_ref.backward(grad_out)
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y, y_ref, **close)
    torch.testing.assert_close(x.grad, x_ref.grad, **close)
    reference_params = dict(reference.named_parameters())
    for name, param in converted.named_parameters():
        torch.testing.assert_close(param.grad, reference_params[name].grad, **close, msg=name)
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in converted.named_buffers():
        torch.testing.assert_close(buffer, reference_buffers[name], **close, msg=name)


def test_fastconv_imports_nothing_from_timm():
    """Importing fastconv and converting a model (torchvision's EfficientNet: StochasticDepth
    recognized) imports no timm module; without timm imported no timm class is known."""
    code = (
        "import sys, torchvision\n"
        "import fastconv, fastconv.layers, fastconv.conv_bn, fastconv.convert\n"
        "from fastconv.fusion import convert\n"
        "from fastconv.patterns import recognized\n"
        "_, report = convert(torchvision.models.efficientnet_b0().eval())\n"
        "print(report.adds_fused, report.identities_skipped)\n"
        "print(len(recognized().norm_act_modules))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'timm'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["9 9", "0", "[]"]


# --------------------------------------------------------------------------- whole models

# timm model -> (convs, BatchNorms, supported activations, residual adds, DropPaths), with
# drop_path_rate=0.1; every BatchNorm folds, every activation and add fuses, each DropPath
# (the first block of a stage at rate 0 has an nn.Identity instead) joins a fused add
MODELS = {
    "efficientnet_b0": (81, 49, 65, 9, 9),
    "mobilenetv3_small_100": (53, 34, 33, 6, 6),
    "regnety_002": (70, 44, 66, 13, 12),
    "resnet18d": (22, 22, 19, 8, 7),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(MODELS))
def test_timm_model_structure_and_parity(name, mode, torch_backend):
    """Converted in ``mode``: the report's counts equal the model's own modules, nothing is
    left to torch, the graph calls no BatchNorm, activation or DropPath, the state_dict keys
    are the original's; then in eval mode the output matches the original in float64, and
    in train mode (DropPath active) one training step matches the original's exactly as
    computed in torch (same masks, gradients, running statistics)."""
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.1)
    randomize_batchnorms(model)
    model.train(mode == "train")
    converted, report = convert(model)

    convs, batchnorms, acts, adds, drop_paths = MODELS[name]
    supported = tuple(recognized().activation_modules)
    modules = list(model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in modules) == convs
    assert sum(isinstance(m, nn.BatchNorm2d) for m in modules) == batchnorms
    assert sum(type(m) in supported for m in modules) == acts  # each called once
    assert report.method == "fx" and report.mode == mode
    assert (report.convs, report.convs_fastconv) == (convs, convs)
    assert (report.batchnorms, report.batchnorms_folded) == (batchnorms, batchnorms)
    assert (report.activations, report.activations_fused) == (acts, acts)
    assert (report.adds_fused, report.identities_skipped) == (adds, drop_paths)
    assert report.left_to_torch == []
    text = str(report)
    assert f"  eval identities    {drop_paths:>7}   in fused chains" in text
    assert f"note   {drop_paths} DropPath (the identity in eval mode) fused" in text
    assert_nothing_left(converted)
    assert list(converted.state_dict()) == list(model.state_dict())

    x = torch.randn(2, 3, 64, 64)
    check_eval_parity(converted.eval(), model.eval(), x, atol=1e-4, rtol=1e-3)
    assert_same_training_step(converted.train(), model.train(), x)


# --------------------------------------------------------------------------- activations

# timm act_layer (a class, or a name for create_act_layer) -> the epilogue's activation
TIMM_ACT_LAYERS = {
    activations.Swish: "silu",
    activations_me.SwishMe: "silu",
    activations.HardSwish: "hardswish",
    activations_me.HardSwishMe: "hardswish",
    activations.GELU: "gelu",
    activations.GELUTanh: "gelu_tanh",
    activations.Sigmoid: "sigmoid",
    "swish": "silu",
    "hard_swish": "hardswish",
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "sigmoid": "sigmoid",
    "relu": "relu",
    "relu6": "relu6",
    "leaky_relu": "leaky_relu",
}


class TimmActivations(nn.Module):
    """Per act_layer, conv -> nn.BatchNorm2d -> create_act_layer(act_layer) and conv ->
    BatchNormAct2d(act_layer=act_layer) (whose act is in place)."""

    def __init__(self):
        super().__init__()
        n = len(TIMM_ACT_LAYERS)
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(2 * n))
        self.bns = nn.ModuleList(nn.BatchNorm2d(3) for _ in range(n))
        self.acts = nn.ModuleList(create_act_layer(layer) for layer in TIMM_ACT_LAYERS)
        self.norm_acts = nn.ModuleList(BatchNormAct2d(3, act_layer=a) for a in TIMM_ACT_LAYERS)

    def forward(self, x):
        n = len(self.bns)
        outputs = [
            act(bn(conv(x)))
            for conv, bn, act in zip(self.convs[:n], self.bns, self.acts, strict=True)
        ]
        outputs += [
            norm(conv(x)) for conv, norm in zip(self.convs[n:], self.norm_acts, strict=True)
        ]
        return torch.cat(outputs, 1)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_timm_activations_fuse(mode, torch_backend):
    """timm's activation classes and create_act_layer's count as the torch activations they
    compute, after a BatchNorm and as a BatchNormAct2d's act."""
    torch.manual_seed(0)
    model = TimmActivations()
    randomize_batchnorms(model)
    model.train(mode == "train")
    converted, report = convert(model)
    n = len(TIMM_ACT_LAYERS)
    assert (report.activations, report.activations_fused) == (2 * n, 2 * n)
    assert (report.batchnorms, report.batchnorms_folded) == (2 * n, 2 * n)
    assert report.left_to_torch == []
    expected = list(TIMM_ACT_LAYERS.values()) * 2
    for index, activation in enumerate(expected):
        fused = converted.get_submodule(f"convs.{index}")
        assert type(fused) is Conv2dBatchNormAct, index
        assert (fused.activation, fused.norm_act, fused.activation_in_norm) == (
            activation,
            index >= n,
            index >= n,
        ), index
    assert_nothing_left(converted)
    x = torch.randn(2, 3, 5, 5)
    check_eval_parity(converted.eval(), model.eval(), x, atol=1e-5, rtol=1e-5)
    assert_same_training_step(converted.train(), model.train(), x)


# --------------------------------------------------------------------------- norm-act layers


def _frozen(features: int) -> FrozenBatchNormAct2d:
    norm = FrozenBatchNormAct2d(features, act_layer=nn.ReLU)
    generator = torch.Generator().manual_seed(3)
    norm.running_mean.normal_(0.0, 0.2, generator=generator)
    norm.running_var.uniform_(0.5, 2.0, generator=generator)
    norm.weight.uniform_(0.5, 1.5, generator=generator)
    norm.bias.normal_(0.0, 0.2, generator=generator)
    return norm


# name -> (norm-act layer, the activation the epilogue applies: its act, or identity when
# it has none or the epilogue does not compute it)
NORM_ACTS = {
    "silu": (lambda: BatchNormAct2d(4, act_layer=nn.SiLU), "silu"),
    "apply_act=False": (lambda: BatchNormAct2d(4, apply_act=False), "identity"),
    "hardtanh(-1, 1)": (lambda: BatchNormAct2d(4, act_layer=nn.Hardtanh), "identity"),
    "hardsigmoid": (lambda: BatchNormAct2d(4, act_layer=nn.Hardsigmoid), "identity"),
    "drop=Dropout": (
        lambda: BatchNormAct2d(4, drop_layer=functools.partial(nn.Dropout, 0.5)),
        "relu",
    ),
    "FrozenBatchNormAct2d": (lambda: _frozen(4), "relu"),
    "SyncBatchNormAct": (lambda: convert_sync_batchnorm(BatchNormAct2d(4)), "relu"),
}


class NormActs(nn.Module):
    """One conv -> norm-act layer per NORM_ACTS entry."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1) for _ in NORM_ACTS)
        self.norms = nn.ModuleList(build() for build, _ in NORM_ACTS.values())

    def forward(self, x):
        outputs = [norm(conv(x)) for conv, norm in zip(self.convs, self.norms, strict=True)]
        return torch.cat(outputs, 1)


def test_norm_act_layers_fold(torch_backend):
    """Every norm-act layer folds; its act fuses if the epilogue computes it, else runs after
    the kernel (the report says so); its drop is skipped in eval mode and runs in train mode;
    converted in eval mode, the model trains as the original, and as the original with its
    BatchNorms frozen (eval) while the dropout trains."""
    torch.manual_seed(0)
    model = NormActs()
    randomize_batchnorms(model)
    model.eval()
    converted, report = convert(model)
    assert (report.batchnorms, report.batchnorms_folded) == (len(NORM_ACTS), len(NORM_ACTS))
    assert (report.activations, report.activations_fused) == (5, 4)  # hardsigmoid: unknown
    assert report.left_to_torch == [
        ("norms.2.act", "an activation the fused epilogue does not compute; runs after the "
         "folded convolution"),
    ]  # fmt: skip
    assert report.identities_skipped == 1
    assert "1 Dropout (the identity in eval mode) fused into the chain before them" in str(report)
    fused = dict(report.fused)
    conv = "(Conv2dBatchNormAct)"  # the module at the conv's name now
    assert fused["convs.0"] == f"convs.0 {conv} -> norms.0 (BatchNormAct2d with SiLU)"
    assert fused["convs.1"] == f"convs.1 {conv} -> norms.1 (BatchNormAct2d)"
    for index, act in [(2, "Hardtanh"), (3, "Hardsigmoid")]:
        assert fused[f"convs.{index}"] == (
            f"convs.{index} {conv} -> norms.{index} (BatchNormAct2d with {act}), "
            "whose act runs after the kernel"
        )
    assert "norms.4.drop" in report.notes[-1]
    for index, (_, activation) in enumerate(NORM_ACTS.values()):
        module = converted.get_submodule(f"convs.{index}")
        assert type(module) is Conv2dBatchNormAct and module.norm_act, index
        assert module.activation == activation, index
        assert module.activation_in_norm == (activation != "identity"), index
    assert_nothing_left(converted)
    assert list(converted.state_dict()) == list(model.state_dict())

    x = torch.randn(2, 3, 5, 5)
    check_eval_parity(converted, model, x, atol=1e-5, rtol=1e-5)
    assert_same_training_step(converted.train(), model.train(), x)
    for index in range(len(NORM_ACTS)):  # frozen statistics, training dropout
        for norm in (converted.get_submodule(f"norms.{index}"), model.norms[index]):
            norm.eval()
            norm.drop.train()
    assert_same_training_step(converted, model, x)


def test_norm_act_with_hooks_is_not_folded(torch_backend):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4), nn.Conv2d(4, 4, 1))
    model[1].act.register_forward_hook(lambda module, args, output: output * 2)
    converted, report = convert(model.eval())
    assert report.batchnorms_folded == 0
    why = dict(report.left_to_torch)
    assert why["1"] == "its act (ReLU) has forward hooks, which a replacement would lose"
    assert why["1.act"] == "inside 1 (BatchNormAct2d with ReLU), left to torch"
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x))


# --------------------------------------------------------------------------- eval identities


class EvalIdentities(nn.Module):
    """Three residual blocks whose conv-BN output passes, before the add, a module that is
    the identity in eval mode: timm's DropPath after a BatchNormAct2d without activation,
    torchvision's StochasticDepth after a BatchNorm2d, nn.Dropout (then a ReLU)."""

    def __init__(self, p: float):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, apply_act=False)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.drop1 = DropPath(p)
        self.drop2 = torchvision.ops.StochasticDepth(p, "row")
        self.drop3 = nn.Dropout(p)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.drop1(self.bn1(self.conv1(x))) + x
        x = self.drop2(self.bn2(self.conv2(x))) + x
        return self.relu(x + self.drop3(self.bn3(self.conv3(x))))


def test_eval_identities_before_adds_on_triton(device, triton_backend, record_aten_ops):
    """On the Triton kernels: in eval mode each block is one kernel (no aten convolution,
    BatchNorm or activation), matching the original in float64; in train mode, and with the
    BatchNorms frozen (eval) while the identities train, the identities run as in the
    original (same masks: the same output and gradients)."""
    torch.manual_seed(0)
    model = EvalIdentities(p=0.5).to(device)
    randomize_batchnorms(model)
    model.eval()
    converted, report = convert(model)
    assert (report.adds_fused, report.identities_skipped, report.activations_fused) == (3, 3, 1)
    notes = "\n".join(report.notes)
    for name, target in [("DropPath", "drop1"), ("StochasticDepth", "drop2"), ("Dropout", "drop3")]:
        assert f"1 {name} (the identity in eval mode) fused into the chain before them: " in notes
        assert notes.count(target) == 1
    assert dict(report.fused)["conv1"] == (
        "conv1 (Conv2dBatchNormAct) -> bn1 (BatchNormAct2d) -> drop1 (DropPath) -> add (add)"
    )
    assert_nothing_left(converted)
    calls = [n for n in converted.graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["conv1", "conv2", "conv3"]
    assert all("residual" in n.kwargs and len(n.kwargs["identities"]) == 1 for n in calls)

    x = torch.randn(4, 4, 5, 5, device=device)
    with torch.no_grad(), record_aten_ops() as recorder:
        converted(x)
    assert recorder.forbidden() == [] and set(recorder.ops) & TORCH_EPILOGUE_OPS == set()
    check_eval_parity(converted, model, x, atol=1e-5, rtol=1e-5)

    converted.train()
    model.train()
    with record_aten_ops() as recorder:
        copy.deepcopy(converted)(x.detach().requires_grad_()).sum().backward()
    assert recorder.forbidden() == []
    assert_same_training_step(converted, model, x)
    without_masks = copy.deepcopy(converted)
    for drop in (without_masks.drop1, without_masks.drop2, without_masks.drop3):
        drop.eval()
    with torch.no_grad():  # the masks are not all ones
        torch.manual_seed(1)
        assert not torch.allclose(copy.deepcopy(converted)(x), without_masks(x))
    for bn in (converted.bn1, converted.bn2, converted.bn3, model.bn1, model.bn2, model.bn3):
        bn.eval()  # frozen statistics, training identities: the kernel folds, torch the rest
    assert_same_training_step(converted, model, x)


def test_torchvision_efficientnet_stochastic_depth_runs_in_train_mode(torch_backend):
    """torchvision's EfficientNet converted in eval mode: its adds after StochasticDepth fuse,
    and in train mode the StochasticDepth runs again (the same step as the original's)."""
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0(stochastic_depth_prob=0.5).eval()
    model.classifier[0].p = 0.0  # the classifier's dropout: its mask is not under test
    randomize_batchnorms(model)
    converted, report = convert(model)
    assert (report.adds_fused, report.identities_skipped) == (9, 9)
    assert report.batchnorms == report.batchnorms_folded == 49
    assert report.activations == report.activations_fused == 65
    x = torch.randn(2, 3, 32, 32)
    check_eval_parity(converted, model, x, atol=1e-4, rtol=1e-3)
    assert_same_training_step(converted.train(), model.train(), x)


# --------------------------------------------------------------------------- report


def test_mode_read_outside_forward_is_noted(torch_backend):
    """timm's forward_head calls F.dropout(training=self.training) when drop_rate > 0: the
    trace freezes it, and the report says so (a second trace in the other mode differs)."""
    model = tiny_model("resnet18d", "eval", drop_path_rate=0.0)
    _, report = convert(model)
    assert not any("reads self.training" in note for note in report.notes)
    model.drop_rate = 0.2
    _, report = convert(model)
    assert (
        "traced in eval mode through the code that calls dropout (dropout), which reads "
        "self.training: convert again after switching the model's mode" in report.notes
    )
    assert model.training is False and all(not m.training for m in model.modules())


def test_identity_calls_are_dropped(torch_backend):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Identity(), nn.ReLU())
    converted, report = convert(model.eval())
    assert report.activations_fused == 1 and report.batchnorms_folded == 1
    assert report.notes == ["1 nn.Identity calls dropped from the graph (they compute nothing)"]
    assert [n.op for n in converted.graph.nodes] == ["placeholder", "get_attr", "call_module",
                                                     "output"]  # fmt: skip
