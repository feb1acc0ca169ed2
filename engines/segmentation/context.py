"""The clinical context of a breast target volume, as the fixed-length vector a model reads.

The text stage (``rtnode clinical --json``, ``ctx.clinical``) validates the facts and
decides the strategy; this module turns that decision into numbers, deterministically.
The context-aware CTV model (``config/models/breast_ctv.yaml``) declares this vector as
its extra input ``context``.

Layout of version ``CONTEXT_VERSION`` (``CONTEXT_LENGTH`` float32 values, each 0 or 1):

=====  ==========================  ==============================================
index  meaning                     set when
=====  ==========================  ==============================================
0      laterality left             the treated breast is the left one
1      laterality right            the treated breast is the right one
2      target whole breast         ``strategy.breast_or_chestwall == "breast"``
3      target chest wall           ``strategy.breast_or_chestwall == "chestwall"``
4      regional nodes              ``strategy.regional_nodes`` is true
5      supraclavicular per ESTRO   regional nodes and ``scl_guideline == "ESTRO"``
6      supraclavicular per RTOG    regional nodes and ``scl_guideline == "RTOG"``
7      context given               always 1 (a vector of zeros means "no context")
=====  ==========================  ==============================================

Regional nodes without a guideline set neither 5 nor 6 (the model then contours the
ESTRO extent). A changed layout is a new version and needs a retrained model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

CONTEXT_VERSION = "breast-context-1"
CONTEXT_LENGTH = 8
FIELDS: tuple[str, ...] = (
    "laterality_left",
    "laterality_right",
    "target_breast",
    "target_chestwall",
    "regional_nodes",
    "scl_estro",
    "scl_rtog",
    "context_given",
)

Laterality = Literal["left", "right"]
Target = Literal["breast", "chestwall"]
Guideline = Literal["ESTRO", "RTOG"]


@dataclass(frozen=True)
class BreastContext:
    """The validated strategy that decides a breast CTV."""

    laterality: Laterality
    target: Target
    regional_nodes: bool
    scl_guideline: Guideline | None = None

    def vector(self) -> npt.NDArray[np.float32]:
        """The model input (layout in the module docstring)."""
        return breast_context_vector(
            self.laterality, self.target, self.regional_nodes, self.scl_guideline
        )

    @property
    def side_suffix(self) -> str:
        """TG-263 laterality suffix: ``L`` or ``R``."""
        return "L" if self.laterality == "left" else "R"

    def describe(self) -> str:
        """One line for job notes, e.g. ``left chest wall + regional nodes (RTOG)``."""
        target = "whole breast" if self.target == "breast" else "chest wall"
        nodes = ""
        if self.regional_nodes:
            nodes = f" + regional nodes ({self.scl_guideline or 'guideline not given'})"
        return f"{self.laterality} {target}{nodes}"


def breast_context_vector(
    laterality: Laterality,
    target: Target,
    regional_nodes: bool,
    scl_guideline: Guideline | None = None,
) -> npt.NDArray[np.float32]:
    """Encode a breast strategy as ``CONTEXT_LENGTH`` float32 values (0 or 1).

    Raises
    ------
    ValueError
        For a laterality other than left/right or a target other than breast/chestwall.
    """
    if laterality not in ("left", "right"):
        raise ValueError(f"laterality must be 'left' or 'right', not {laterality!r}")
    if target not in ("breast", "chestwall"):
        raise ValueError(f"target must be 'breast' or 'chestwall', not {target!r}")
    vector = np.zeros(CONTEXT_LENGTH, dtype=np.float32)
    vector[0 if laterality == "left" else 1] = 1.0
    vector[2 if target == "breast" else 3] = 1.0
    if regional_nodes:
        vector[4] = 1.0
        if scl_guideline == "ESTRO":
            vector[5] = 1.0
        elif scl_guideline == "RTOG":
            vector[6] = 1.0
    vector[7] = 1.0
    return vector


def context_from_clinical(clinical: Mapping[str, Any] | None) -> npt.NDArray[np.float32] | None:
    """The context vector of the text stage's result, or None (see :func:`breast_context`)."""
    context = breast_context(clinical)
    return None if context is None else context.vector()


def breast_context(clinical: Mapping[str, Any] | None) -> BreastContext | None:
    """The breast strategy in ``ctx.clinical``; None when it is not a breast case or a
    fact the CTV needs (side, breast vs chest wall, regional nodes) is missing."""
    reason = missing_facts(clinical)
    if reason:
        logger.debug("no breast context: %s", reason)
        return None
    assert clinical is not None
    strategy = clinical["strategy"]
    guideline = strategy.get("scl_guideline")
    return BreastContext(
        laterality=cast(Laterality, clinical["laterality"]),
        target=cast(Target, strategy["breast_or_chestwall"]),
        regional_nodes=bool(strategy["regional_nodes"]),
        scl_guideline=cast(Guideline, guideline) if guideline in ("ESTRO", "RTOG") else None,
    )


def missing_facts(clinical: Mapping[str, Any] | None) -> str:
    """Why ``clinical`` gives no breast context ("" when it does)."""
    if not clinical:
        return "no clinical text result for this series"
    if clinical.get("site") != "breast":
        return f"site is {clinical.get('site')!r}, not breast"
    if clinical.get("laterality") not in ("left", "right"):
        return f"laterality is {clinical.get('laterality')!r}, not left or right"
    strategy = clinical.get("strategy")
    if not isinstance(strategy, Mapping):
        return "no RT strategy in the clinical result"
    if strategy.get("breast_or_chestwall") not in ("breast", "chestwall"):
        return f"breast_or_chestwall is {strategy.get('breast_or_chestwall')!r}"
    if not isinstance(strategy.get("regional_nodes"), bool):
        return f"regional_nodes is {strategy.get('regional_nodes')!r}, not true or false"
    return ""
