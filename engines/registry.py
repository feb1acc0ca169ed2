"""Pipeline step names -> engine classes, imported lazily inside worker processes."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from engines.base import Engine

logger = logging.getLogger(__name__)

# step name -> "module:Class". Rules name steps; check-config validates them against this.
BUILTIN_ENGINES: dict[str, str] = {
    "classical_body_lungs": "engines.classical.body_lungs:BodyLungsEngine",
    "clinical_text": "engines.clinical.engine:ClinicalTextEngine",
    "rtstruct_writer": "engines.rtstruct.engine:RTStructWriterEngine",
    "segment_ctv": "engines.segmentation.ctv_engine:ContextCTVEngine",
    "segment_onnx": "engines.segmentation.engine:SegmentationEngine",
    "tg263_rename": "engines.naming.engine:TG263RenameEngine",
}


class UnknownEngine(KeyError):
    """A pipeline names an engine that is not registered."""


def register_engine(name: str, target: str) -> None:
    """Register ``name`` as ``"module:Class"`` (used by tests and site plug-ins)."""
    if ":" not in target:
        raise ValueError(f"engine target {target!r} must look like 'package.module:Class'")
    BUILTIN_ENGINES[name] = target


def engine_names() -> list[str]:
    return sorted(BUILTIN_ENGINES)


def create_engine(name: str, **options: Any) -> Engine:
    """Import and construct the engine registered as ``name``."""
    try:
        target = BUILTIN_ENGINES[name]
    except KeyError as exc:
        raise UnknownEngine(f"unknown engine {name!r}; known: {', '.join(engine_names())}") from exc
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    engine: Engine = cls(**options)
    logger.info("engine %s loaded (%s)", name, target)
    return engine
