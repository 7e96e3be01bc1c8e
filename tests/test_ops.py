"""fastconv's kernels as ``torch.library`` ops (:mod:`fastconv.ops`): opcheck on every op,
``torch.compile(fullgraph=True)`` on the eager, aot_eager and inductor backends (dynamic
batch included), ``torch.export`` of a fastconv model and of a converted resnet18 (the
graph holds fastconv ops, no aten convolution or pooling, and survives
``run_decompositions`` and a save/load round trip in a fresh process), and the backend
rules inside compiled graphs. Inputs are tiny: the kernels run in Triton's interpreter.
"""

import os
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import DEVICE, FORBIDDEN_OP_FRAGMENTS
from torch import nn

from fastconv import backend, layers, ops
from fastconv.layers import convert

# --------------------------------------------------------------------------- opcheck


def _t(*shape, channels_last=False, grad=True, dtype=torch.float32):
    t = torch.randn(*shape, dtype=dtype, device=DEVICE)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def _opcheck_cases():
    x, w, b = _t(2, 16, 5, 5), _t(8, 16, 3, 3), _t(8)
    x_nhwc, scale, residual = _t(2, 16, 5, 5, channels_last=True), _t(8), _t(2, 8, 5, 5)
    geometry = ([1, 1], [1, 1], [1, 1], 1, [5, 5])
    grad = _t(2, 8, 5, 5, grad=False)
    saved = _t(2, 8, 5, 5, channels_last=True, grad=False)
    pooled_x = _t(2, 4, 6, 6, channels_last=True)
    argmax = torch.zeros(2, 4, 3, 3, dtype=torch.int8, device=DEVICE)
    return [
        ("conv2d-relu", ops.conv2d, (x, w, b, None, None, *geometry, "relu", 0.01, False)),
        (
            "conv2d-silu-scale-residual",
            ops.conv2d,
            (x_nhwc, w, b, scale, residual, *geometry, "silu", 0.01, True),
        ),
        ("activation_backward", ops.activation_backward, (grad, saved, "gelu", 0.01)),
        (
            "conv2d_input_grad",
            ops.conv2d_input_grad,
            (grad, w.detach(), [2, 16, 5, 5], [1, 1], [1, 1], [1, 1], 1),
        ),
        (
            "conv2d_weight_grad",
            ops.conv2d_weight_grad,
            (grad, x.detach(), [8, 16, 3, 3], [1, 1], [1, 1], [1, 1], 1, True),
        ),
        ("max_pool2d", ops.max_pool2d, (pooled_x, [2, 2], [2, 2], [0, 0], [1, 1], [3, 3], True)),
        (
            "max_pool2d_backward",
            ops.max_pool2d_backward,
            (
                _t(2, 4, 3, 3, grad=False),
                argmax,
                [2, 4, 6, 6],
                False,
                [2, 2],
                [2, 2],
                [0, 0],
                [1, 1],
            ),
        ),
        ("avg_pool2d", ops.avg_pool2d, (pooled_x, [3, 3], [2, 2], [1, 1], [3, 3], True, None)),
        (
            "avg_pool2d_backward",
            ops.avg_pool2d_backward,
            (_t(2, 4, 3, 3, grad=False), [2, 4, 6, 6], True, [3, 3], [2, 2], [1, 1], False, 4),
        ),
        ("adaptive_avg_pool2d", ops.adaptive_avg_pool2d, (_t(2, 4, 5, 7), [2, 3])),
        ("pad2d", ops.pad2d, (_t(2, 3, 5, 6), [2, 1, 0, 3], "reflect")),
        (
            "pad2d_backward",
            ops.pad2d_backward,
            (_t(2, 3, 8, 9, grad=False), [2, 3, 5, 6], [2, 1, 0, 3], "replicate", True),
        ),
        (
            "adaptive_avg_pool2d_backward",
            ops.adaptive_avg_pool2d_backward,
            (_t(2, 4, 2, 3, grad=False), [2, 4, 5, 7], True),
        ),
    ]


def test_every_op_is_checked():
    registered = set(ops.__all__)
    checked = {op._name for _, op, _ in _opcheck_cases()}
    assert checked == registered


@pytest.mark.parametrize(
    ("name", "op", "args"), _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_opcheck(name, op, args):
    """Schema, fake implementation (shapes, dtypes, strides), autograd registration and AOT
    dispatch of each op, with inputs that need gradients."""
    torch.manual_seed(0)
    torch.library.opcheck(op, args)


# --------------------------------------------------------------------------- compile


class ResidualNet(nn.Module):
    """A small net of fastconv layers: fused conv, residual epilogue, all three pools."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = layers.Conv2dAct(3, 8, 3, padding=1, activation="silu")
        self.body = layers.Conv2dAct(8, 8, 3, padding=1, activation="relu")
        self.pool = layers.MaxPool2d(2)
        self.avg = layers.AvgPool2d(3, stride=1, padding=1)
        self.head = layers.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = self.body(x, x)
        x = self.avg(self.pool(x))
        return self.fc(self.head(x).flatten(1))


def _graph_targets(graph_module) -> set[str]:
    return {str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"}


def _aten_conv_or_pool(targets) -> list[str]:
    return sorted(
        t for t in targets if t.startswith("aten.") and any(f in t for f in FORBIDDEN_OP_FRAGMENTS)
    )


@pytest.mark.parametrize("fastconv_backend", ["triton", "torch"])
@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(fastconv_backend, compile_backend):
    """One graph (fullgraph) on each compile backend, on the Triton kernels (interpreted on
    the CPU) and on the torch reference; output and every gradient match eager."""
    with backend.use_backend(fastconv_backend):
        _check_compiled_matches_eager(compile_backend)


def _check_compiled_matches_eager(compile_backend: str) -> None:
    torch.manual_seed(0)
    model = ResidualNet().to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    eager_x = x.clone().requires_grad_()
    expected = model(eager_x)
    expected.sum().backward()
    expected_grads = [p.grad.clone() for p in model.parameters()] + [eager_x.grad]
    model.zero_grad()

    compiled_x = x.clone().requires_grad_()
    compiled = torch.compile(model, backend=compile_backend, fullgraph=True)
    y = compiled(compiled_x)
    y.sum().backward()
    grads = [p.grad for p in model.parameters()] + [compiled_x.grad]
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_aot_graphs_hold_fastconv_ops_and_no_aten_conv(triton_backend):
    """The AOT forward and backward graphs: fastconv's forward and backward ops, no aten
    convolution or pooling; a second batch size reuses the dynamic graph."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {"forward": [], "backward": []}

    def keep(kind):
        def compiler(graph_module, _):
            graphs[kind].append(_graph_targets(graph_module))
            return make_boxed_func(graph_module.forward)

        return compiler

    backend_fn = aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"))
    model = ResidualNet().to(DEVICE)
    compiled = torch.compile(model, backend=backend_fn, fullgraph=True, dynamic=True)
    for batch in (2, 3):
        x = torch.randn(batch, 3, 8, 8, device=DEVICE, requires_grad=True)
        compiled(x).sum().backward()
    assert len(graphs["forward"]) == 1, "a new batch size recompiled: the batch is not dynamic"
    forward, backward = graphs["forward"][0], graphs["backward"][0]
    assert {"fastconv.conv2d.default", "fastconv.max_pool2d.default"} <= forward
    assert {"fastconv.avg_pool2d.default", "fastconv.adaptive_avg_pool2d.default"} <= forward
    assert {
        "fastconv.conv2d_input_grad.default",
        "fastconv.conv2d_weight_grad.default",
        "fastconv.activation_backward.default",
        "fastconv.max_pool2d_backward.default",
        "fastconv.avg_pool2d_backward.default",
        "fastconv.adaptive_avg_pool2d_backward.default",
    } <= backward
    assert _aten_conv_or_pool(forward | backward) == []


def test_forced_triton_never_runs_torch_inside_compile(monkeypatch):
    """A forced triton backend that cannot run raises inside a compiled graph too."""
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)
    model = ResidualNet()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with (
        backend.use_backend("triton"),
        pytest.raises(Exception, match="backend 'triton' was forced"),
    ):
        compiled(torch.randn(1, 3, 8, 8))


# --------------------------------------------------------------------------- export


def _exported_targets(program) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


def test_export_fastconv_model_with_dynamic_batch(triton_backend, tmp_path):
    model = ResidualNet().eval().to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = _exported_targets(program)
    assert targets.count("fastconv.conv2d.default") == 2
    assert {"fastconv.max_pool2d.default", "fastconv.avg_pool2d.default"} <= set(targets)
    assert _aten_conv_or_pool(targets) == []
    decomposed = _exported_targets(program.run_decompositions())
    assert decomposed.count("fastconv.conv2d.default") == 2
    assert _aten_conv_or_pool(decomposed) == []
    assert program.module()(torch.randn(3, 3, 8, 8, device=DEVICE)).shape == (3, 2)

    path = tmp_path / "net.pt2"
    torch.export.save(program, path)
    inputs = tmp_path / "x.pt"
    torch.save(x, inputs)
    expected = model(x)
    script = (
        "import sys, torch, fastconv.ops\n"
        f"program = torch.export.load({str(path)!r})\n"
        f"y = program.module()(torch.load({str(inputs)!r}))\n"
        "print(','.join(f'{v:.6f}' for v in y.flatten().tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={**os.environ, "FASTCONV_BACKEND": "triton"}, check=True,
    )  # fmt: skip
    loaded = torch.tensor([float(v) for v in result.stdout.strip().split(",")])
    torch.testing.assert_close(loaded, expected.flatten(), atol=1e-5, rtol=1e-5)


def test_export_converted_resnet18(triton_backend):
    """Every converted conv and pool of resnet18 is a fastconv op in the exported graph
    (export traces with fake tensors: no forward runs)."""
    model, _ = convert(torchvision.models.resnet18(weights=None).eval().to(DEVICE))
    program = torch.export.export(model, (torch.randn(1, 3, 64, 64, device=DEVICE),))
    targets = _exported_targets(program)
    assert targets.count("fastconv.conv2d.default") == 20
    assert targets.count("fastconv.max_pool2d.default") == 1
    assert targets.count("fastconv.adaptive_avg_pool2d.default") == 1
    assert _aten_conv_or_pool(targets) == []


# --------------------------------------------------------------------------- eager path


def _every_forward(inputs):
    """One call of each public op with a backward op, on ``inputs`` (x, w, b), summed."""
    from fastconv import functional as fcf
    from fastconv.padding import pad2d

    x, w, b = inputs
    y = fcf.fused_conv2d(x, w, b, padding=1, activation="gelu")  # gelu: the preact is saved
    return (
        y.sum()
        + fcf.max_pool2d(y, 2).sum()
        + fcf.avg_pool2d(y, 2).sum()
        + fcf.adaptive_avg_pool2d(y, 1).sum()
        + pad2d(y, (1, 1, 1, 1), "reflect").sum()
    )


def test_eager_calls_skip_the_custom_op_dispatch(triton_backend, monkeypatch):
    """In eager mode the ops run through autograd Functions, never the registered
    ``fastconv::`` ops (whose dispatch costs several times as much per call); the same
    kernels run, so outputs and gradients match the registered ops' exactly."""
    inputs = [_t(2, 8, 6, 6), _t(4, 8, 3, 3), _t(4)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        eager = _every_forward(inputs)
        eager_grads = torch.autograd.grad(eager, inputs)
    registered = {e.name for e in profile.events() if e.name.startswith("fastconv::")}
    assert not registered, registered

    monkeypatch.setattr(ops, "traced", lambda args: True)  # as under torch.compile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        traced = _every_forward(inputs)
        traced_grads = torch.autograd.grad(traced, inputs)
    registered = {e.name for e in profile.events() if e.name.startswith("fastconv::")}
    assert {"fastconv::conv2d", "fastconv::conv2d_weight_grad", "fastconv::pad2d"} <= registered
    torch.testing.assert_close(eager, traced, rtol=0, atol=0)
    for eager_grad, traced_grad in zip(eager_grads, traced_grads, strict=True):
        torch.testing.assert_close(eager_grad, traced_grad, rtol=0, atol=0)


def test_fake_tensors_go_through_the_registered_ops(triton_backend):
    """A tracer's fake tensors reach the registered op (its fake implementation gives the
    shape), not the kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastconv import functional as fcf

    with FakeTensorMode():
        x, w = torch.empty(2, 8, 6, 6), torch.empty(4, 8, 3, 3, requires_grad=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
            y = fcf.fused_conv2d(x, w, padding=1)
    assert y.shape == (2, 4, 6, 6)
    assert "fastconv::conv2d" in {e.name for e in p.events()}


def test_eager_backward_cannot_be_differentiated_twice(triton_backend):
    """The kernels' backward is not itself differentiable: the gradient it returns carries
    no graph, so a second derivative raises instead of silently returning a wrong one."""
    from fastconv import functional as fcf

    x, w = _t(1, 8, 5, 5), _t(4, 8, 3, 3)
    (grad_x,) = torch.autograd.grad(fcf.conv2d(x, w).sum(), x, create_graph=True)
    assert grad_x.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad_x.sum().backward()
