"""The environment a benchmark run measures: device, precision settings, versions, commit."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from fastconv.backend import TRITON_INTERPRETER

CUDA = torch.device("cuda")
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# the GPU cases' input layouts, headline first: channels_last is the layout cuDNN's
# tensor-core kernels and fastconv's are fastest in (and the one the README recommends)
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def layout_name(memory_format: torch.memory_format) -> str:
    """``"channels_last"`` or ``"nchw"``: the key of ``memory_format`` in :data:`LAYOUTS`."""
    return "channels_last" if memory_format == torch.channels_last else "nchw"


def gpu_skip_reason() -> str | None:
    """Why GPU cases cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (none found)"
    if TRITON_INTERPRETER:
        return "TRITON_INTERPRET=1 is set: benchmarks time compiled kernels, not the interpreter"
    return None


requires_gpu = pytest.mark.skipif(gpu_skip_reason() is not None, reason=str(gpu_skip_reason()))


def conv_math(dtype: torch.dtype) -> str:
    """The math a convolution in ``dtype`` uses: float32 is TF32 when cuDNN's flag allows it."""
    if dtype == torch.float32:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    return DTYPE_NAMES[dtype]


def git_commit() -> str:
    """The checkout's commit hash (``+dirty`` with uncommitted changes), or ``unknown``."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=True, cwd=here
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def machine_info(options: dict[str, object]) -> dict[str, object]:
    """Device, versions, commit and this run's settings (``options``: cudnn.benchmark as the
    cases set it, see ``benchmarks/conftest.py``) for machine_info."""
    try:
        import triton
    except ImportError:  # triton ships for Linux only
        triton = None
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "compute_capability": (
            "{}.{}".format(*torch.cuda.get_device_capability()) if cuda else None
        ),
        "torch": torch.__version__,
        "triton": triton.__version__ if triton else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "git_commit": git_commit(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cpu_threads": torch.get_num_threads(),
        **options,
    }
