"""Whole small timm models of four families (tests/timm_models.py: ResNet-D, RegNetY,
EfficientNet, MobileNetV3), converted by fastconv.fusion.convert and run on the Triton
kernels (Triton's interpreter without a GPU) at 32x32: the report's counts (every BatchNorm
folded, every supported activation and residual add fused, each DropPath in a fused chain,
nothing left to torch); in eval mode no aten convolution, pooling, BatchNorm or supported
activation runs and the output matches the original in float64; in train mode no aten
convolution or pooling runs and the output, the input gradient and every parameter gradient
match (MobileNetV3 in eval mode only: its backward takes a minute in the interpreter; its
train mode runs at full size on the torch backend in tests/test_convert_timm.py)."""

import copy

import pytest
import torch
from conftest import DEVICE
from timm_models import (
    TORCH_EPILOGUE_OPS,
    assert_nothing_left,
    check_eval_parity,
    check_train_parity,
    stochastic_depth_off,
    tiny_model,
)

from fastconv.fusion import convert

# family -> (convs, BatchNorms, supported activations, residual adds, DropPaths fused)
COUNTS = {
    "resnet18d": (15, 15, 11, 4, 3),
    "regnety_002": (30, 20, 26, 5, 4),
    "efficientnet": (26, 16, 21, 3, 2),
    "mobilenetv3_small_050": (38, 25, 24, 4, 4),
}
CASES = [(family, "eval") for family in COUNTS] + [
    (family, "train") for family in ("resnet18d", "regnety_002", "efficientnet")
]


@pytest.mark.parametrize(("family", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_timm_model_on_triton(family, mode, triton_backend, record_aten_ops):
    model = tiny_model(family, mode).to(DEVICE)
    converted, report = convert(model)
    convs, batchnorms, activations, adds, drop_paths = COUNTS[family]
    assert (report.convs, report.convs_fastconv) == (convs, convs)
    assert (report.batchnorms, report.batchnorms_folded) == (batchnorms, batchnorms)
    assert (report.activations, report.activations_fused) == (activations, activations)
    assert (report.adds_fused, report.identities_skipped) == (adds, drop_paths)
    assert report.pools == report.pools_fastconv and report.left_to_torch == []
    assert_nothing_left(converted)
    assert list(converted.state_dict()) == list(model.state_dict())

    if mode == "eval":
        x = torch.randn(1, 3, 32, 32, device=DEVICE)
        with torch.no_grad(), record_aten_ops() as recorder:
            copy.deepcopy(converted)(x)
        assert recorder.forbidden() == []
        assert set(recorder.ops) & TORCH_EPILOGUE_OPS == set()
        check_eval_parity(converted, model, x)
        return
    stochastic_depth_off(model)  # random masks: tests/test_convert_timm.py checks them
    stochastic_depth_off(converted)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    recorder = check_train_parity(converted, model, x, record=record_aten_ops)
    assert recorder.forbidden() == []
