"""Export a PyTorch (MONAI) segmentation network to ONNX, with its model card.

The exported graph has dynamic batch and spatial axes, opset 17 and ``ir_version`` 13
(onnx 1.23 writes 14 by default; onnxruntime 1.31 reads up to 13). After writing, the
ONNX model is run in ONNX Runtime (CPU) next to the PyTorch network on the same random
inputs, at the card's patch size and at a second, different size; the largest absolute
difference of the logits is reported and must stay below a tolerance. The card is the
template's content plus the model file name and its sha256.

``axis_order`` exports the network on a permuted model grid: the convolution kernels and
their per-axis attributes are permuted (an exact rewrite, same weights), and so are the
card's ``orientation``, ``spacing_mm`` and ``patch_size``, so the engine resamples the CT
onto the permuted grid itself. The network keeps the layout it was trained in. ONNX
Runtime's CPU convolutions (im2col + GEMM) are faster when the last axis is not the short
one; PyTorch's (oneDNN) are faster the other way round (docs/segmentation.md, "Benchmarks").
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from torch import nn

from engines.segmentation.card import ModelCard, ModelCardError, file_sha256, write_card

logger = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 13
DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportReport:
    """What an export produced."""

    onnx_path: Path
    card_path: Path
    sha256: str
    size_bytes: int
    max_abs_diff: float
    shapes_checked: tuple[tuple[int, ...], ...]


AxisOrder = tuple[int, int, int]
T = TypeVar("T")
_CONV_AXES_ATTRIBUTES = ("kernel_size", "stride", "padding", "dilation", "output_padding")
# Leaf modules that act per voxel or per channel, the same on any axis order.
_AXIS_FREE = (
    nn.BatchNorm3d,
    nn.InstanceNorm3d,
    nn.ReLU,
    nn.PReLU,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Dropout3d,
    nn.Identity,
)


def tensor_dims(axis_order: AxisOrder) -> tuple[int, ...]:
    """``Tensor.permute`` dims that permute the spatial axes of (batch, channel, *grid)."""
    return (0, 1, *(2 + a for a in axis_order))


def inverse_order(axis_order: AxisOrder) -> AxisOrder:
    """The permutation that undoes ``axis_order``."""
    return (axis_order.index(0), axis_order.index(1), axis_order.index(2))


def permute_axes(values: Sequence[T], axis_order: AxisOrder) -> tuple[T, T, T]:
    """Per-axis ``values`` (spacing, patch size, kernel size...) in the permuted order."""
    return (values[axis_order[0]], values[axis_order[1]], values[axis_order[2]])


def permute_network(network: nn.Module, axis_order: AxisOrder) -> nn.Module:
    """A copy of ``network`` that computes on inputs whose spatial axes are permuted.

    ``copy(x.permute(*tensor_dims(axis_order)))`` equals ``network(x)`` permuted
    the same way. Convolution weights and their per-axis attributes are permuted; every
    other leaf module must act per voxel or per channel (``ValueError`` otherwise).
    Containers (U-Net skip connections, residual units) must combine their children along
    channels or element-wise; :func:`export_model` checks the result numerically.
    """
    if sorted(axis_order) != [0, 1, 2]:
        raise ValueError(f"axis_order must be a permutation of (0, 1, 2), got {axis_order}")
    permuted = copy.deepcopy(network)
    dims = tensor_dims(axis_order)
    for name, module in permuted.named_modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            module.weight.data = module.weight.data.permute(*dims).contiguous()
            for attribute in _CONV_AXES_ATTRIBUTES:
                value = getattr(module, attribute, None)
                if isinstance(value, tuple) and len(value) == 3:
                    setattr(module, attribute, permute_axes(value, axis_order))
            pads = module.padding
            if isinstance(pads, tuple):
                module._reversed_padding_repeated_twice = [
                    p for p in reversed(pads) for _ in (0, 1)
                ]
        elif not list(module.children()) and not isinstance(module, _AXIS_FREE):
            raise ValueError(
                f"cannot permute the axes of {name or 'the network'} ({type(module).__name__})"
            )
    return permuted


def permute_input_spec(template: dict[str, Any], axis_order: AxisOrder) -> dict[str, Any]:
    """A card template for the grid permuted by ``axis_order``: the ``input``'s orientation,
    spacing and patch size, and the axis of a ``test_time_mirror``."""
    spec = dict(template["input"])
    spec["orientation"] = "".join(str(spec.get("orientation", "RAS"))[a] for a in axis_order)
    for key in ("spacing_mm", "patch_size"):
        spec[key] = list(permute_axes(spec[key], axis_order))
    permuted = {**template, "input": spec}
    mirror = template.get("test_time_mirror")
    if isinstance(mirror, dict) and "axis" in mirror:
        permuted["test_time_mirror"] = {**mirror, "axis": axis_order.index(int(mirror["axis"]))}
    return permuted


def export_onnx(
    network: nn.Module,
    onnx_path: Path,
    patch_size: tuple[int, int, int],
    *,
    in_channels: int = 1,
    input_name: str = "image",
    output_name: str = "logits",
    extra_inputs: Sequence[tuple[str, int]] = (),
) -> None:
    """Write ``network`` (eval mode) as ONNX with dynamic batch and spatial axes.

    ``extra_inputs`` are (name, length) vectors the network takes after the image, e.g. a
    clinical context vector: inputs of shape (batch, length).
    """
    network.eval()
    example = (
        torch.zeros(1, in_channels, *patch_size),
        *(torch.zeros(1, length) for _, length in extra_inputs),
    )
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    dynamic_axes: dict[str, dict[int, str]] = {input_name: axes, output_name: axes}
    dynamic_axes.update({name: {0: "batch"} for name, _ in extra_inputs})
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False) exports MONAI's UNet with dynamic spatial
    # axes without extra packages; torch 2.13 flags it deprecated, hence the filter.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network,
            example,
            str(onnx_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name, *(name for name, _ in extra_inputs)],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(onnx_path))
    model.ir_version = IR_VERSION
    model.producer_name = "rtnode export-model"
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def max_abs_difference(
    network: nn.Module,
    onnx_path: Path,
    shapes: Sequence[tuple[int, ...]],
    *,
    input_name: str = "image",
    seed: int = 0,
    extra_inputs: Sequence[tuple[str, int]] = (),
    axis_order: AxisOrder = (0, 1, 2),
) -> float:
    """Largest |PyTorch - ONNX Runtime| over the logits of random inputs of ``shapes``
    (extra inputs: random 0/1 vectors). ONNX Runtime gets each input with its spatial
    axes permuted by ``axis_order`` and is compared with PyTorch's output permuted alike."""
    dims = tensor_dims(axis_order)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    network.eval()
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        extra = [
            torch.randint(0, 2, (shape[0], length), generator=generator).float()
            for _, length in extra_inputs
        ]
        with torch.no_grad():
            expected = network(x, *extra).permute(*dims).numpy()
        feeds = {input_name: np.ascontiguousarray(x.permute(*dims).numpy())}
        feeds.update({name: v.numpy() for (name, _), v in zip(extra_inputs, extra, strict=True)})
        (actual,) = session.run(None, feeds)
        worst = max(worst, float(np.max(np.abs(expected - actual))))
    return worst


def export_model(
    network: nn.Module,
    card_template: dict[str, Any],
    onnx_path: Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    card_header: str = "",
    axis_order: AxisOrder = (0, 1, 2),
) -> ExportReport:
    """Export ``network`` to ``onnx_path`` and write its card beside it (same stem, .yaml).

    ``card_template`` is a model card without ``model_file`` and ``sha256`` (any values
    there are replaced), in the layout ``network`` computes in; ``axis_order`` permutes
    the exported model's grid (see the module docstring). Raises ``ModelCardError`` for an
    invalid template and ``ValueError`` when ONNX Runtime and PyTorch disagree by more
    than ``tolerance``.
    """
    trained = network
    if axis_order != (0, 1, 2):
        network = permute_network(network, axis_order)
        card_template = permute_input_spec(card_template, axis_order)
    template = dict(card_template)
    template.update(model_file=onnx_path.name, sha256="0" * 64)
    try:
        draft = ModelCard.model_validate(template)
    except ValueError as exc:
        raise ModelCardError(f"invalid card template: {exc}") from exc
    patch = draft.input.patch_size
    extra = [(e.name, e.length) for e in draft.extra_inputs]
    export_onnx(
        network,
        onnx_path,
        patch,
        input_name=draft.input.name,
        output_name=draft.outputs.name,
        extra_inputs=extra,
    )
    # Shapes in the trained layout: the check runs the network as trained.
    trained_patch = permute_axes(patch, inverse_order(axis_order))
    shapes: list[tuple[int, ...]] = [
        (1, 1, *trained_patch),
        (2, 1, *_other_size(trained_patch)),
    ]
    diff = max_abs_difference(
        trained,
        onnx_path,
        shapes,
        input_name=draft.input.name,
        extra_inputs=extra,
        axis_order=axis_order,
    )
    logger.info("export %s: max |PyTorch - ONNX Runtime| = %.3g", onnx_path.name, diff)
    if not diff <= tolerance:
        raise ValueError(
            f"ONNX Runtime and PyTorch disagree: max abs difference {diff:.3g} > {tolerance:g}"
        )
    sha = file_sha256(onnx_path)
    card = draft.model_copy(update={"sha256": sha})
    card_path = onnx_path.with_suffix(".yaml")
    write_card(card, card_path, header=card_header)
    return ExportReport(
        onnx_path=onnx_path,
        card_path=card_path,
        sha256=sha,
        size_bytes=onnx_path.stat().st_size,
        max_abs_diff=diff,
        shapes_checked=tuple(shapes),
    )


def load_card_template(path: Path) -> dict[str, Any]:
    """A card template (YAML mapping) from disk."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ModelCardError(f"{path}: a card template must be a YAML mapping")
    return data


def _other_size(patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """A second spatial size, different from the patch, still divisible by 16."""
    return (max(16, patch[0] - 16), patch[1] + 16, max(16, patch[2]))
