"""What :func:`fastconv.fusion.convert` recognizes in a ``torch.fx`` graph, written as data.

Each table maps how a graph node calls something (a module type for ``call_module``, a
function for ``call_function``, a method name for ``call_method``) to what it is:

* activations -> a function of the node's arguments (or module) returning
  ``(activation name, negative_slope)`` for :func:`fastconv.functional.fused_conv2d`, or
  None when this call is not one the epilogue computes (``Hardtanh(-1, 1)``);
* adds -> whether the add writes into its first operand (``+=`` recorded as
  ``operator.iadd``, ``x.add_(y)``);
* convolutions and poolings -> their fastconv replacement.

* BatchNorms -> the modules whose eval-mode function folds into a convolution's epilogue;
  norm-act layers (timm's ``BatchNormAct2d``) are BatchNorms whose ``forward`` then applies
  their own ``drop`` and ``act`` submodules;
* eval identities -> modules that compute the identity in eval mode (dropout, stochastic
  depth): a chain may pass through them to a residual add or an activation.

A fused chain is ``conv -> [BatchNorm2d] -> [activation]`` or ``conv -> [BatchNorm2d] ->
[eval identities] -> [add(., residual)] -> [activation]``; :mod:`fastconv.fusion` walks it.

Classes of other libraries (timm, torchvision's ``StochasticDepth``) are named as
``"module:Class"`` strings in the ``OPTIONAL_*`` tables and recognized only when that module
has already been imported (a model holding one of its classes has imported it): fastconv
itself imports nothing from them. :func:`recognized` resolves them, once per conversion.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastconv import functional as fcf
from fastconv import layers

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ACTIVATION_METHODS",
    "ACTIVATION_MODULES",
    "ADD_FUNCTIONS",
    "ADD_METHODS",
    "BATCHNORM_MODULES",
    "CONV_FUNCTIONS",
    "EVAL_IDENTITY_MODULES",
    "FUSABLE_CONV_MODULES",
    "OPTIONAL_ACTIVATION_MODULES",
    "OPTIONAL_EVAL_IDENTITY_MODULES",
    "OPTIONAL_NORM_ACT_MODULES",
    "POOL_FUNCTIONS",
    "POOL_MODULES",
    "Recognized",
    "argument",
    "recognized",
]

Activation = tuple[str, float] | None
DEFAULT_SLOPE = 0.01


def argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """A call's argument given positionally at ``index`` or by keyword ``name``."""
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _fixed(name: str) -> Callable[..., Activation]:
    return lambda *_: (name, DEFAULT_SLOPE)


def _relu6_if_0_6(min_val: Any, max_val: Any) -> Activation:
    """``hardtanh(min_val, max_val)`` is ``relu6`` for (0, 6) only."""
    return ("relu6", DEFAULT_SLOPE) if (min_val, max_val) == (0, 6) else None


def _leaky(slope: Any) -> Activation:
    return ("leaky_relu", float(slope)) if isinstance(slope, int | float) else None


def _gelu(approximate: Any) -> Activation:
    names = {"none": "gelu", "tanh": "gelu_tanh"}
    return (names[approximate], DEFAULT_SLOPE) if approximate in names else None


# nn.Module type (exact) -> activation of that module
ACTIVATION_MODULES: dict[type[nn.Module], Callable[[nn.Module], Activation]] = {
    nn.ReLU: _fixed("relu"),
    nn.ReLU6: _fixed("relu6"),
    nn.Hardtanh: lambda m: _relu6_if_0_6(m.min_val, m.max_val),
    nn.LeakyReLU: lambda m: _leaky(m.negative_slope),
    nn.SiLU: _fixed("silu"),
    nn.Hardswish: _fixed("hardswish"),
    nn.GELU: lambda m: _gelu(m.approximate),
    nn.Sigmoid: _fixed("sigmoid"),
}

# function -> activation of a call with these (args, kwargs); args[0] is the input
ACTIVATION_FUNCTIONS: dict[Callable, Callable[[tuple, dict], Activation]] = {
    F.relu: _fixed("relu"),
    F.relu_: _fixed("relu"),
    torch.relu: _fixed("relu"),
    torch.relu_: _fixed("relu"),
    F.relu6: _fixed("relu6"),
    F.hardtanh: lambda a, k: _relu6_if_0_6(
        argument(a, k, 1, "min_val", -1.0), argument(a, k, 2, "max_val", 1.0)
    ),
    F.leaky_relu: lambda a, k: _leaky(argument(a, k, 1, "negative_slope", DEFAULT_SLOPE)),
    F.leaky_relu_: lambda a, k: _leaky(argument(a, k, 1, "negative_slope", DEFAULT_SLOPE)),
    F.silu: _fixed("silu"),
    F.hardswish: _fixed("hardswish"),
    F.gelu: lambda a, k: _gelu(argument(a, k, 1, "approximate", "none")),
    F.sigmoid: _fixed("sigmoid"),
    torch.sigmoid: _fixed("sigmoid"),
    torch.sigmoid_: _fixed("sigmoid"),
}

# Tensor method name -> activation of ``x.name(...)``
ACTIVATION_METHODS: dict[str, Callable[[tuple, dict], Activation]] = {
    "relu": _fixed("relu"),
    "relu_": _fixed("relu"),
    "sigmoid": _fixed("sigmoid"),
    "sigmoid_": _fixed("sigmoid"),
}

# add function / Tensor method -> True if it writes into its first operand
ADD_FUNCTIONS: dict[Callable, bool] = {operator.add: False, torch.add: False, operator.iadd: True}
ADD_METHODS: dict[str, bool] = {"add": False, "add_": True}

# timm's activation modules (what ``timm.layers.create_act_layer`` returns where torch has
# no native one, and its classes used directly) -> activation, as ACTIVATION_MODULES
OPTIONAL_ACTIVATION_MODULES: dict[str, Callable[[nn.Module], Activation]] = {
    "timm.layers.activations:Swish": _fixed("silu"),
    "timm.layers.activations:Sigmoid": _fixed("sigmoid"),
    "timm.layers.activations:HardSwish": _fixed("hardswish"),
    "timm.layers.activations:GELU": _fixed("gelu"),
    "timm.layers.activations:GELUTanh": _fixed("gelu_tanh"),
    "timm.layers.activations_me:SwishMe": _fixed("silu"),
    "timm.layers.activations_me:HardSwishMe": _fixed("hardswish"),
}

BATCHNORM_MODULES = (nn.BatchNorm2d,)
# Norm-act layers: their ``forward`` is ``act(drop(batch_norm(x)))`` with the BatchNorm's
# parameters and buffers on the module itself, so their state_dict keys are a BatchNorm's.
OPTIONAL_NORM_ACT_MODULES = (
    "timm.layers.norm_act:BatchNormAct2d",
    "timm.layers.norm_act:SyncBatchNormAct",
    "timm.layers.norm_act:FrozenBatchNormAct2d",  # frozen statistics in both modes
)

# Modules that are the identity in eval mode (``training`` false); exact types.
EVAL_IDENTITY_MODULES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)  # fmt: skip
OPTIONAL_EVAL_IDENTITY_MODULES = (
    "torchvision.ops.stochastic_depth:StochasticDepth",
    "timm.layers.drop:DropPath",
    "timm.layers.drop:DropBlock2d",
)

# Convolution modules whose chains fuse (exact types; a subclass may compute something else).
FUSABLE_CONV_MODULES = (nn.Conv2d, layers.Conv2d)

# torch pooling module (exact type) -> fastconv layer with ``from_torch``
POOL_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.MaxPool2d: layers.MaxPool2d,
    nn.AvgPool2d: layers.AvgPool2d,
    nn.AdaptiveAvgPool2d: layers.AdaptiveAvgPool2d,
}

# torch function -> fastconv function with the same signature
CONV_FUNCTIONS: dict[Callable, Callable] = {F.conv2d: fcf.conv2d}
POOL_FUNCTIONS: dict[Callable, Callable] = {
    F.max_pool2d: fcf.max_pool2d,
    F.avg_pool2d: fcf.avg_pool2d,
    F.adaptive_avg_pool2d: fcf.adaptive_avg_pool2d,
}


def _imported_class(name: str) -> type | None:
    """The class ``"module:Class"`` names if that module is imported already, else None."""
    module_name, _, class_name = name.partition(":")
    found = getattr(sys.modules.get(module_name), class_name, None)
    return found if isinstance(found, type) else None


def _imported(names) -> tuple[type, ...]:
    return tuple(cls for cls in map(_imported_class, names) if cls is not None)


@dataclass(frozen=True)
class Recognized:
    """The tables with the optional classes that are importable now added (exact types)."""

    activation_modules: dict[type[nn.Module], Callable[[nn.Module], Activation]]
    batchnorm_modules: tuple[type[nn.Module], ...]  # plain BatchNorms and norm-act layers
    norm_act_modules: tuple[type[nn.Module], ...]
    eval_identity_modules: tuple[type[nn.Module], ...]

    def leaves(self) -> tuple[type[nn.Module], ...]:
        """Classes a trace must keep as one call (not trace into): it matches them whole."""
        return (*self.activation_modules, *self.batchnorm_modules, *self.eval_identity_modules)


def recognized() -> Recognized:
    """The classes :mod:`fastconv.fusion` recognizes, those of the ``OPTIONAL_*`` tables
    included where their module has been imported (see the module docstring)."""
    activations = dict(ACTIVATION_MODULES)
    for name, spec in OPTIONAL_ACTIVATION_MODULES.items():
        cls = _imported_class(name)
        if cls is not None:
            activations[cls] = spec
    norm_acts = _imported(OPTIONAL_NORM_ACT_MODULES)
    return Recognized(
        activation_modules=activations,
        batchnorm_modules=(*BATCHNORM_MODULES, *norm_acts),
        norm_act_modules=norm_acts,
        eval_identity_modules=EVAL_IDENTITY_MODULES + _imported(OPTIONAL_EVAL_IDENTITY_MODULES),
    )
