"""The module-by-module conversion :func:`fastconv.fusion.convert` falls back to.

For a model ``torch.fx`` cannot trace: inside an ``nn.Sequential`` that runs its children in
order, an ``nn.Conv2d`` directly followed by ``nn.ReLU`` becomes one fused
:class:`fastconv.layers.Conv2dReLU` (the ReLU slot becomes ``nn.Identity``, so indices and
``state_dict`` keys stay valid), and the other supported convolution and pooling modules are
swapped for their fastconv versions. Nothing else fuses (no BatchNorm folding, no adds).
"""

from __future__ import annotations

import copy

from torch import nn

from fastconv import layers
from fastconv.patterns import ACTIVATION_MODULES, BATCHNORM_MODULES, POOL_MODULES
from fastconv.report import ConversionReport

__all__ = ["hooks_reason", "swap_modules"]

_REPLACEMENTS = {nn.Conv2d: layers.Conv2d, **POOL_MODULES}
_FASTCONV_LAYERS = (layers.Conv2d, *POOL_MODULES.values())

# What nn.Sequential runs its children with: a subclass that overrides any of these may call
# them in another order, skip one, or do something in between.
_SEQUENTIAL_CALL_PATH = ("__call__", "_call_impl", "forward", "__iter__")
# A hook belongs to the module object: a replacement would silently lose it.
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def hooks_reason(module: nn.Module) -> str | None:
    """Why ``module`` must stay the same object (it has hooks), or None."""
    kinds = [name.strip("_").replace("_", " ") for name in _HOOK_DICTS if getattr(module, name)]
    if kinds:
        return f"has {', '.join(kinds)}, which a replacement would lose"
    return None


def _order_unknown_reason(sequential: nn.Sequential) -> str | None:
    """Why the children of ``sequential`` may not run one after the other, or None."""
    cls = type(sequential)
    for attr in _SEQUENTIAL_CALL_PATH:
        if getattr(cls, attr) is not getattr(nn.Sequential, attr):
            return (
                f"{cls.__name__} overrides nn.Sequential.{attr}, so the ReLU may not run "
                "right after the convolution"
            )
    return None


def _conv_reason(conv: nn.Conv2d) -> str | None:
    """Why fastconv's Conv2d cannot run ``conv`` (the layer refuses its options), or None."""
    try:
        layers.Conv2d.from_torch(conv)
    except ValueError as error:
        return str(error)
    return None


def _fusable_conv(module: nn.Module) -> bool:
    """A convolution that a following ReLU can be fused into."""
    if hooks_reason(module) is not None:
        return False
    if type(module) is nn.Conv2d:
        return _conv_reason(module) is None
    return type(module) is layers.Conv2d


def _replace(module: nn.Module, name: str, report: ConversionReport) -> nn.Module | None:
    """The fastconv layer for a torch conv/pool ``module``, or None to keep it."""
    fastconv_class = _REPLACEMENTS.get(type(module))
    if fastconv_class is not None:
        reason = hooks_reason(module)
        if reason is None and fastconv_class is layers.Conv2d:
            reason = _conv_reason(module)
        if reason is not None:
            report.left_to_torch.append((name, f"{module}: {reason}"))
            return None
        return fastconv_class.from_torch(module)
    if not isinstance(module, _FASTCONV_LAYERS):
        base = next((base for base in _REPLACEMENTS if isinstance(module, base)), None)
        if base is not None:
            subclass = type(module).__name__
            report.left_to_torch.append(
                (name, f"{subclass} subclasses nn.{base.__name__}; kept as is")
            )
    return None


def _convert_children(parent: nn.Module, prefix: str, report: ConversionReport) -> None:
    """Fuse and replace the children of ``parent`` in place, then recurse into the others."""
    names = list(parent._modules)
    # Only an nn.Sequential that runs its children in order makes neighbours consecutive.
    is_sequential = isinstance(parent, nn.Sequential)
    order_reason = _order_unknown_reason(parent) if is_sequential else None
    for index, name in enumerate(names):
        child = parent._modules[name]
        if child is None:
            continue
        next_name = names[index + 1] if index + 1 < len(names) else None
        next_child = parent._modules[next_name] if next_name is not None else None
        if is_sequential and _fusable_conv(child) and type(next_child) is nn.ReLU:
            reason = order_reason or hooks_reason(next_child)
            if reason is None:
                parent._modules[name] = layers.Conv2dReLU.from_torch(child)
                parent._modules[next_name] = nn.Identity()
                report.fused.append((prefix + name, f"{child} + ReLU ({prefix}{next_name})"))
                continue
            report.left_to_torch.append(
                (prefix + next_name, f"ReLU after {prefix}{name} not fused: {reason}")
            )
        if isinstance(child, tuple(_REPLACEMENTS)):
            replacement = _replace(child, prefix + name, report)
            if replacement is not None:
                parent._modules[name] = replacement
        else:
            _convert_children(child, f"{prefix}{name}.", report)


def _count(model: nn.Module, report: ConversionReport) -> None:
    """Fill the report's counts from the converted ``model``'s modules."""
    modules = list(model.modules())
    report.convs = sum(isinstance(m, nn.Conv2d) for m in modules)
    report.convs_fastconv = sum(isinstance(m, layers.Conv2d) for m in modules)
    report.pools = sum(isinstance(m, tuple(POOL_MODULES)) for m in modules)
    report.pools_fastconv = sum(isinstance(m, tuple(POOL_MODULES.values())) for m in modules)
    report.batchnorms = sum(isinstance(m, BATCHNORM_MODULES) for m in modules)
    remaining = sum(type(m) in ACTIVATION_MODULES for m in modules)
    report.activations_fused = len(report.fused)
    report.activations = remaining + report.activations_fused


def swap_modules(
    model: nn.Module, inplace: bool = False, fallback_reason: str | None = None
) -> tuple[nn.Module, ConversionReport]:
    """Swap ``model``'s convolution and pooling modules for fastconv's; return it and a report.

    Walks every submodule. Inside an ``nn.Sequential``, an ``nn.Conv2d`` immediately followed
    by ``nn.ReLU`` becomes one :class:`fastconv.layers.Conv2dReLU` and the ReLU's slot becomes
    ``nn.Identity``. A subclass of ``nn.Sequential`` that overrides ``forward`` (or
    ``__iter__``, ``__call__``) may not run its children in order, and a ReLU with hooks must
    stay itself: such pairs are converted one by one and the ReLU is listed in
    ``report.left_to_torch`` with the reason. Other ``nn.Conv2d``, ``nn.MaxPool2d``,
    ``nn.AvgPool2d`` and ``nn.AdaptiveAvgPool2d`` become the fastconv layers, sharing the
    parameters and training mode. Convolutions the fastconv layer refuses, modules with hooks
    (``weight_norm`` is one) and subclasses of these classes are kept and listed with the
    reason. With ``inplace=False`` the model is deep-copied first and left unchanged.
    ``fallback_reason`` is recorded in the report (why FX was not used).
    """
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport(
        method="module swap",
        mode="train" if model.training else "eval",
        fallback_reason=fallback_reason,
    )
    if isinstance(model, tuple(_REPLACEMENTS)):  # the model is a single conv/pool layer
        replacement = _replace(model, "", report)
        model = model if replacement is None else replacement
    else:
        _convert_children(model, "", report)
    _count(model, report)
    return model, report
