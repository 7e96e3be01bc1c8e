"""Drop-in ``nn.Module`` layers over :mod:`fastconv.functional`, and :func:`convert`.

Every layer subclasses its torch counterpart (``nn.Conv2d``, ``nn.MaxPool2d``, ...), so the
constructor, ``state_dict`` keys, ``repr`` and existing checkpoints work unchanged; only
``forward`` differs: it calls the fastconv op, which runs the Triton kernels or the torch
reference as :mod:`fastconv.backend` decides. Options the kernels do not support are refused
at construction with the argument named.

:func:`convert` turns an existing torch model into a fastconv one: inside an ``nn.Sequential``
that runs its children in order, a ``Conv2d`` directly followed by ``ReLU`` becomes one fused
:class:`Conv2dReLU`, and the remaining supported convolution and pooling modules are swapped
for their fastconv versions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import Tensor, nn

from fastconv import functional as fcf
from fastconv.activations import check_activation

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "Conv2d",
    "Conv2dAct",
    "Conv2dReLU",
    "ConversionReport",
    "MaxPool2d",
    "convert",
]


# --------------------------------------------------------------------------- layers


IntOrPair = int | tuple[int, int]


def _conv_unsupported_reason(padding_mode: str) -> str | None:
    """Why fastconv cannot run a convolution with these options, or None if it can."""
    if padding_mode != "zeros":
        return (
            f"padding_mode={padding_mode!r} is not supported "
            "(fastconv supports padding_mode='zeros' only)"
        )
    return None


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` (zero padding, any ``groups``) with the bias fused in the kernel.

    Input (N, C, H, W) or (C, H, W); output (N, K, P, Q). Raises ``ValueError`` for a
    ``padding_mode`` other than ``"zeros"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair | str = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        reason = _conv_unsupported_reason(padding_mode)
        if reason is not None:
            raise ValueError(f"{type(self).__name__}: {reason}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, **kwargs) -> Conv2d:
        """A layer of this class that shares ``conv``'s parameters and training mode;
        ``kwargs`` are this class's own constructor arguments (``activation=``)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",  # no memory: the parameters are conv's
            **kwargs,
        )
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer.train(conv.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class Conv2dAct(Conv2d):
    """``act(conv2d(x) + bias [+ residual])`` in one kernel: ``nn.Conv2d``'s constructor and
    parameters plus ``activation`` (one of :data:`fastconv.activations.ACTIVATIONS`) and
    ``negative_slope`` (leaky_relu's).

    Input (N, C, H, W) or (C, H, W); output (N, K, P, Q). ``forward(input, residual)`` adds
    ``residual`` (N, K, P, Q) before the activation (a ResNet block's skip connection). A
    checkpoint of ``nn.Conv2d`` loads into it unchanged (the activation has no parameters).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair | str = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        activation: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        check_activation(activation, negative_slope)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )  # fmt: skip
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, activation={self.activation}"
        if self.activation == "leaky_relu":
            text += f", negative_slope={self.negative_slope}"
        return text

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        return fcf.fused_conv2d(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            activation=self.activation, negative_slope=self.negative_slope, residual=residual,
        )  # fmt: skip


class Conv2dReLU(Conv2d):
    """``relu(conv2d(x) + bias)`` in one kernel; same constructor and parameters as ``nn.Conv2d``.

    Input (N, C, H, W) or (C, H, W); output (N, K, P, Q). A checkpoint of ``nn.Conv2d``
    loads into it unchanged (the ReLU has no parameters).
    """

    def forward(self, input: Tensor) -> Tensor:
        return fcf.conv2d_bias_relu(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` running fastconv's pooling kernel."""

    @classmethod
    def from_torch(cls, pool: nn.MaxPool2d) -> MaxPool2d:
        """The same pooling as ``pool`` (same training mode) on fastconv's kernel."""
        layer = cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            pool.return_indices,
            pool.ceil_mode,
        )
        return layer.train(pool.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


class AvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` running fastconv's pooling kernel."""

    @classmethod
    def from_torch(cls, pool: nn.AvgPool2d) -> AvgPool2d:
        """The same pooling as ``pool`` (same training mode) on fastconv's kernel."""
        layer = cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.ceil_mode,
            pool.count_include_pad,
            pool.divisor_override,
        )
        return layer.train(pool.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """:class:`torch.nn.AdaptiveAvgPool2d` running fastconv's pooling kernel."""

    @classmethod
    def from_torch(cls, pool: nn.AdaptiveAvgPool2d) -> AdaptiveAvgPool2d:
        """The same pooling as ``pool`` (same training mode) on fastconv's kernel."""
        return cls(pool.output_size).train(pool.training)

    def forward(self, input: Tensor) -> Tensor:
        return fcf.adaptive_avg_pool2d(input, self.output_size)


# --------------------------------------------------------------------------- convert

_FASTCONV_LAYERS = (Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d)
_REPLACEMENTS = {
    nn.Conv2d: Conv2d,
    nn.MaxPool2d: MaxPool2d,
    nn.AvgPool2d: AvgPool2d,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
}


@dataclass
class ConversionReport:
    """What :func:`convert` did; each entry is (qualified module name, description).

    ``unfused`` lists Conv2d + ReLU neighbours left as two modules (each converted on its own)
    because convert cannot prove the ReLU runs right after the convolution.
    """

    fused: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unfused: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        header = (
            f"fastconv.convert: {len(self.fused)} fused, {len(self.replaced)} replaced, "
            f"{len(self.skipped)} skipped"
        )
        if self.unfused:
            header += f", {len(self.unfused)} not fused"
        lines = [header]
        for title, entries in (
            ("fused", self.fused),
            ("replaced", self.replaced),
            ("skipped", self.skipped),
            ("unfused", self.unfused),
        ):
            lines += [f"  {title:8} {name}: {text}" for name, text in entries]
        return "\n".join(lines)


# What nn.Sequential runs its children with: a subclass that overrides any of these may call
# them in another order, skip one, or do something in between.
_SEQUENTIAL_CALL_PATH = ("__call__", "_call_impl", "forward", "__iter__")
# A hook belongs to the module object: a replacement would silently lose it.
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


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


def _hooks_reason(module: nn.Module) -> str | None:
    """Why ``module`` must stay the same object (it has hooks), or None."""
    kinds = [name.strip("_").replace("_", " ") for name in _HOOK_DICTS if getattr(module, name)]
    if kinds:
        return f"has {', '.join(kinds)}, which a replacement would lose"
    return None


def _fusable_conv(module: nn.Module) -> bool:
    """A convolution that a following ReLU can be fused into."""
    if _hooks_reason(module) is not None:
        return False
    if type(module) is nn.Conv2d:
        return _conv_unsupported_reason(module.padding_mode) is None
    return type(module) is Conv2d


def _replace(module: nn.Module, name: str, report: ConversionReport) -> nn.Module | None:
    """The fastconv layer for a torch conv/pool ``module``, or None to keep it."""
    fastconv_class = _REPLACEMENTS.get(type(module))
    if fastconv_class is not None:
        reason = _hooks_reason(module)
        if reason is None and fastconv_class is Conv2d:
            reason = _conv_unsupported_reason(module.padding_mode)
        if reason is not None:
            report.skipped.append((name, f"{module}: {reason}"))
            return None
        report.replaced.append((name, f"{module} -> fastconv {fastconv_class.__name__}"))
        return fastconv_class.from_torch(module)
    if not isinstance(module, _FASTCONV_LAYERS):
        base = next((base for base in _REPLACEMENTS if isinstance(module, base)), None)
        if base is not None:
            subclass = type(module).__name__
            report.skipped.append((name, f"{subclass} subclasses nn.{base.__name__}; kept as is"))
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
            reason = order_reason or _hooks_reason(next_child)
            if reason is None:
                parent._modules[name] = Conv2dReLU.from_torch(child)
                parent._modules[next_name] = nn.Identity()
                report.fused.append(
                    (prefix + name, f"{child} + ReLU ({prefix}{next_name}) -> fastconv Conv2dReLU")
                )
                continue
            report.unfused.append(
                (prefix + name, f"{child} + ReLU ({prefix}{next_name}) not fused: {reason}")
            )
        if isinstance(child, tuple(_REPLACEMENTS)):
            replacement = _replace(child, prefix + name, report)
            if replacement is not None:
                parent._modules[name] = replacement
        else:
            _convert_children(child, f"{prefix}{name}.", report)


def convert(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, ConversionReport]:
    """Swap ``model``'s convolution and pooling modules for fastconv's; return it and a report.

    Walks every submodule. Inside an ``nn.Sequential``, an ``nn.Conv2d`` immediately followed
    by ``nn.ReLU`` becomes one :class:`Conv2dReLU` and the ReLU's slot becomes ``nn.Identity``,
    so indices and ``state_dict`` keys stay valid. A subclass of ``nn.Sequential`` that
    overrides ``forward`` (or ``__iter__``, ``__call__``) may not run its children in order,
    and a ReLU with hooks must stay itself: such pairs are not fused but converted one by one
    and listed in ``report.unfused`` with the reason. Other ``nn.Conv2d``, ``nn.MaxPool2d``,
    ``nn.AvgPool2d`` and ``nn.AdaptiveAvgPool2d`` become the fastconv layers, sharing the
    parameters (same device and dtype) and training mode. Modules fastconv cannot run
    (convolutions with ``padding_mode != "zeros"``), modules with hooks
    (a replacement would lose them; ``weight_norm`` is one) and subclasses of these classes
    (whose forward may differ) are kept and listed in ``report.skipped`` with the reason.
    With ``inplace=False`` the model is deep-copied first and left unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    if isinstance(model, tuple(_REPLACEMENTS)):  # the model is a single conv/pool layer
        replacement = _replace(model, "", report)
        return (model if replacement is None else replacement), report
    _convert_children(model, "", report)
    return model, report
