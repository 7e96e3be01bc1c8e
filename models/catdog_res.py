"""Residual dogs-vs-cats CNN (ResNet-9 style) built from fastconv's conv + BatchNorm layers.

Every convolution is a :class:`fastconv.conv_bn.Conv2dBatchNormAct`: ``act(BN(conv(x))
[+ residual])``. In eval mode each is one fastconv kernel (the BatchNorm folded into the
epilogue, the skip connection and the ReLU fused); in train mode the convolution runs on
fastconv and the BatchNorm, add and ReLU in torch. Layout for a 64 px input::

    stem   conv 3->w0, 64x64            -> max pool -> 32x32
    stage  conv w0->w1 + residual block -> max pool -> 16x16
    stage  conv w1->w2                  -> max pool ->  8x8
    stage  conv w2->w3 + residual block
    head   global average pool, linear

A residual block is ``relu(x + BN(conv(relu(BN(conv(x))))))``. Works at any input size
>= 8 (three 2x2 pools).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fastconv.conv_bn import Conv2dBatchNormAct
from fastconv.layers import AdaptiveAvgPool2d, MaxPool2d
from fastconv.models.catdog import init_cnn_weights

__all__ = ["CatDogResNet", "ConvBatchNormReLU", "ResidualBlock"]


class ConvBatchNormReLU(nn.Module):
    """``relu(BN(conv3x3(x)) [+ residual])``: (N, C, H, W) -> (N, K, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv2dBatchNormAct(
            in_channels, out_channels, 3, padding=1, bias=False, activation="relu"
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        return self.conv(x, self.bn, residual)


class ResidualBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))``: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = ConvBatchNormReLU(channels, channels)
        self.second = ConvBatchNormReLU(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x), residual=x)


class CatDogResNet(nn.Module):
    """(N, 3, H, W) float images -> (N, num_classes) logits; ``widths`` = (w0, w1, w2, w3)."""

    def __init__(
        self, widths: Sequence[int] = (32, 64, 128, 256), num_classes: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must give 4 channel counts, got {tuple(widths)}")
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            ConvBatchNormReLU(3, w0),
            MaxPool2d(2),
            ConvBatchNormReLU(w0, w1),
            ResidualBlock(w1),
            MaxPool2d(2),
            ConvBatchNormReLU(w1, w2),
            MaxPool2d(2),
            ConvBatchNormReLU(w2, w3),
            ResidualBlock(w3),
        )
        self.head = nn.Sequential(
            AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(w3, num_classes)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_cnn_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
