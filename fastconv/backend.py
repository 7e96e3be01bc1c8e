"""Which implementation runs an op: the Triton kernels or the torch reference.

Rules (see DESIGN.md, "Backends"):

* CUDA tensors run the Triton kernels.
* CPU tensors run the same Triton kernels in Triton's interpreter when
  ``TRITON_INTERPRET=1`` was set before triton/fastconv were imported.
* CPU tensors otherwise run the torch reference path.
* ``FASTCONV_BACKEND=triton|torch|auto`` (default ``auto``) forces a choice, as does
  :func:`set_backend` or the :func:`use_backend` context manager (which win over the
  environment). A forced ``triton`` that cannot run raises :class:`BackendUnavailableError`;
  it never falls back silently.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "TRITON_AVAILABLE",
    "TRITON_INTERPRETER",
    "env_flag",
    "get_backend",
    "resolve_backend",
    "set_backend",
    "use_backend",
]

Backend = Literal["triton", "torch"]
BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "FASTCONV_BACKEND"

try:
    import triton  # noqa: F401

    TRITON_AVAILABLE = True
except ImportError:  # triton ships for Linux only
    TRITON_AVAILABLE = False

# Triton reads TRITON_INTERPRET when @triton.jit decorates a kernel, i.e. when
# fastconv.kernels is imported: what counts is the value at import time, not later.
TRITON_INTERPRETER = TRITON_AVAILABLE and os.environ.get("TRITON_INTERPRET", "0").lower() in (
    "1",
    "true",
    "on",
    "yes",
)

_override: str | None = None


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on the given tensors."""


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


_FLAG_ON = ("1", "true", "on", "yes")
_FLAG_OFF = ("", "0", "false", "off", "no")


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` says on (1/true/on/yes) rather than off
    (unset, empty, 0/false/off/no); a ValueError naming it for any other value."""
    value = os.environ.get(name, "").strip().lower()
    if value in _FLAG_ON:
        return True
    if value in _FLAG_OFF:
        return False
    raise ValueError(
        f"{name} must be one of {', '.join(_FLAG_ON + _FLAG_OFF[1:])} (or unset), got {value!r}"
    )


def get_backend() -> str:
    """The requested backend: ``set_backend``'s value, else ``$FASTCONV_BACKEND``, else auto."""
    if _override is not None:
        return _override
    return _check_name(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


def set_backend(name: str | None) -> None:
    """Force ``"triton"`` or ``"torch"`` (or ``"auto"``) for this process; None restores the env."""
    global _override
    _override = None if name is None else _check_name(name, "backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`, restoring the previous choice on exit."""
    global _override
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = previous


def _triton_can_run(device: torch.device) -> str | None:
    """None if the Triton kernels can run on ``device``, else the reason they cannot."""
    if not TRITON_AVAILABLE:
        return "triton is not installed (it ships for Linux only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if TRITON_INTERPRETER:
            return None
        return (
            "tensors are on the CPU and Triton's interpreter is off; set TRITON_INTERPRET=1 "
            "before importing triton or fastconv to run the kernels on the CPU"
        )
    return f"Triton kernels do not run on {device.type} tensors"


def resolve_backend(device: torch.device) -> Backend:
    """The backend that runs an op whose tensors live on ``device``."""
    requested = get_backend()
    if requested == "torch":
        return "torch"
    reason = _triton_can_run(device)
    if reason is None:
        return "triton"
    if requested == "triton":
        raise BackendUnavailableError(f"fastconv backend 'triton' was forced but {reason}")
    return "torch"
