"""fastconv.layers: drop-in compatibility with torch.nn and parity of a small model."""

import io

import pytest
import torch
from torch import nn

from fastconv import layers

# fastconv layer -> the torch layer it replaces, with the same constructor arguments.
LAYER_PAIRS = [
    (layers.Conv2d, nn.Conv2d, (3, 8, 3), {"padding": 1}),  # bias, 3x3
    (layers.Conv2d, nn.Conv2d, (4, 6, (1, 3)), {"stride": 2, "bias": False}),  # no bias
    (layers.Conv2dReLU, nn.Conv2d, (3, 8, 5), {"padding": "same", "dilation": 2}),
    (layers.MaxPool2d, nn.MaxPool2d, (3,), {"stride": 2, "padding": 1, "ceil_mode": True}),
    (layers.AvgPool2d, nn.AvgPool2d, (2,), {"count_include_pad": False}),
    (layers.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, ((2, 3),), {}),
]
PAIR_IDS = [f"{fc.__name__}-{i}" for i, (fc, *_) in enumerate(LAYER_PAIRS)]


def _vgg_style(conv, conv_relu, max_pool, avg_pool, adaptive_pool) -> nn.Sequential:
    """A tiny VGG-style classifier; (N, 3, 16, 16) -> (N, 5). ``conv_relu`` returns a module."""
    return nn.Sequential(
        conv_relu(3, 8, 3, padding=1),
        conv_relu(8, 8, 3, padding=1),
        max_pool(2),
        conv(8, 6, 3, stride=2, padding=1, bias=False),  # 8x8 -> 4x4, no bias, no ReLU
        nn.BatchNorm2d(6),
        conv_relu(6, 7, 1),
        avg_pool(2, stride=1),  # 4x4 -> 3x3
        adaptive_pool((2, 2)),
        nn.Flatten(),
        nn.Linear(7 * 2 * 2, 5),
    )


def _fastconv_model() -> nn.Sequential:
    return _vgg_style(
        layers.Conv2d,
        layers.Conv2dReLU,
        layers.MaxPool2d,
        layers.AvgPool2d,
        layers.AdaptiveAvgPool2d,
    )


def _torch_model() -> nn.Sequential:
    return _vgg_style(
        nn.Conv2d,
        lambda *args, **kwargs: nn.Sequential(nn.Conv2d(*args, **kwargs), nn.ReLU()),
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
    )


def _torch_keys(key: str) -> str:
    """State-dict key of the torch model for a key of the fastconv model (conv is ``i.0``)."""
    index, rest = key.split(".", 1)
    return f"{index}.0.{rest}" if index in ("0", "1", "5") else key


def _save_load(state: dict) -> dict:
    """Round trip through torch.save / torch.load(weights_only=True), as a checkpoint does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("fastconv_cls", "torch_cls", "args", "kwargs"), LAYER_PAIRS, ids=PAIR_IDS)
def test_layer_is_drop_in(fastconv_cls, torch_cls, args, kwargs):
    fastconv_layer = fastconv_cls(*args, **kwargs)
    torch_layer = torch_cls(*args, **kwargs)
    assert isinstance(fastconv_layer, torch_cls)
    assert repr(fastconv_layer).removeprefix(fastconv_cls.__name__) == repr(
        torch_layer
    ).removeprefix(torch_cls.__name__)

    # torch checkpoint -> fastconv layer, and back: same keys, strict loading.
    assert fastconv_layer.state_dict().keys() == torch_layer.state_dict().keys()
    fastconv_layer.load_state_dict(_save_load(torch_layer.state_dict()))
    for name, tensor in torch_layer.state_dict().items():
        assert torch.equal(fastconv_layer.state_dict()[name], tensor)
    restored = torch_cls(*args, **kwargs)
    restored.load_state_dict(_save_load(fastconv_layer.state_dict()))
    for name, tensor in torch_layer.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)


def test_conv2d_relu_repr_shows_fused_relu():
    assert repr(layers.Conv2dReLU(3, 8, 3)) == "Conv2dReLU(3, 8, kernel_size=(3, 3), stride=(1, 1))"


def test_model_checkpoints_load_both_ways():
    torch.manual_seed(0)
    fastconv_model, torch_model = _fastconv_model(), _torch_model()
    fastconv_keys = list(fastconv_model.state_dict())
    assert [_torch_keys(key) for key in fastconv_keys] == list(torch_model.state_dict())

    torch_state = _save_load(torch_model.state_dict())
    fastconv_model.load_state_dict({key: torch_state[_torch_keys(key)] for key in fastconv_keys})
    fastconv_state = _save_load(fastconv_model.state_dict())
    reloaded = _torch_model()
    reloaded.load_state_dict({_torch_keys(key): fastconv_state[key] for key in fastconv_keys})
    for key, tensor in torch_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor)


@pytest.mark.parametrize("cls", [layers.Conv2d, layers.Conv2dReLU])
def test_conv_rejects_padding_mode(cls):
    with pytest.raises(ValueError, match=r"padding_mode='reflect' is not supported.*'zeros' only"):
        cls(4, 4, 3, padding=1, padding_mode="reflect")


@pytest.mark.parametrize("cls", [layers.Conv2d, layers.Conv2dReLU])
def test_conv_rejects_groups(cls):
    with pytest.raises(NotImplementedError, match=r"groups=2 is not supported.*groups=1 only"):
        cls(4, 4, 3, groups=2)


def test_max_pool_return_indices_matches_torch(device, triton_backend, record_aten_ops):
    x = torch.randn(2, 3, 7, 6, device=device)
    with record_aten_ops() as recorder:
        values, indices = layers.MaxPool2d(3, stride=2, padding=1, return_indices=True)(x)
    assert recorder.forbidden() == []
    expected_values, expected_indices = nn.MaxPool2d(3, 2, 1, return_indices=True)(x)
    torch.testing.assert_close(values, expected_values, atol=0, rtol=0)
    assert torch.equal(indices, expected_indices)


def test_vgg_style_model_matches_torch(device, triton_backend, record_aten_ops, monkeypatch):
    """Output and every gradient of the fastconv model (Triton, float32) vs torch (float64)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 on a GPU too
    torch.manual_seed(0)
    fastconv_model = _fastconv_model().to(device)
    torch_model = _torch_model().to(device).double()
    torch_model.load_state_dict(
        {_torch_keys(key): value for key, value in fastconv_model.state_dict().items()}
    )
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    x_ref = x.detach().double().requires_grad_()
    grad_out = torch.randn(2, 5, device=device, dtype=torch.float64)

    with record_aten_ops() as recorder:
        y = fastconv_model(x)
        y.backward(grad_out.float())
    assert recorder.forbidden() == []
    y_ref = torch_model(x_ref)
    y_ref.backward(grad_out)

    torch.testing.assert_close(y, y_ref.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad.float(), atol=1e-4, rtol=1e-4)
    reference_params = dict(torch_model.named_parameters())
    for name, param in fastconv_model.named_parameters():
        expected = reference_params[_torch_keys(name)].grad.float()
        torch.testing.assert_close(param.grad, expected, atol=1e-4, rtol=1e-4, msg=name)


def test_torch_compile_of_fastconv_model(torch_backend):
    """On the torch backend the layers trace into one graph, forward and backward."""
    torch.manual_seed(0)
    model = _fastconv_model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y_compiled = compiled(x)
    y_compiled.sum().backward()
    grad_compiled = x.grad.clone()
    x.grad = None
    y_eager = model(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y_compiled, y_eager)
    torch.testing.assert_close(grad_compiled, x.grad)


def test_torch_compile_on_the_triton_backend(triton_backend, record_aten_ops):
    """On the Triton backend compile graph-breaks around the kernels; results match eager."""
    torch.manual_seed(0)
    model = _fastconv_model()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with record_aten_ops() as recorder:
        y_compiled = compiled(x)
        y_compiled.sum().backward()
    assert not recorder.forbidden()
    grad_compiled = x.grad.clone()
    x.grad = None
    y_eager = model(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y_compiled, y_eager)
    torch.testing.assert_close(grad_compiled, x.grad)
