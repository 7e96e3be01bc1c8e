"""Shared by the timm conversion tests: small timm models of four families, the aten ops that
mean a BatchNorm or a supported activation ran in torch, the check that a converted graph
calls none of the modules it fuses, and the parity checks of a converted model against the
original in float64 (eval: the output; train: the output, the input gradient and every
parameter gradient)."""

from __future__ import annotations

import contextlib
import copy

import timm
import torch
import torchvision
from timm.layers import DropPath
from torch import nn

from fastconv.convert import randomize_batchnorms
from fastconv.patterns import recognized


def _tiny_efficientnet(**kwargs) -> nn.Module:
    """timm's EfficientNet class with three stages of its blocks (depthwise-separable, then
    inverted residuals with squeeze-excite, SiLU, BatchNormAct2d, DropPath before the add)."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [
        ["ds_r1_k3_s1_e1_c8_se0.25"],
        ["ir_r2_k3_s2_e4_c16_se0.25"],
        ["ir_r2_k5_s2_e4_c24_se0.25"],
    ]
    return EfficientNet(decode_arch_def(arch), num_features=64, stem_size=8, **kwargs)


# family -> builder of a small model (random weights, 10 classes, stochastic depth 0.1)
TINY = {
    # ResNet-D: deep stem, average-pool downsampling; nn.BatchNorm2d + ReLU modules
    "resnet18d": lambda **kw: timm.create_model(
        "resnet18d", layers=(1, 1, 1, 1), channels=(16, 32, 48, 64), stem_width=16, **kw
    ),
    # RegNetY: ConvNormAct with BatchNormAct2d, grouped convs, squeeze-excite, ReLU after the add
    "regnety_002": lambda **kw: timm.create_model(
        "regnety_002", depth=5, w0=16, wa=12, wm=1.5, group_size=8, stem_width=16, **kw
    ),
    "efficientnet": _tiny_efficientnet,
    # MobileNetV3: hardswish and ReLU in BatchNormAct2d, hardsigmoid gates (left to torch)
    "mobilenetv3_small_050": lambda **kw: timm.create_model(
        "mobilenetv3_small_050", depth_multiplier=0.5, **kw
    ),
}

# aten ops that mean torch ran a BatchNorm or an activation the epilogue computes
TORCH_EPILOGUE_OPS = frozenset({
    "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "_batch_norm_impl_index", "relu", "relu_",
    "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "silu", "silu_",
    "hardswish", "hardswish_", "gelu", "sigmoid", "sigmoid_",
})  # fmt: skip


def assert_nothing_left(converted: nn.Module) -> None:
    """No BatchNorm, norm-act, supported activation, drop path (in these models each is
    before a residual add) or nn.Identity is called by the converted graph: each is inside a
    fused call or gone."""
    known = recognized()
    drop_paths = (DropPath, torchvision.ops.StochasticDepth)
    kept = (*known.batchnorm_modules, *known.activation_modules, *drop_paths, nn.Identity)
    for node in converted.graph.nodes:
        if node.op == "call_module":
            module = converted.get_submodule(node.target)
            assert not isinstance(module, kept), f"{node.target} ({type(module).__name__})"


def tiny_model(family: str, mode: str, drop_path_rate: float = 0.1) -> nn.Module:
    """The small model of ``family`` in ``mode`` with non-trivial BatchNorms (seed 0)."""
    torch.manual_seed(0)
    model = TINY[family](num_classes=10, drop_path_rate=drop_path_rate)
    randomize_batchnorms(model)
    return model.train(mode == "train")


def stochastic_depth_off(model: nn.Module) -> nn.Module:
    """DropPath to eval mode (its masks are random), the rest as it is."""
    for module in model.modules():
        if isinstance(module, DropPath):
            module.eval()
    return model


def check_eval_parity(converted, original, x, atol=1e-4, rtol=1e-4) -> None:
    with torch.no_grad():
        expected = copy.deepcopy(original).double()(x.double())
        torch.testing.assert_close(converted(x), expected.float(), atol=atol, rtol=rtol)


def check_train_parity(converted, original, x, record=contextlib.nullcontext):
    """One forward and backward of ``converted`` (inside ``record()``, whose value is
    returned) against ``original`` in float64: the output, the input gradient and each
    parameter gradient within 2e-4 of its largest value plus 10x the error of the original
    run in float32 (gradients through a train-mode BatchNorm over a few values are
    ill-conditioned: at 2x3x32x32 the original's own input gradient is off by 4e-3 of its
    largest value; a conv bias before one has a gradient that is 0 in exact arithmetic)."""
    reference = copy.deepcopy(original).double()
    float32 = copy.deepcopy(original)
    x = x.detach().requires_grad_()
    with record() as recorder:
        y = converted(x)
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
        y.backward(grad_out)
    x_ref = x.detach().double().requires_grad_()
    y_ref = reference(x_ref)
    y_ref.backward(grad_out.double())
    x32 = x.detach().requires_grad_()
    y32 = float32(x32)
    y32.backward(grad_out)
    expected = {"output": y_ref, "input grad": x_ref.grad}
    expected |= {f"grad {n}": p.grad for n, p in reference.named_parameters()}
    actual = {"output": y, "input grad": x.grad}
    actual |= {f"grad {n}": p.grad for n, p in converted.named_parameters()}
    torch_float32 = {"output": y32, "input grad": x32.grad}
    torch_float32 |= {f"grad {n}": p.grad for n, p in float32.named_parameters()}
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        error = (actual[name].double() - value).abs().max().item()
        torch_error = (torch_float32[name].double() - value).abs().max().item()
        limit = 2e-4 * value.abs().max().item() + 10 * torch_error
        assert error <= limit, f"{name}: {error:.2e} > {limit:.2e}"
    return recorder
