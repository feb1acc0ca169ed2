"""The one small interface every engine implements.

An engine declares named inputs and outputs and has one entry point, ``run``. Engines
run only inside worker processes (see ``appliance.workers``); they receive an
:class:`EngineContext` holding the job's input files, the decoded CT volume where one
exists, and the structures produced by earlier engines of the same pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from engines.volume import CTVolume

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]


class EngineError(Exception):
    """An engine could not process its input; the message is shown to users and audited."""


@dataclass(frozen=True, eq=False)
class Structure:
    """A contoured structure on the CT grid.

    ``mask`` is a boolean array in the CT volume's (slice, row, column) order, i.e.
    ``mask.shape == ctx.ct.shape``.
    """

    name: str
    mask: npt.NDArray[np.bool_]
    color_rgb: RGB
    interpreted_type: str
    description: str = ""

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class ClinicalDocument:
    """Clinical text joined to the job's series (DICOM SR, a PDF's text layer, or text
    given with ``rtnode submit-text``)."""

    source: str  # e.g. "SR 1.2.826...", "PDF 1.2.826...", "submit-text"
    text: str
    received_at: str = ""  # ISO 8601, UTC


@dataclass
class EngineContext:
    """What a pipeline passes from engine to engine inside one job."""

    job_id: int
    input_files: list[Path]
    output_dir: Path
    params: dict[str, Any] = field(default_factory=dict)
    structures: list[Structure] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Clinical text joined to this series by the node (empty when none arrived in time),
    # and the text stage's validated result: the JSON object ``rtnode clinical --json``
    # prints (facts, disagreements, strategy, summary), or None when no text stage ran.
    clinical_documents: list[ClinicalDocument] = field(default_factory=list)
    clinical: dict[str, Any] | None = None
    _ct: CTVolume | None = None

    @property
    def ct(self) -> CTVolume:
        """The CT volume of the job's input series, decoded on first use."""
        if self._ct is None:
            self._ct = CTVolume.from_files(self.input_files)
        return self._ct

    def add_structure(self, structure: Structure) -> None:
        """Add a structure, replacing an earlier one of the same name."""
        self.structures = [s for s in self.structures if s.name != structure.name]
        self.structures.append(structure)


class Engine(Protocol):
    """An engine: named inputs/outputs, a model card (or None) and ``run``."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]]

    def run(self, ctx: EngineContext) -> None:
        """Read what ``inputs`` names from ``ctx`` and add what ``outputs`` names."""
        ...
