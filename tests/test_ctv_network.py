"""The FiLM-conditioned U-Net: context changes the output, ONNX export agrees, the
vision-only twin has one input; and the surface metrics used as evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from engines.segmentation.card import load_card
from engines.segmentation.context import CONTEXT_LENGTH, breast_context_vector
from engines.segmentation.context_network import ContextUNet, context_network_spec
from engines.segmentation.export import IR_VERSION, export_model
from engines.segmentation.network import build_network
from engines.segmentation.training.ctv_data import card_template
from engines.segmentation.training.metrics import dice, hd95_mm

PATCH = (16, 16, 16)


def tiny(context_length: int) -> torch.nn.Module:
    spec = context_network_spec(context_length)
    spec["kwargs"].update(channels=[4, 8, 8], film_hidden=8, num_res_units=1, top_channels=4)
    torch.manual_seed(0)
    return build_network(spec).eval()


def perturb_films(network: torch.nn.Module) -> None:
    """Give FiLM non-zero weights (they start as the identity)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.startswith("films"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def template(multimodal: bool) -> dict[str, Any]:
    card = card_template(multimodal)
    card["input"]["patch_size"] = list(PATCH)
    return card


def test_film_starts_as_identity_and_then_conditions() -> None:
    network = tiny(CONTEXT_LENGTH)
    x = torch.randn(1, 1, *PATCH)
    left = torch.from_numpy(breast_context_vector("left", "breast", False))[None]
    right = torch.from_numpy(breast_context_vector("right", "chestwall", True, "RTOG"))[None]
    with torch.no_grad():
        assert torch.equal(network(x, left), network(x, right))
        perturb_films(network)
        assert not torch.allclose(network(x, left), network(x, right))
    with pytest.raises(ValueError, match="context"):
        network(x)


def test_vision_only_twin_has_no_film_and_one_input() -> None:
    network = tiny(0)
    assert isinstance(network, ContextUNet) and len(network.films) == 0
    assert network(torch.randn(2, 1, *PATCH)).shape == (2, 3, *PATCH)


def test_export_declares_the_context_and_agrees_with_pytorch(tmp_path: Path) -> None:
    network = tiny(CONTEXT_LENGTH)
    perturb_films(network)
    report = export_model(network, template(True), tmp_path / "ctv.onnx")
    assert report.max_abs_diff < 1e-4
    model = onnx.load(str(report.onnx_path))
    assert model.ir_version == IR_VERSION
    assert [i.name for i in model.graph.input] == ["image", "context"]
    card = load_card(report.card_path)
    (extra,) = card.extra_inputs
    assert (extra.name, extra.kind, extra.length, extra.required) == (
        "context",
        "context_vector",
        CONTEXT_LENGTH,
        True,
    )
    session = ort.InferenceSession(str(report.onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 1, 24, 16, 32)).astype(np.float32)
    context = breast_context_vector("right", "chestwall", True, "RTOG")[None]
    (onnx_out,) = session.run(None, {"image": x, "context": context})
    with torch.no_grad():
        expected = network(torch.from_numpy(x), torch.from_numpy(context)).numpy()
    assert np.abs(onnx_out - expected).max() < 1e-4


def test_vision_only_export_has_one_input(tmp_path: Path) -> None:
    report = export_model(tiny(0), template(False), tmp_path / "vision.onnx")
    model = onnx.load(str(report.onnx_path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert load_card(report.card_path).extra_inputs == ()


def ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_hd95_matches_monai_with_anisotropic_spacing() -> None:
    a = ball((24, 40, 40), (12, 20, 18), 9.0)
    b = ball((24, 40, 40), (11, 21, 21), 8.0)
    spacing = (3.0, 1.0, 0.8)
    ours = hd95_mm(a, b, spacing)
    monai = compute_hausdorff_distance(
        torch.from_numpy(a)[None, None],
        torch.from_numpy(b)[None, None],
        percentile=95,
        spacing=spacing,
    )
    assert ours == pytest.approx(float(monai), abs=0.35)
    assert hd95_mm(a, a, spacing) == 0.0
    assert hd95_mm(a, np.zeros_like(a), spacing) == float("inf")
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0


def test_training_loss_leaves_out_the_dice_of_classes_absent_from_the_patch() -> None:
    from engines.segmentation.training.losses import present_dice_ce

    targets = torch.zeros(1, 3, 4, 4, 4)
    targets[:, 0] = 1.0
    targets[0, 0, :2] = 0.0
    targets[0, 1, :2] = 1.0  # primary present in half the patch, no nodes
    perfect = (targets * 20.0 - 10.0).requires_grad_(True)
    loss = present_dice_ce(perfect, targets)
    # near zero: the absent nodes class adds no Dice term of 1
    assert float(loss) < 0.01
    loss.backward()
    assert perfect.grad is not None
    # a wrong primary costs its Dice term too
    wrong = torch.zeros_like(targets)
    wrong[:, 0] = 10.0
    assert float(present_dice_ce(wrong, targets)) > 1.0
    # nothing in the foreground: cross-entropy only
    background = torch.zeros_like(targets)
    background[:, 0] = 1.0
    assert float(present_dice_ce(background * 20.0 - 10.0, background)) < 0.01
