"""A 3-D residual U-Net conditioned on a clinical context vector by FiLM.

The image path is MONAI's residual U-Net, written out level by level so the decoder can
be conditioned: MONAI ``ResidualUnit`` blocks down (stride 2), a residual bottom, and
up-sampling transposed convolutions (kernel = stride = 2, as the shipped thorax network)
each followed by a residual unit. Before every up-sampling, the concatenation of the
skip connection and the decoder features is modulated per channel,
``x * (1 + gamma) + beta`` (feature-wise linear modulation, FiLM), with ``gamma`` and
``beta`` from a small MLP of the context vector. The MLP's last layer starts at zero,
so an untrained FiLM is the identity.

``context_length = 0`` builds the vision-only twin: the same network without FiLM and
with the image as its only input.

LLMSeg (``../shared/seeds/000_*``) aligns an LLM embedding with every encoder level by
cross-attention; here the context is the validated strategy (a short one-hot vector,
:mod:`engines.segmentation.context`), for which per-channel modulation is enough and
exports to ONNX as plain Gemm/Mul/Add.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

CONTEXT_UNET = "engines.segmentation.context_network:ContextUNet"


class FiLM(nn.Module):
    """Per-channel scale and shift of a (B, C, ...) tensor from a (B, L) context."""

    def __init__(self, context_length: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(
            nn.Linear(context_length, hidden), nn.ReLU(), nn.Linear(hidden, 2 * channels)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.mlp(context).chunk(2, dim=1)
        shape = (x.shape[0], self.channels, 1, 1, 1)
        return x * (1.0 + gamma.reshape(shape)) + beta.reshape(shape)


class ContextUNet(nn.Module):
    """Residual U-Net (MONAI blocks) with FiLM on the skip connections of the decoder.

    Parameters
    ----------
    channels
        Feature widths per level; each level but the last halves the grid.
    context_length
        Length of the context vector; 0 builds the vision-only twin (no FiLM, one input).
    top_channels
        Width of the last up-sampling's output; the head after it is 1x1x1 (pointwise
        convolutions are fast in ONNX Runtime on CPU).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        context_length: int = 0,
        film_hidden: int = 64,
        num_res_units: int = 2,
        top_channels: int = 16,
    ) -> None:
        super().__init__()
        widths = list(channels)
        if len(widths) < 2:
            raise ValueError("channels needs at least two levels")
        self.context_length = context_length
        self.downs = nn.ModuleList()
        previous = in_channels
        for index, width in enumerate(widths):
            stride = 2 if index < len(widths) - 1 else 1
            self.downs.append(_residual(previous, width, stride, 3, num_res_units))
            previous = width
        self.ups = nn.ModuleList()
        self.films = nn.ModuleList()
        below = widths[-1]
        for index in reversed(range(len(widths) - 1)):
            skip = widths[index]
            is_top = index == 0
            target = out_channels if is_top else widths[index - 1]
            self.ups.append(_up(skip + below, target, top_channels if is_top else target, is_top))
            if context_length:
                self.films.append(FiLM(context_length, skip + below, film_hidden))
            below = target

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_length and context is None:
            raise ValueError("this network needs a context vector")
        skips = []
        x = image
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for level, up in enumerate(self.ups):
            x = torch.cat([skips.pop(), x], dim=1)
            if self.context_length:
                assert context is not None
                x = self.films[level](x, context)
            x = up(x)
        return x


def _residual(
    in_channels: int, out_channels: int, stride: int, kernel: int, units: int, last: bool = False
) -> ResidualUnit:
    return ResidualUnit(
        3,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=kernel,
        subunits=units,
        act="RELU",
        norm="BATCH",
        last_conv_only=last,
    )


def _up(in_channels: int, out_channels: int, width: int, is_top: bool) -> nn.Module:
    """Transposed convolution (kernel = stride = 2) and a residual unit (1x1x1 at the top)."""
    upsample = Convolution(
        3,
        in_channels,
        width,
        strides=2,
        kernel_size=2,
        act="RELU",
        norm="BATCH",
        is_transposed=True,
        padding=0,
        output_padding=0,
    )
    unit = _residual(width, out_channels, 1, 1 if is_top else 3, 1, last=is_top)
    return nn.Sequential(upsample, unit)


def context_network_spec(context_length: int, out_channels: int = 3) -> dict[str, Any]:
    """Class and arguments of the breast CTV networks (``context_length`` 0: vision-only)."""
    return {
        "class": CONTEXT_UNET,
        "kwargs": {
            "in_channels": 1,
            "out_channels": out_channels,
            "channels": [16, 32, 64, 128],
            "context_length": context_length,
            "film_hidden": 64,
            "num_res_units": 2,
            "top_channels": 16,
        },
    }
