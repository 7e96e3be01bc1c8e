"""The convolution and pooling shapes that are benchmarked.

Two sources: the project's own dogs-vs-cats CNN (every conv and pooling layer, read with
forward hooks at 64 and 128 px and the training batch size of ``fastconv.train``) and a few
standard shapes from VGG and ResNet. The fused-epilogue cases (:data:`FUSED_CONV_CASES`)
pair standard shapes with the epilogues the networks apply after them, and the CNN's own
layers at 64 px with its activation (SiLU by default).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fastconv.activations import ACTIVATIONS
from fastconv.backend import use_backend
from fastconv.models import activation_for, build_model
from fastconv.train import build_parser

STANDARD_BATCH = 64


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """``relu(conv2d(x, w) + b)`` with x (n, c, h, w), w (k, c/groups, r, s), b (k,)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def output_hw(self) -> tuple[int, int]:
        """(P, Q) = ((H + 2*pad - dil*(R-1) - 1) // stride + 1, likewise for W)."""
        sizes = []
        for size, kernel, stride, pad, dil in zip(
            (self.h, self.w),
            (self.r, self.s),
            self.stride,
            self.padding,
            self.dilation,
            strict=True,
        ):
            sizes.append((size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1)
        return sizes[0], sizes[1]

    def flops_per_pass(self) -> int:
        """2*N*K*P*Q*(C/groups)*R*S: one pass (the forward, the input gradient or the weight
        gradient)."""
        p, q = self.output_hw
        return 2 * self.n * self.k * p * q * (self.c // self.groups) * self.r * self.s

    def random_inputs(
        self,
        dtype: torch.dtype,
        device: torch.device | str,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """Random leaf ((x, w, b), grad_y); w is scaled so that y has unit variance."""
        p, q = self.output_hw
        fan_in = self.c // self.groups * self.r * self.s
        x = torch.randn(self.n, self.c, self.h, self.w, device=device)
        w = torch.randn(self.k, self.c // self.groups, self.r, self.s, device=device)
        w = w / fan_in**0.5
        b = 0.5 * torch.randn(self.k, device=device)
        grad_y = torch.randn(self.n, self.k, p, q, device=device)
        inputs = tuple(
            t.to(
                dtype=dtype, memory_format=memory_format if t.dim() == 4 else torch.preserve_format
            ).requires_grad_()
            for t in (x, w, b)
        )
        return inputs, grad_y.to(dtype=dtype, memory_format=memory_format)

    def describe(self) -> str:
        p, q = self.output_hw
        return (
            f"{self.n}x{self.c}x{self.h}x{self.w} -> {self.k}x{p}x{q}, {self.r}x{self.s} "
            f"s{self.stride[0]} p{self.padding[0]} d{self.dilation[0]}"
            + (f" g{self.groups}" if self.groups != 1 else "")
        )


@dataclasses.dataclass(frozen=True)
class PoolShape:
    """``op(x, **options)`` with x (n, c, h, w); op is ``max_pool2d``, ``avg_pool2d`` or
    ``adaptive_avg_pool2d`` with torch's keyword arguments in ``options``."""

    name: str
    op: str
    n: int
    c: int
    h: int
    w: int
    options: tuple[tuple[str, object], ...]

    @property
    def kwargs(self) -> dict[str, object]:
        return dict(self.options)

    def describe(self) -> str:
        options = ", ".join(f"{key}={value}" for key, value in self.options)
        return f"{self.op}({self.n}x{self.c}x{self.h}x{self.w}, {options})"


def _pool(name: str, op: str, n: int, c: int, h: int, w: int, **options) -> PoolShape:
    return PoolShape(name, op, n, c, h, w, tuple(sorted(options.items())))


STANDARD_CONV_SHAPES = (
    ConvShape("resnet-stem-7x7s2", STANDARD_BATCH, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3)),
    ConvShape("resnet-3x3-64@56", STANDARD_BATCH, 64, 56, 56, 64, 3, 3, padding=(1, 1)),
    ConvShape("vgg-3x3-128to256@56", STANDARD_BATCH, 128, 56, 56, 256, 3, 3, padding=(1, 1)),
    ConvShape("resnet-3x3-128@28", STANDARD_BATCH, 128, 28, 28, 128, 3, 3, padding=(1, 1)),
    ConvShape("vgg-3x3-256@28", STANDARD_BATCH, 256, 28, 28, 256, 3, 3, padding=(1, 1)),
    ConvShape("resnet-1x1-256to64@56", STANDARD_BATCH, 256, 56, 56, 64, 1, 1),
    # grouped and depthwise: ResNeXt-50 32x4d's first 3x3 (4 channels per group) and
    # MobileNetV2's depthwise 3x3 at 56x56 and, strided, at 28x28
    ConvShape(
        "resnext-3x3-g32-128@56", STANDARD_BATCH, 128, 56, 56, 128, 3, 3, padding=(1, 1), groups=32
    ),
    ConvShape(
        "mobilenet-dw-3x3-144@56",
        STANDARD_BATCH,
        144,
        56,
        56,
        144,
        3,
        3,
        padding=(1, 1),
        groups=144,
    ),
    ConvShape(
        "mobilenet-dw-3x3s2-192@56",
        STANDARD_BATCH,
        192,
        56,
        56,
        192,
        3,
        3,
        (2, 2),
        (1, 1),
        groups=192,
    ),
)


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """What ``fused_conv2d`` applies to the convolution z: ``act(z [* scale] + bias [+ residual])``.

    ``scale`` is a folded eval-mode BatchNorm's per-channel factor, ``residual`` a ResNet
    block's skip connection (N, K, P, Q).
    """

    activation: str
    scale: bool = False
    residual: bool = False

    @property
    def operand_names(self) -> tuple[str, ...]:
        """The epilogue's tensor operands after (x, w, b), in the order the ops take them."""
        present = {"scale": self.scale, "residual": self.residual}
        return tuple(name for name, used in present.items() if used)

    def operand_kwargs(self, operands: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """``operands`` (in :attr:`operand_names` order) as ``fused_conv2d`` keyword arguments."""
        return dict(zip(self.operand_names, operands, strict=True))

    @property
    def name(self) -> str:
        """``bias+relu``, ``bn+silu``, ``bn+residual+relu``: ``bn`` stands for scale + bias."""
        parts = ["bn" if self.scale else "bias"]
        if self.residual:
            parts.append("residual")
        return "+".join([*parts, self.activation])


@dataclasses.dataclass(frozen=True)
class FusedConvCase:
    """A convolution shape and the epilogue fused into it."""

    shape: ConvShape
    epilogue: Epilogue

    @property
    def name(self) -> str:
        return f"{self.shape.name}-{self.epilogue.name}"

    def random_inputs(
        self,
        dtype: torch.dtype,
        device: torch.device | str,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Random leaf ((x, w, b, *epilogue operands), grad_y), as :meth:`ConvShape.random_inputs`.

        scale is uniform in [0.5, 1.5) (a BatchNorm's gamma / sqrt(var + eps)), the residual
        has unit variance like the convolution's output.
        """
        conv_inputs, grad_y = self.shape.random_inputs(dtype, device, memory_format)
        operands = []  # in operand_names order
        if self.epilogue.scale:
            operands.append(0.5 + torch.rand(self.shape.k, device=device, dtype=dtype))
        if self.epilogue.residual:
            operands.append(torch.randn_like(grad_y))
        return (*conv_inputs, *(t.requires_grad_() for t in operands)), grad_y


def _standard_conv_shape(name: str) -> ConvShape:
    (shape,) = (shape for shape in STANDARD_CONV_SHAPES if shape.name == name)
    return shape


_RESNET_3X3_64 = _standard_conv_shape("resnet-3x3-64@56")
_RESNET_3X3_128 = _standard_conv_shape("resnet-3x3-128@28")
# ResNet-50's bottleneck: the last 1x1 expands 64 -> 256 and takes the block's residual; the
# first block of a stage projects its input with a strided 1x1 (BatchNorm, no activation)
_RESNET_1X1_EXPAND = ConvShape("resnet-1x1-64to256@56", STANDARD_BATCH, 64, 56, 56, 256, 1, 1)
_RESNET_1X1_PROJECT = ConvShape(
    "resnet-1x1s2-256to512@56", STANDARD_BATCH, 256, 56, 56, 512, 1, 1, stride=(2, 2)
)
_MOBILENET_DEPTHWISE = tuple(
    shape for shape in STANDARD_CONV_SHAPES if shape.name.startswith("mobilenet-dw")
)

STANDARD_POOL_SHAPES = (
    _pool(
        "resnet-stem-max3x3s2",
        "max_pool2d",
        STANDARD_BATCH,
        64,
        112,
        112,
        kernel_size=3,
        stride=2,
        padding=1,
    ),
    _pool("vgg-max2x2@112", "max_pool2d", STANDARD_BATCH, 128, 112, 112, kernel_size=2, stride=2),
    _pool("densenet-avg2x2@56", "avg_pool2d", STANDARD_BATCH, 256, 56, 56, kernel_size=2, stride=2),
    _pool("resnet-global-avg@7", "adaptive_avg_pool2d", STANDARD_BATCH, 512, 7, 7, output_size=1),
)

TRAINING_DEFAULTS = build_parser().parse_args([])
MODEL_NAME = TRAINING_DEFAULTS.model
MODEL_ACTIVATION = activation_for(MODEL_NAME, TRAINING_DEFAULTS.activation)
TRAINING_BATCH = TRAINING_DEFAULTS.batch_size
MODEL_IMAGE_SIZES = (64, 128)
POOL_OPTIONS = {
    nn.MaxPool2d: ("max_pool2d", ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    nn.AvgPool2d: ("avg_pool2d", ("kernel_size", "stride", "padding", "ceil_mode")),
    nn.AdaptiveAvgPool2d: ("adaptive_avg_pool2d", ("output_size",)),
}


def _padding_pair(conv: nn.Conv2d) -> tuple[int, int]:
    """The conv's padding as a pair of ints (``"same"`` resolved for odd kernels)."""
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size, strict=True))
    return conv.padding


def model_layer_shapes(
    image_size: int, batch: int = TRAINING_BATCH, model_name: str = MODEL_NAME
) -> tuple[list[ConvShape], list[PoolShape]]:
    """The distinct conv and pooling shapes of ``model_name`` on (batch, 3, size, size) input.

    Read with forward hooks during one CPU forward (torch backend) of a single image.
    """
    model = build_model(model_name).eval()
    convs: dict[tuple, ConvShape] = {}
    pools: dict[tuple, PoolShape] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output) -> None:
        _, c, h, w = inputs[0].shape
        name = f"{model_name}{image_size}-{names[module]}"
        if isinstance(module, nn.Conv2d):
            shape = ConvShape(
                name,
                batch,
                c,
                h,
                w,
                module.out_channels,
                *module.kernel_size,
                module.stride,
                _padding_pair(module),
                module.dilation,
                module.groups,
            )
            convs.setdefault(dataclasses.astuple(shape)[1:], shape)
            return
        for pool_type, (op, option_names) in POOL_OPTIONS.items():
            if isinstance(module, pool_type):
                options = {key: getattr(module, key) for key in option_names}
                shape = _pool(name, op, batch, c, h, w, **options)
                pools.setdefault(dataclasses.astuple(shape)[1:], shape)

    layer_types = (nn.Conv2d, *POOL_OPTIONS)
    names = {m: n for n, m in model.named_modules() if isinstance(m, layer_types)}
    handles = [m.register_forward_hook(record) for m in names]
    try:
        with use_backend("torch"), torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    return list(convs.values()), list(pools.values())


_MODEL_SHAPES = [model_layer_shapes(size) for size in MODEL_IMAGE_SIZES]
CONV_SHAPES = [shape for convs, _ in _MODEL_SHAPES for shape in convs] + list(STANDARD_CONV_SHAPES)
POOL_SHAPES = [shape for _, pools in _MODEL_SHAPES for shape in pools] + list(STANDARD_POOL_SHAPES)

FUSED_CONV_CASES = (
    # every activation after conv + bias (an eval BatchNorm folded into the weights)
    *(FusedConvCase(_RESNET_3X3_64, Epilogue(activation)) for activation in ACTIVATIONS),
    # MobileNetV2's (ReLU6) and EfficientNet's (SiLU) depthwise layers
    *(
        FusedConvCase(shape, Epilogue(activation))
        for shape in _MOBILENET_DEPTHWISE
        for activation in ("relu6", "silu")
    ),
    # BatchNorm as scale + bias: conv-BN-ReLU, and the projection shortcut's conv-BN
    *(
        FusedConvCase(shape, Epilogue("relu", scale=True))
        for shape in (_RESNET_3X3_64, _RESNET_3X3_128)
    ),
    FusedConvCase(_RESNET_1X1_PROJECT, Epilogue("identity", scale=True)),
    # a ResNet block's last conv: BN, residual add and ReLU
    *(
        FusedConvCase(shape, Epilogue("relu", scale=True, residual=True))
        for shape in (_RESNET_3X3_64, _RESNET_3X3_128, _RESNET_1X1_EXPAND)
    ),
    # the project's CNN as it trains: every conv layer at 64 px with the model's own activation
    *(FusedConvCase(shape, Epilogue(MODEL_ACTIVATION)) for shape in _MODEL_SHAPES[0][0]),
)


@dataclasses.dataclass(frozen=True)
class PadShape:
    """``F.pad(x, padding, mode)`` with x (n, c, h, w), padding (left, right, top, bottom):
    what ``nn.Conv2d(padding_mode=mode)`` runs before its convolution."""

    name: str
    mode: str
    n: int
    c: int
    h: int
    w: int
    padding: tuple[int, int, int, int]

    def describe(self) -> str:
        return f"pad({self.n}x{self.c}x{self.h}x{self.w}, {self.padding}, {self.mode})"


PAD_SHAPES = [
    PadShape("reflect1-64@56", "reflect", 32, 64, 56, 56, (1, 1, 1, 1)),
    PadShape("circular1-128@28", "circular", 32, 128, 28, 28, (1, 1, 1, 1)),
    PadShape("replicate3-3@224", "replicate", 32, 3, 224, 224, (3, 3, 3, 3)),
]
