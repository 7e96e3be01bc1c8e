"""fastconv.layers: drop-in compatibility with torch.nn and parity of a small model."""

import copy
import io

import pytest
import torch
from conftest import assert_model_matches_float64, profile_ops
from torch import nn

from fastconv import layers
from fastconv.backend import use_backend

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


@pytest.mark.parametrize(
    ("c", "k", "groups"), [(4, 6, 2), (6, 6, 6), (3, 6, 3)], ids=["grouped", "depthwise", "x2"]
)
def test_grouped_conv_layer_matches_torch(device, triton_backend, record_aten_ops, c, k, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(c, k, 3, stride=(2, 1), padding=1, groups=groups).to(device)
    layer = layers.Conv2dReLU.from_torch(copy.deepcopy(conv))
    x = torch.randn(2, c, 7, 6, device=device, requires_grad=True)
    with record_aten_ops() as recorder:
        y = layer(x)
        grad_y = torch.randn_like(y)
        y.backward(grad_y)
    assert recorder.forbidden() == []
    x64 = x.detach().double().requires_grad_()
    conv64 = conv.double()
    y64 = torch.relu(conv64(x64))
    y64.backward(grad_y.double())
    for ours, ref in (
        (y, y64),
        (x.grad, x64.grad),
        (layer.weight.grad, conv64.weight.grad),
        (layer.bias.grad, conv64.bias.grad),
    ):
        torch.testing.assert_close(ours.detach().double(), ref, atol=1e-4, rtol=1e-4)


def test_max_pool_return_indices_matches_torch(device, triton_backend, record_aten_ops):
    x = torch.randn(2, 3, 7, 6, device=device)
    with record_aten_ops() as recorder:
        values, indices = layers.MaxPool2d(3, stride=2, padding=1, return_indices=True)(x)
    assert recorder.forbidden() == []
    expected_values, expected_indices = nn.MaxPool2d(3, 2, 1, return_indices=True)(x)
    torch.testing.assert_close(values, expected_values, atol=0, rtol=0)
    assert torch.equal(indices, expected_indices)


def _torch_twin(fastconv_model: nn.Sequential) -> nn.Sequential:
    """The torch.nn model (``_torch_model``) holding ``fastconv_model``'s state, in float64."""
    device = next(fastconv_model.parameters()).device
    twin = _torch_model().to(device).double().train(fastconv_model.training)
    twin.load_state_dict(
        {_torch_keys(key): value for key, value in fastconv_model.state_dict().items()}
    )
    return twin


def test_vgg_style_model_matches_torch(device, triton_backend, record_aten_ops):
    """Output and every gradient of the fastconv model (Triton, float32) vs torch (float64)."""
    torch.manual_seed(0)
    fastconv_model = _fastconv_model().to(device)
    twin = _torch_twin(fastconv_model)
    x = torch.randn(2, 3, 16, 16, device=device, requires_grad=True)
    grad_out = torch.randn(2, 5, device=device)

    with record_aten_ops() as recorder:
        y = fastconv_model(x)
        y.backward(grad_out)
    assert recorder.forbidden() == []
    assert_model_matches_float64(fastconv_model, twin, x, y, grad_out, _torch_keys)


def _counting_aot_eager(graphs: list):
    """torch.compile backend: aot_eager, recording each graph dynamo hands it."""

    def compiler(graph_module, example_inputs):
        graphs.append(graph_module)
        return torch._dynamo.lookup_backend("aot_eager")(graph_module, example_inputs)

    return compiler


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_torch_compile_of_fastconv_model_matches_torch_nn(backend_name, device):
    """torch.compile(fullgraph=True) of the fastconv model: one graph, and output and every
    gradient match the torch.nn model. On the Triton backend the graph calls the
    ``torch.ops.fastconv`` ops and no aten conv or pool runs; on the torch backend it holds
    torch's ops. The reference is an independent torch.nn model, not eager fastconv.
    """
    torch.manual_seed(0)
    fastconv_model = _fastconv_model().to(device)
    twin = _torch_twin(fastconv_model)
    graphs = []
    compiled = torch.compile(fastconv_model, backend=_counting_aot_eager(graphs), fullgraph=True)
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    grad_out = torch.randn(2, 5, device=device)

    with use_backend(backend_name), profile_ops() as ops:
        y = compiled(x)
        y.backward(grad_out)
    assert len(graphs) == 1 and ops.compiled_regions(), "the compiled model ran no compiled code"
    called = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    fastconv_ops = {name for name in called if name.startswith("fastconv.")}
    if backend_name == "triton":
        assert ops.forbidden() == []
        assert {"fastconv.conv2d.default", "fastconv.max_pool2d.default"} <= fastconv_ops
    else:
        assert not fastconv_ops
        assert ops.forbidden(), "the profiler saw no conv: it cannot vouch for the Triton case"
    assert_model_matches_float64(fastconv_model, twin, x, y, grad_out, _torch_keys)


# --------------------------------------------------------------------------- from_torch

# Attributes from_torch must carry over, per fastconv class ("training" is the module's mode).
COPIED_ATTRIBUTES = {
    layers.Conv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "training",
    ),
    layers.MaxPool2d: (
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "return_indices",
        "ceil_mode",
        "training",
    ),
    layers.AvgPool2d: (
        "kernel_size",
        "stride",
        "padding",
        "ceil_mode",
        "count_include_pad",
        "divisor_override",
        "training",
    ),
    layers.AdaptiveAvgPool2d: ("output_size", "training"),
}

# One case per copied attribute: the base module of its class with only that attribute set
# to a value other than the default, so that dropping the copy of one attribute in
# from_torch fails that attribute's case and no other. Bases: nn.Conv2d(4, 4, 3, bias=False),
# nn.MaxPool2d(3), nn.AvgPool2d(3), nn.AdaptiveAvgPool2d(2). Inputs are (2, C, 9, 8): in ceil
# mode a 3-wide window with stride 3 gives 3 columns instead of 2.
FROM_TORCH_CASES = {
    "conv-in_out_channels": (layers.Conv2d, lambda: nn.Conv2d(3, 5, 3, bias=False)),
    "conv-kernel_size": (layers.Conv2d, lambda: nn.Conv2d(4, 4, (3, 2), bias=False)),
    "conv-stride": (layers.Conv2d, lambda: nn.Conv2d(4, 4, 3, stride=(2, 3), bias=False)),
    "conv-padding": (layers.Conv2d, lambda: nn.Conv2d(4, 4, 3, padding=(2, 1), bias=False)),
    "conv-padding_same": (
        layers.Conv2d,
        lambda: nn.Conv2d(4, 4, 3, padding="same", bias=False),
    ),
    "conv-dilation": (layers.Conv2d, lambda: nn.Conv2d(4, 4, 3, dilation=(2, 3), bias=False)),
    "conv-bias": (layers.Conv2d, lambda: nn.Conv2d(4, 4, 3, bias=True)),
    "conv-eval": (layers.Conv2d, lambda: nn.Conv2d(4, 4, 3, bias=False).eval()),
    "max-kernel_size": (layers.MaxPool2d, lambda: nn.MaxPool2d((3, 2))),
    "max-stride": (layers.MaxPool2d, lambda: nn.MaxPool2d(3, stride=(2, 1))),
    "max-padding": (layers.MaxPool2d, lambda: nn.MaxPool2d(3, padding=1)),
    "max-dilation": (layers.MaxPool2d, lambda: nn.MaxPool2d(3, dilation=(2, 1))),
    "max-return_indices": (layers.MaxPool2d, lambda: nn.MaxPool2d(3, return_indices=True)),
    "max-ceil_mode": (layers.MaxPool2d, lambda: nn.MaxPool2d(3, ceil_mode=True)),
    "max-eval": (layers.MaxPool2d, lambda: nn.MaxPool2d(3).eval()),
    "avg-kernel_size": (layers.AvgPool2d, lambda: nn.AvgPool2d((3, 2))),
    "avg-stride": (layers.AvgPool2d, lambda: nn.AvgPool2d(3, stride=(2, 1))),
    "avg-padding": (layers.AvgPool2d, lambda: nn.AvgPool2d(3, padding=1)),
    "avg-ceil_mode": (layers.AvgPool2d, lambda: nn.AvgPool2d(3, ceil_mode=True)),
    # count_include_pad changes the output only with padding, so this case sets padding too.
    "avg-count_include_pad": (
        layers.AvgPool2d,
        lambda: nn.AvgPool2d(3, padding=1, count_include_pad=False),
    ),
    "avg-divisor_override": (layers.AvgPool2d, lambda: nn.AvgPool2d(3, divisor_override=5)),
    "avg-eval": (layers.AvgPool2d, lambda: nn.AvgPool2d(3).eval()),
    "adaptive-output_size": (layers.AdaptiveAvgPool2d, lambda: nn.AdaptiveAvgPool2d((2, 3))),
    "adaptive-output_size_none": (
        layers.AdaptiveAvgPool2d,
        lambda: nn.AdaptiveAvgPool2d((None, 3)),
    ),
    "adaptive-eval": (layers.AdaptiveAvgPool2d, lambda: nn.AdaptiveAvgPool2d(2).eval()),
}


@pytest.mark.parametrize(
    ("fastconv_cls", "make_module"), FROM_TORCH_CASES.values(), ids=list(FROM_TORCH_CASES)
)
def test_from_torch_copies_attribute(
    fastconv_cls, make_module, device, triton_backend, record_aten_ops
):
    """from_torch keeps each hyper-parameter, the parameters and the mode; same output on Triton."""
    torch.manual_seed(0)
    module = make_module().to(device)
    layer = fastconv_cls.from_torch(module)
    assert type(layer) is fastconv_cls
    for name in COPIED_ATTRIBUTES[fastconv_cls]:
        assert getattr(layer, name) == getattr(module, name), name
    if isinstance(module, nn.Conv2d):
        assert layer.weight is module.weight and layer.bias is module.bias
    channels = getattr(module, "in_channels", 2)
    x = torch.randn(2, channels, 9, 8, device=device)
    with torch.no_grad():
        with record_aten_ops() as recorder:
            actual = layer(x)
        assert recorder.forbidden() == []
        expected = copy.deepcopy(module).double()(x.double())
    if getattr(module, "return_indices", False):
        (actual, actual_indices), (expected, expected_indices) = actual, expected
        assert torch.equal(actual_indices, expected_indices)
    torch.testing.assert_close(actual, expected.float(), atol=1e-5, rtol=1e-5)


def test_conv2d_relu_from_torch_applies_relu(device, triton_backend, record_aten_ops):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3).to(device)
    layer = layers.Conv2dReLU.from_torch(conv)
    assert type(layer) is layers.Conv2dReLU
    assert layer.weight is conv.weight and layer.bias is conv.bias
    x = torch.randn(2, 4, 6, 5, device=device)
    with torch.no_grad():
        with record_aten_ops() as recorder:
            actual = layer(x)
        assert recorder.forbidden() == []
        expected = torch.relu(copy.deepcopy(conv).double()(x.double()))
    assert (actual == 0).any()  # the ReLU had something to do
    torch.testing.assert_close(actual, expected.float(), atol=1e-5, rtol=1e-5)


# Options the kernels do not run: from_torch refuses them (convert leaves them to torch).
