"""Shared test set-up.

Without a GPU the Triton kernels run in Triton's interpreter, which must be switched on
before triton or fastconv is imported: this file does it first thing, so plain ``pytest``
tests every kernel on a CPU-only machine. With a GPU the kernels run compiled on CUDA.

Every test runs with poisoned kernel allocations (:mod:`fastconv.kernels.alloc`): outputs
and workspaces start as NaN (argmax buffers as an impossible index), so an element a kernel
forgets to write fails the parity tests instead of passing on whatever memory held. Every
test starts without launch plans (:mod:`fastconv.kernels.plans`): a plan is derived from
module state that tests patch (the TMA device check, the split-K constants, the launch).
"""

import atexit
import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Inductor's on-disk graph cache does not key on a custom op's fake implementation: a graph
# compiled by an older fastconv would be reused with the old output strides. Each test
# process compiles into its own directory (unless one is set), removed at exit.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fastconv-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from fastconv import backend, layers  # noqa: E402
from fastconv.kernels import alloc, plans  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# aten ops whose presence means torch, not Triton, did the work. The library variants are
# named after the op (cudnn_convolution*, mkldnn_convolution, miopen_convolution,
# mkldnn_max_pool2d, ...); a bare "cudnn" would also match cudnn_batch_norm, which a
# training-mode BatchNorm runs on a GPU and fastconv leaves to torch.
FORBIDDEN_OP_FRAGMENTS = ("convolution", "conv2d", "pool")

# The two places where Triton's interpreter cannot stand in for a GPU (docs/decisions.md):
requires_compiled_bf16_dot = pytest.mark.skipif(
    backend.TRITON_INTERPRETER,
    reason="needs compiled kernels on a CUDA GPU: Triton's interpreter computes bf16 tl.dot "
    "wrongly (it multiplies the bf16 bit patterns as integers)",
)
requires_cuda_tf32 = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: tf32 is a tensor-core format, and Triton's interpreter ignores "
    "input_precision (multiplies in full fp32), so on the CPU this would repeat the fp32 test",
)


@pytest.fixture(autouse=True)
def poison_kernel_allocations() -> Iterator[None]:
    """Fill every buffer the launchers allocate with NaN / an invalid index (see the docstring)."""
    with alloc.poison_allocations():
        yield


@pytest.fixture(autouse=True)
def fresh_launch_plans() -> Iterator[None]:
    """No plan made by an earlier test (or under its patches) reaches this one."""
    plans.clear_plans()
    yield
    plans.clear_plans()


def intercept_tuned_launches(monkeypatch: pytest.MonkeyPatch, record) -> None:
    """Hand every autotuned launch of a plan (:class:`fastconv.kernels.plans.TunedLaunch`) to
    ``record(tuned, kernel, config, grid, args, meta)`` instead of running it, as
    ``fastconv.kernels.launch.launch`` is called: ``grid`` a function of the meta-parameters
    (unless ``config`` is fixed), ``meta`` the call's constexprs."""

    def recorded(self, *args) -> None:
        record(self.tuned, self.kernel, self.config, self.grid, args, self.meta)

    monkeypatch.setattr(plans.TunedLaunch, "__call__", recorded)


@pytest.fixture(autouse=True)
def ieee_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 means IEEE fp32 dots in every test, as in Triton's interpreter; a test of tf32
    turns ``torch.backends.cudnn.allow_tf32`` back on itself (on a GPU it defaults to True,
    and the kernels follow it: kernels/launch.py's ``input_precision``)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.fixture
def device() -> torch.device:
    """The device the kernels are tested on: CUDA when present, else the CPU interpreter."""
    return DEVICE


@pytest.fixture
def triton_backend() -> Iterator[None]:
    """Force the Triton backend: a test using it fails rather than fall back to torch."""
    with backend.use_backend("triton"):
        yield


@pytest.fixture
def torch_backend() -> Iterator[None]:
    """Force the torch reference backend."""
    with backend.use_backend("torch"):
        yield


class ProfiledOps:
    """The aten ops the profiler saw run inside :func:`profile_ops` (forward and backward,
    nested ones included: the ops inside a ``torch.ops.fastconv`` op's implementation
    too, which a ``TorchDispatchMode`` would not see)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    @property
    def ops(self) -> list[str]:
        """Names of the aten ops that ran, without the ``aten::`` prefix."""
        return sorted(
            name.removeprefix("aten::") for name in self.names if name.startswith("aten::")
        )

    def forbidden(self) -> list[str]:
        """aten ops that are convolutions or poolings (torch did the work, not Triton)."""
        return [op for op in self.ops if any(f in op for f in FORBIDDEN_OP_FRAGMENTS)]

    def compiled_regions(self) -> list[str]:
        """The torch.compile'd graphs that ran."""
        return sorted(name for name in self.names if name.startswith("Torch-Compiled Region"))


@contextlib.contextmanager
def profile_ops() -> Iterator[ProfiledOps]:
    """Record every op run inside with the profiler (compiled code keeps running)."""
    ops = ProfiledOps()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        yield ops
    ops.names = {event.name for event in profiler.events()}


@pytest.fixture
def record_aten_ops() -> contextlib.AbstractContextManager[ProfiledOps]:
    """``with record_aten_ops() as rec: ...`` then ``assert not rec.forbidden()``."""
    return profile_ops


def assert_model_matches_float64(model, reference, x, y, grad_out, reference_name=None) -> None:
    """``y = model(x)`` (float32, backward already run with ``grad_out``) against ``reference``
    run here in float64: the output, the input gradient and every parameter gradient.

    ``reference_name`` maps a parameter name of ``model`` to the reference's (default: same).
    """
    x_ref = x.detach().double().requires_grad_()
    y_ref = reference(x_ref)
    y_ref.backward(grad_out.double())
    torch.testing.assert_close(y, y_ref.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad.float(), atol=1e-4, rtol=1e-4)
    reference_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        expected = reference_params[reference_name(name) if reference_name else name].grad
        torch.testing.assert_close(param.grad, expected.float(), atol=1e-4, rtol=1e-4, msg=name)


def conv_activations(model: torch.nn.Module) -> set[str]:
    """The activations of ``model``'s fused ``Conv2dAct`` layers."""
    return {m.activation for m in model.modules() if isinstance(m, layers.Conv2dAct)}
