"""fastconv: fused conv2d + epilogue and 2D pooling as Triton kernels, with drop-in layers.

``fastconv.functional`` holds the ops' user API, ``fastconv.layers`` the ``nn.Module``s,
``fastconv.fusion`` ``convert(model)``, ``fastconv.ops`` the ``torch.ops.fastconv``
registrations and ``fastconv.backend`` the choice between the Triton kernels and the torch
reference. Submodules are imported on first attribute access (PEP 562), so that
``import fastconv`` and the command-line tools' ``--help`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastconv")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_SUBMODULES = ("activations", "backend", "functional", "fusion", "layers", "ops", "padding")
__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"fastconv.{name}")
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))
