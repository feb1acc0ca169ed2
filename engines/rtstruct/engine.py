"""Pipeline step that writes the job's structures as a new RTSTRUCT (an AI draft)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydicom.uid import generate_uid

from engines.base import EngineContext, EngineError
from engines.rtstruct.writer import DRAFT_DESCRIPTION, write_rtstruct
from engines.volume import CTVolume, VolumeError

logger = logging.getLogger(__name__)


class RTStructWriterEngine:
    """Writes ``ctx.structures`` to ``ctx.output_dir / "RS_<SOP Instance UID>.dcm"``.

    Options (all optional): ``label``, ``series_description``, ``manufacturer``,
    ``algorithm_name``, ``series_number``; ``ctx.params["algorithm_name"]`` (the pipeline
    that made the masks) overrides ``algorithm_name``. Empty masks are skipped with a note.
    """

    name: ClassVar[str] = "rtstruct_writer"
    inputs: ClassVar[tuple[str, ...]] = ("structures",)
    outputs: ClassVar[tuple[str, ...]] = ("rtstruct",)

    def __init__(
        self,
        label: str = "AI DRAFT",
        series_description: str = DRAFT_DESCRIPTION,
        manufacturer: str = "rtnode",
        algorithm_name: str = "rtnode",
        series_number: int = 901,
    ) -> None:
        self.label = label
        self.series_description = series_description
        self.manufacturer = manufacturer
        self.algorithm_name = algorithm_name
        self.series_number = series_number

    def run(self, ctx: EngineContext) -> None:
        """Write the RTSTRUCT and append its path to ``ctx.outputs``."""
        if not ctx.structures:
            raise EngineError("no structures to write: the pipeline produced none")
        present = [s for s in ctx.structures if s.voxel_count > 0]
        for empty in (s for s in ctx.structures if s.voxel_count == 0):
            ctx.notes.append(f"{self.name}: {empty.name} is empty and was not written")
        if not present:
            raise EngineError("no structures to write: every structure mask is empty")
        sop_uid = generate_uid()
        path = ctx.output_dir / f"RS_{sop_uid}.dcm"
        write_rtstruct(
            _ct(ctx), present, path, sop_instance_uid=sop_uid, **self._labels(ctx.params)
        )
        ctx.outputs.append(path)
        logger.info("job %s: RTSTRUCT with %d structures -> %s", ctx.job_id, len(present), path)

    def _labels(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "label": self.label,
            "series_description": self.series_description,
            "manufacturer": self.manufacturer,
            "algorithm_name": params.get("algorithm_name", self.algorithm_name),
            "series_number": self.series_number,
        }


def _ct(ctx: EngineContext) -> CTVolume:
    try:
        return ctx.ct
    except VolumeError as exc:
        raise EngineError(f"cannot read the CT the structures refer to: {exc}") from exc
