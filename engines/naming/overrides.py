"""A site's overrides: local structure name -> TG-263 name (and colours). They win over
everything else the renamer knows. Format: ``config/tg263_overrides.example.yaml``."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]
RGB = tuple[int, int, int]
_SEPARATORS = re.compile(r"[\s_\-.]+")


class OverridesError(ValueError):
    """The overrides file cannot be read or is invalid (every problem listed)."""


class OverrideEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    color_rgb: Colour | None = None


class OverridesModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    names: dict[str, str | OverrideEntry] = Field(default_factory=dict)
    colors: dict[str, Colour] = Field(default_factory=dict)


def override_key(name: str) -> str:
    """Case-, space- and separator-insensitive key ("L parotid" == "l_PAROTID")."""
    return _SEPARATORS.sub(" ", name).strip().casefold()


class Overrides:
    """Loaded overrides; empty when no file is configured."""

    def __init__(self, model: OverridesModel | None = None, source: str = "") -> None:
        model = model or OverridesModel()
        self.source = source
        self._exact: dict[str, OverrideEntry] = {}
        self._loose: dict[str, OverrideEntry] = {}
        for local, value in model.names.items():
            entry = value if isinstance(value, OverrideEntry) else OverrideEntry(name=value)
            self._exact[local] = entry
            self._loose[override_key(local)] = entry
        self.colours: dict[str, RGB] = {k: (v[0], v[1], v[2]) for k, v in model.colors.items()}
        for entry in self._exact.values():
            if entry.color_rgb is not None:
                rgb = entry.color_rgb
                self.colours.setdefault(entry.name, (rgb[0], rgb[1], rgb[2]))

    def __len__(self) -> int:
        return len(self._exact)

    def lookup(self, name: str) -> str | None:
        """The site's TG-263 name for ``name``: exact match first, then loose."""
        entry = self._exact.get(name) or self._loose.get(override_key(name))
        return entry.name if entry is not None else None

    def colour(self, tg263_name: str) -> RGB | None:
        return self.colours.get(tg263_name)


def load_overrides(path: Path | str | None) -> Overrides:
    """Load an overrides file; ``None`` gives empty overrides."""
    if path is None:
        return Overrides()
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OverridesError(f"{source}: cannot load overrides: {exc}") from exc
    try:
        model = OverridesModel.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid overrides ({exc.error_count()} problems)"]
        lines += [
            f"{source}: {'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise OverridesError("\n".join(lines)) from exc
    overrides = Overrides(model, str(source))
    logger.info("overrides %s: %d names", source, len(overrides))
    return overrides
