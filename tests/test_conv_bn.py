"""fastconv.conv_bn: BatchNorm folded into the conv epilogue in eval mode (output and every
gradient against conv + BatchNorm in float64, on Triton with no aten convolution), the
BatchNorm run as the original module in train mode (running statistics, momentum=None,
num_batches_tracked), and a converted model's conv and BatchNorm staying one pair through
.to(), .half(), deepcopy, pickling and load_state_dict."""

import copy
import io

import pytest
import torch
from conftest import DEVICE
from torch import nn

from fastconv.activations import reference_activation
from fastconv.conv_bn import Conv2dBatchNormAct, fold_batch_norm
from fastconv.fusion import convert


def _randomize(bn: nn.BatchNorm2d, seed: int = 0) -> nn.BatchNorm2d:
    """Non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return bn


class ConvBN(nn.Module):
    """conv -> BatchNorm -> [+ residual] -> activation, as torch modules."""

    def __init__(self, bias=True, affine=True, momentum=0.1, activation="relu", groups=1):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=bias, groups=groups)
        self.bn = _randomize(nn.BatchNorm2d(6, affine=affine, momentum=momentum))
        self.activation = activation

    def forward(self, x, residual=None):
        z = self.bn(self.conv(x))
        return reference_activation(z if residual is None else z + residual, self.activation)


def _fused(module: ConvBN) -> Conv2dBatchNormAct:
    return Conv2dBatchNormAct.from_torch(module.conv, activation=module.activation)


def test_fold_batch_norm_math():
    bn = _randomize(nn.BatchNorm2d(5, eps=1e-3)).eval()
    conv_bias = torch.randn(5)
    scale, bias = fold_batch_norm(conv_bias, bn)
    z = torch.randn(2, 5, 3, 3)
    expected = bn(z + conv_bias.view(1, -1, 1, 1))
    actual = z * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(scale, bn.weight / torch.sqrt(bn.running_var + 1e-3))


@pytest.mark.parametrize(
    ("bias", "affine", "activation", "groups"),
    [(True, True, "relu", 1), (False, True, "silu", 1), (True, False, "identity", 2)],
    ids=["bias-affine-relu", "nobias-silu", "not-affine-grouped"],
)
def test_eval_folds_into_one_kernel(
    bias, affine, activation, groups, triton_backend, record_aten_ops
):
    """Eval mode: output and the gradients of x, the residual, the conv weight and bias and
    the BatchNorm weight and bias against conv + BatchNorm in float64; one Triton kernel
    each way (no aten convolution, no batch_norm)."""
    torch.manual_seed(0)
    original = ConvBN(bias, affine, activation=activation, groups=groups).to(DEVICE).eval()
    fused = _fused(original)
    reference = copy.deepcopy(original).double()
    x = torch.randn(2, 4, 5, 5, device=DEVICE, requires_grad=True)
    residual = torch.randn(2, 6, 5, 5, device=DEVICE, requires_grad=True)
    grad_out = torch.randn(2, 6, 5, 5, device=DEVICE)

    with record_aten_ops() as recorder:
        y = fused(x, original.bn, residual)
        y.backward(grad_out)
    assert recorder.forbidden() == []
    assert not any("batch_norm" in op for op in recorder.ops)

    x_ref, r_ref = (t.detach().double().requires_grad_() for t in (x, residual))
    y_ref = reference(x_ref, r_ref)
    y_ref.backward(grad_out.double())
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y, y_ref.float(), **close)
    torch.testing.assert_close(x.grad, x_ref.grad.float(), **close)
    torch.testing.assert_close(residual.grad, r_ref.grad.float(), **close)
    params = {"conv.weight": fused.weight, "conv.bias": fused.bias}
    params.update({f"bn.{n}": p for n, p in original.bn.named_parameters()})
    expected = dict(reference.named_parameters())
    for name, param in params.items():
        if param is not None:
            torch.testing.assert_close(param.grad, expected[name].grad.float(), **close, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_train_runs_the_batchnorm_module(momentum, torch_backend):
    """Train mode: batch statistics, running statistics (exponential or cumulative average)
    and num_batches_tracked exactly as the original module over three steps."""
    torch.manual_seed(0)
    original = ConvBN(momentum=momentum).train()
    twin = copy.deepcopy(original)
    fused = _fused(twin)
    for step in range(3):
        x = torch.randn(3, 4, 5, 5)
        torch.testing.assert_close(fused(x, twin.bn), original(x), msg=f"step {step}")
    for name, buffer in original.bn.named_buffers():
        torch.testing.assert_close(getattr(twin.bn, name), buffer, msg=name)
    assert int(twin.bn.num_batches_tracked) == 3


def test_train_on_triton_has_no_aten_convolution(triton_backend, record_aten_ops):
    torch.manual_seed(0)
    original = ConvBN().to(DEVICE).train()
    twin = copy.deepcopy(original)
    x = torch.randn(2, 4, 5, 5, device=DEVICE, requires_grad=True)
    with record_aten_ops() as recorder:
        y = _fused(twin)(x, twin.bn)
        y.sum().backward()
    assert recorder.forbidden() == []
    expected = original(x.detach())
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_refuses_batchnorm_without_running_stats(torch_backend):
    conv = nn.Conv2d(4, 6, 3)
    bn = nn.BatchNorm2d(6, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        Conv2dBatchNormAct.from_torch(conv)(torch.randn(1, 4, 5, 5), bn)


class Net(nn.Module):
    """conv -> BatchNorm -> ReLU twice, the second with a residual."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = _randomize(nn.BatchNorm2d(4), 1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = _randomize(nn.BatchNorm2d(4), 2)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + y)


def _pair_is_consistent(model, original, x, dtype=torch.float32):
    """Same keys as the original, the fused convs' BatchNorms are the registered ones, and
    the output matches the original's."""
    assert list(model.state_dict()) == list(original.state_dict())
    assert model.get_submodule("conv1").__class__ is Conv2dBatchNormAct
    with torch.no_grad():
        torch.testing.assert_close(model(x.to(dtype)), original(x.to(dtype)), atol=2e-3, rtol=2e-3)


def test_converted_pair_survives_to_half_deepcopy_pickle_and_state_dict(torch_backend):
    torch.manual_seed(0)
    original = Net().eval()
    model, report = convert(original)
    assert report.batchnorms_folded == 2 and report.adds_fused == 1
    x = torch.randn(1, 3, 6, 6)
    _pair_is_consistent(model, original, x)

    _pair_is_consistent(copy.deepcopy(model), original, x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    _pair_is_consistent(torch.load(buffer, weights_only=False), original, x)
    _pair_is_consistent(
        copy.deepcopy(model).double(), copy.deepcopy(original).double(), x, torch.float64
    )
    half = copy.deepcopy(model).half()
    assert {t.dtype for t in half.state_dict().values()} == {torch.float16, torch.int64}
    assert half.get_submodule("bn2").running_var.dtype == torch.float16

    # checkpoints both ways, strict
    fresh = Net().eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    _pair_is_consistent(model, fresh, x)
    other, _ = convert(Net().eval())
    other.load_state_dict(original.state_dict(), strict=True)
    _pair_is_consistent(other, original, x)
    # a state change through the converted model's BatchNorm is what the fused conv uses
    with torch.no_grad():
        model.get_submodule("bn1").running_mean.add_(1.0)
        original.bn1.running_mean.add_(1.0)
    _pair_is_consistent(model, original, x)
