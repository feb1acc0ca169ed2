"""Structure templates: TG-263 structure name -> display colour and RT ROI Interpreted Type.

A template is a validated data file (``config/structures.yaml`` by default). Engines look
names up here instead of hard-coding colours or DICOM defined terms.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "config" / "structures.yaml"

# RT ROI Interpreted Type (3006,00A4) defined terms, PS3.3 C.8.8.8.
InterpretedType = Literal[
    "EXTERNAL",
    "PTV",
    "CTV",
    "GTV",
    "TREATED_VOLUME",
    "IRRAD_VOLUME",
    "BOLUS",
    "AVOIDANCE",
    "ORGAN",
    "MARKER",
    "REGISTRATION",
    "ISOCENTER",
    "CONTRAST_AGENT",
    "CAVITY",
    "BRACHY_CHANNEL",
    "BRACHY_ACCESSORY",
    "BRACHY_SRC_APP",
    "BRACHY_CHNL_SHLD",
    "SUPPORT",
    "FIXATION",
    "DOSE_REGION",
    "CONTROL",
    "DOSE_MEASUREMENT",
]
ColourComponent = Annotated[int, Field(ge=0, le=255)]
RGB = tuple[int, int, int]


class TemplateError(ValueError):
    """A structure template file is unreadable or invalid; lists every problem found."""


class UnknownStructure(KeyError):
    """A structure name is not in the template (and matches no target prefix)."""


class StructureEntry(BaseModel):
    """One structure of a template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    color_rgb: tuple[ColourComponent, ColourComponent, ColourComponent]
    interpreted_type: InterpretedType
    description: str = ""


class StructureTemplate(BaseModel):
    """A named set of structures, keyed by TG-263 name (case-sensitive).

    ``target_prefixes`` maps a name prefix (``PTV`` in ``PTV_6000``) to the entry used
    for target names that are not listed one by one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = 1
    structures: dict[str, StructureEntry]
    target_prefixes: dict[str, str] = Field(default_factory=dict)

    @field_validator("structures")
    @classmethod
    def _not_empty(cls, value: dict[str, StructureEntry]) -> dict[str, StructureEntry]:
        if not value:
            raise ValueError("a template needs at least one structure")
        return value

    def entry(self, name: str) -> StructureEntry:
        """The entry for ``name``; target names fall back to their prefix's entry."""
        if name in self.structures:
            return self.structures[name]
        for prefix, key in self.target_prefixes.items():
            if name.startswith(prefix) and key in self.structures:
                return self.structures[key]
        raise UnknownStructure(f"structure {name!r} is not in template {self.name!r}")

    def colour(self, name: str) -> RGB:
        """Display colour of ``name`` as (r, g, b), 0..255."""
        r, g, b = self.entry(name).color_rgb
        return (r, g, b)

    def interpreted_type(self, name: str) -> str:
        """RT ROI Interpreted Type of ``name`` (a DICOM defined term)."""
        return self.entry(name).interpreted_type


def load_template(path: Path | str | None = None) -> StructureTemplate:
    """Load and validate a structure template.

    Parameters
    ----------
    path
        YAML file; ``None`` means the repository's ``config/structures.yaml``.

    Raises
    ------
    TemplateError
        When the file cannot be read or parsed, or fails validation (all errors listed).
    """
    source = Path(path) if path is not None else DEFAULT_TEMPLATE_PATH
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"{source}: cannot load structure template: {exc}") from exc
    try:
        template = StructureTemplate.model_validate(data)
    except ValidationError as exc:
        raise TemplateError(_describe(source, exc)) from exc
    logger.debug(
        "structure template %s (%d names) from %s", template.name, len(template.structures), source
    )
    return template


def _describe(source: Path, exc: ValidationError) -> str:
    lines = [f"{source}: invalid structure template ({exc.error_count()} problems)"]
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "<root>"
        lines.append(f"{source}: {key}: {error['msg']}")
    return "\n".join(lines)
