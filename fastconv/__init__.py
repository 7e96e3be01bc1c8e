"""fastconv: fused conv2d + bias + ReLU and 2D pooling as Triton kernels, with drop-in layers.

``fastconv.functional`` holds the ops, ``fastconv.layers`` the ``nn.Module``s and
``convert(model)``, ``fastconv.backend`` the choice between the Triton kernels and the
torch reference. The Triton kernels themselves are imported on first use.
"""

from importlib.metadata import PackageNotFoundError, version

from fastconv import backend, functional, layers

try:
    __version__ = version("fastconv")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "backend", "functional", "layers"]
