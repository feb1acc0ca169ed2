"""The breast context vector: layout, and the text stage's result -> vector or None."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engines.segmentation.context import (
    CONTEXT_LENGTH,
    FIELDS,
    BreastContext,
    Guideline,
    Laterality,
    Target,
    breast_context,
    breast_context_vector,
    context_from_clinical,
    missing_facts,
)


def clinical(**strategy: Any) -> dict[str, Any]:
    base = {"breast_or_chestwall": "breast", "regional_nodes": False, "scl_guideline": None}
    base.update(strategy)
    return {"site": "breast", "laterality": "left", "T": "T1c", "N": "N0", "strategy": base}


def test_layout_is_one_hot_per_fact() -> None:
    vector = breast_context_vector("right", "chestwall", True, "RTOG")
    assert vector.dtype == np.float32 and vector.shape == (CONTEXT_LENGTH,) == (len(FIELDS),)
    on = {FIELDS[i] for i in np.flatnonzero(vector)}
    assert on == {
        "laterality_right",
        "target_chestwall",
        "regional_nodes",
        "scl_rtog",
        "context_given",
    }
    plain = breast_context_vector("left", "breast", False, "ESTRO")  # no nodes: no guideline bit
    assert {FIELDS[i] for i in np.flatnonzero(plain)} == {
        "laterality_left",
        "target_breast",
        "context_given",
    }


def test_encoding_is_deterministic_and_distinct() -> None:
    options: tuple[tuple[bool, Guideline | None], ...] = (
        (False, None),
        (True, "ESTRO"),
        (True, "RTOG"),
        (True, None),
    )
    sides: tuple[Laterality, ...] = ("left", "right")
    targets: tuple[Target, ...] = ("breast", "chestwall")
    contexts = [
        BreastContext(side, target, nodes, guideline)
        for side in sides
        for target in targets
        for nodes, guideline in options
    ]
    vectors = {c.vector().tobytes() for c in contexts}
    assert len(vectors) == len(contexts)
    assert np.array_equal(contexts[0].vector(), contexts[0].vector())


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="laterality"):
        breast_context_vector("bilateral", "breast", False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        breast_context_vector("left", "prostate", False)  # type: ignore[arg-type]


def test_from_clinical() -> None:
    n1 = clinical(breast_or_chestwall="chestwall", regional_nodes=True, scl_guideline="ESTRO")
    vector = context_from_clinical(n1)
    assert vector is not None
    assert np.array_equal(vector, breast_context_vector("left", "chestwall", True, "ESTRO"))
    context = breast_context(n1)
    assert context is not None and context.side_suffix == "L"
    assert context.describe() == "left chest wall + regional nodes (ESTRO)"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no clinical text"),
        ({"site": "prostate", "laterality": None, "strategy": {}}, "not breast"),
        ({**clinical(), "laterality": "bilateral"}, "laterality"),
        ({**clinical(), "laterality": None}, "laterality"),
        ({"site": "breast", "laterality": "left"}, "no RT strategy"),
        (clinical(breast_or_chestwall=None), "breast_or_chestwall"),
        (clinical(regional_nodes=None), "regional_nodes"),
    ],
)
def test_missing_facts_give_no_context(value: dict[str, Any] | None, reason: str) -> None:
    assert context_from_clinical(value) is None
    assert reason in missing_facts(value)
