"""The network of the shipped model, and how checkpoints name their network.

``ResidualUNet`` is MONAI's ``UNet`` with residual units, with two options for ONNX
Runtime's CPU kernels (docs/segmentation.md, "Benchmarks"):

* each up-sampling transposed convolution has kernel = stride (2) instead of 3: the
  kernels do not overlap, so ORT runs each as one GEMM without col2im accumulation (the
  three of them went from 36% of ORT's run time to about 10%);
* the last residual unit, the only layer at full resolution, may use a 1x1x1 kernel
  (``top_kernel_size``; default 3, as MONAI, and 3 in the shipped model): ORT computes
  3x3x3 convolutions by im2col + GEMM, and this one (9 -> 9 channels on every voxel of
  the patch) takes about a third of ORT's run time. A retraining with a 1x1x1 last unit (plus 16
  features at full resolution and replicated end slices) scored Breast_R Dice 0 on
  every held-out phantom, so the shipped model keeps MONAI's 3x3x3.

Everything else (strided residual down-sampling, skip concatenation, batch norm, ReLU)
is MONAI's.

A checkpoint is a ``torch.save`` dict: ``{"network": {"class": "module:Class",
"kwargs": {...}}, "state_dict": {...}}``; any importable ``torch.nn.Module`` class works
(e.g. ``monai.networks.nets:UNet``), so a site can export its own MONAI network with
``rtnode export-model``.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet
from torch import nn

logger = logging.getLogger(__name__)

RESIDUAL_UNET = "engines.segmentation.network:ResidualUNet"


class ResidualUNet(UNet):
    """MONAI UNet with up-sampling kernel = stride (non-overlapping transposed conv), and
    a ``top_kernel_size`` for the last residual unit, the only one at full resolution.

    All other arguments are MONAI ``UNet``'s.
    """

    def __init__(self, *args: Any, top_kernel_size: int = 3, **kwargs: Any) -> None:
        self.top_kernel_size = top_kernel_size  # read by _get_up_layer during UNet.__init__
        super().__init__(*args, **kwargs)

    def _get_up_layer(
        self, in_channels: int, out_channels: int, strides: int, is_top: bool
    ) -> nn.Module:
        up: nn.Module = Convolution(
            self.dimensions,
            in_channels,
            out_channels,
            strides=strides,
            kernel_size=strides,
            act=self.act,
            norm=self.norm,
            dropout=self.dropout,
            bias=self.bias,
            conv_only=is_top and self.num_res_units == 0,
            is_transposed=True,
            adn_ordering=self.adn_ordering,
            padding=0,
            output_padding=0,
        )
        if self.num_res_units > 0:
            unit = ResidualUnit(
                self.dimensions,
                out_channels,
                out_channels,
                strides=1,
                kernel_size=self.top_kernel_size if is_top else self.kernel_size,
                subunits=1,
                act=self.act,
                norm=self.norm,
                dropout=self.dropout,
                bias=self.bias,
                last_conv_only=is_top,
                adn_ordering=self.adn_ordering,
            )
            up = nn.Sequential(up, unit)
        return up


def thorax_network_spec(out_channels: int = 9) -> dict[str, Any]:
    """Class and arguments of the shipped thorax network (1.05 M parameters).

    These are the arguments in the shipped card's ``training.network``: four levels
    (16-32-64-128 channels, three strided down-samplings) and MONAI's 3x3x3 last unit.
    """
    return {
        "class": RESIDUAL_UNET,
        "kwargs": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": out_channels,
            "channels": [16, 32, 64, 128],
            "strides": [2, 2, 2],
            "num_res_units": 2,
            "norm": "BATCH",
            "act": "RELU",
        },
    }


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Instantiate ``spec["class"]`` ("module:Class") with ``spec["kwargs"]``."""
    target = str(spec["class"])
    if ":" not in target:
        raise ValueError(f"network class {target!r} must look like 'package.module:Class'")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    network: nn.Module = cls(**spec.get("kwargs", {}))
    return network


def save_checkpoint(path: Path, spec: dict[str, Any], network: nn.Module, **extra: Any) -> None:
    """Write a checkpoint that :func:`load_checkpoint` (and ``rtnode export-model``) reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"network": spec, "state_dict": network.state_dict(), **extra}, path)


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a checkpoint in eval mode, and the whole checkpoint dict."""
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if "network" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not an rtnode checkpoint (needs 'network' and 'state_dict')")
    network = build_network(checkpoint["network"])
    network.load_state_dict(checkpoint["state_dict"])
    network.eval()
    return network, checkpoint
