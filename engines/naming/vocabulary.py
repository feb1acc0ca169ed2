"""The TG-263 vocabulary: validated data file -> structures, words and policies.

``config/tg263.yaml`` is the project's own vocabulary (its header documents every key). A
site may add the AAPM worksheet (CSV, or XLS when ``xlrd`` is installed) from a configured
path: its names then count as compliant and are matched by their own words.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.structures import InterpretedType

logger = logging.getLogger(__name__)

DEFAULT_VOCABULARY_PATH = Path(__file__).resolve().parents[2] / "config" / "tg263.yaml"

Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]
RGB = tuple[int, int, int]


class VocabularyError(ValueError):
    """The vocabulary (or a worksheet) cannot be read or is invalid; lists every problem."""


class CategoryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    color_rgb: Colour
    interpreted_type: InterpretedType = "ORGAN"


class StructureModel(BaseModel):
    """One structure of the vocabulary file (see the file header for the keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    category: str
    region: str = "body"
    lateral: bool = False
    plural: str | None = None
    color_rgb: Colour | None = None
    color_rgb_right: Colour | None = None
    interpreted_type: InterpretedType | None = None
    synonyms: list[str] = Field(default_factory=list)
    optional_words: list[str] = Field(default_factory=list)
    side_policy: Literal["reject", "drop"] = "reject"
    priority: int = 0
    thickness: bool = False
    match_own_name: bool = True


class PoliciesModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    opt: Literal["base", "helper"] = "base"
    ctv_of_organ: Literal["organ", "target", "abstain"] = "organ"
    versions: Literal["drop", "abstain"] = "drop"


class LateralityModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    left: list[str]
    right: list[str]
    both: list[str] = Field(default_factory=list)
    relative: list[str] = Field(default_factory=list)


class ConflictModel(BaseModel):
    """A phrase that clinics use for different structures: kept unless the site overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phrases: list[str]
    names: list[str]
    note: str = ""


class VocabularyModel(BaseModel):
    """The whole vocabulary file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    name: str
    policies: PoliciesModel = PoliciesModel()
    categories: dict[str, CategoryModel]
    laterality: LateralityModel
    words: dict[str, str] = Field(default_factory=dict)
    noise_words: list[str] = Field(default_factory=list)
    prv_words: list[str] = Field(default_factory=list)
    opt_words: list[str] = Field(default_factory=list)
    helper_words: list[str] = Field(default_factory=list)
    target_words: list[str] = Field(default_factory=list)
    target_classifiers: dict[str, str] = Field(default_factory=dict)
    target_levels: dict[str, str] = Field(default_factory=dict)
    qualifier_words: list[str] = Field(default_factory=list)
    conflicts: list[ConflictModel] = Field(default_factory=list)
    structures: list[StructureModel]


@dataclass(frozen=True)
class Structure:
    """A structure the renamer may answer (one side of a lateral pair is its own entry)."""

    name: str
    base: str
    category: str
    region: str
    color_rgb: RGB
    interpreted_type: str
    side: str = ""  # "L", "R" or "" (not lateral)
    lateral_base: bool = False  # the base of a lateral pair (needs a side to be answered)


@dataclass
class Vocabulary:
    """A loaded vocabulary: the validated model plus every answerable name."""

    model: VocabularyModel
    structures: dict[str, Structure] = field(default_factory=dict)
    extra_names: set[str] = field(default_factory=set)  # compliant-only (worksheet, reverse)
    source: str = ""

    @property
    def names(self) -> set[str]:
        """Every name that counts as compliant (answerable names plus worksheet names)."""
        return set(self.structures) | self.extra_names

    def structure(self, name: str) -> Structure | None:
        return self.structures.get(name)

    def colour(self, name: str) -> RGB | None:
        """Display colour of a vocabulary name or of a PRV/target built on one."""
        entry = self.structures.get(name)
        return entry.color_rgb if entry is not None else None


def load_vocabulary(
    path: Path | str | None = None, worksheet: Path | str | None = None
) -> Vocabulary:
    """Load the vocabulary file and, optionally, an AAPM TG-263 worksheet (CSV or XLS).

    Raises
    ------
    VocabularyError
        When a file cannot be read or the vocabulary fails validation (all errors listed).
    """
    source = Path(path) if path is not None else DEFAULT_VOCABULARY_PATH
    model = _read_model(source)
    vocab = Vocabulary(model=model, source=str(source))
    for entry in model.structures:
        _add_structure(vocab, entry)
    if worksheet is not None:
        add_worksheet(vocab, Path(worksheet))
    logger.debug("vocabulary %s: %d names from %s", model.name, len(vocab.structures), source)
    return vocab


def _read_model(source: Path) -> VocabularyModel:
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise VocabularyError(f"{source}: cannot load vocabulary: {exc}") from exc
    try:
        model = VocabularyModel.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid vocabulary ({exc.error_count()} problems)"]
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]) or "<root>"
            lines.append(f"{source}: {key}: {error['msg']}")
        raise VocabularyError("\n".join(lines)) from exc
    _check_categories(source, model)
    return model


def _check_categories(source: Path, model: VocabularyModel) -> None:
    unknown = [
        f"{source}: structures.{s.name}.category: unknown category {s.category!r}"
        for s in model.structures
        if s.category not in model.categories
    ]
    if unknown:
        raise VocabularyError("\n".join(unknown))


def _add_structure(vocab: Vocabulary, entry: StructureModel) -> None:
    category = vocab.model.categories[entry.category]
    colour = entry.color_rgb or category.color_rgb
    itype = entry.interpreted_type or category.interpreted_type

    def make(name: str, side: str, rgb: RGB, lateral_base: bool = False) -> None:
        vocab.structures[name] = Structure(
            name=name,
            base=entry.name,
            category=entry.category,
            region=entry.region,
            color_rgb=(int(rgb[0]), int(rgb[1]), int(rgb[2])),
            interpreted_type=itype,
            side=side,
            lateral_base=lateral_base,
        )

    if entry.lateral:
        make(f"{entry.name}_L", "L", colour)
        make(f"{entry.name}_R", "R", entry.color_rgb_right or colour)
        make(entry.name, "", colour, lateral_base=True)
    else:
        make(entry.name, "", colour)
    if entry.plural:
        make(entry.plural, "", colour)


# -- AAPM worksheet ------------------------------------------------------------------

WorksheetRow = dict[str, str]
PRIMARY_COLUMN = "TG263-Primary Name"
REVERSE_COLUMN = "TG-263-Reverse Order Name"


def add_worksheet(vocab: Vocabulary, path: Path) -> int:
    """Add the worksheet's primary and reverse-order names as compliant; returns the count.

    Template rows (``Bolus_xxmm``, ``Brainstem_PRVxx``) are skipped: the PRV and thickness
    grammar covers them.
    """
    rows = read_worksheet(path)
    added = 0
    for row in rows:
        for column in (PRIMARY_COLUMN, REVERSE_COLUMN):
            name = (row.get(column) or "").strip()
            template = "xx" in name or name.endswith("PRVx")
            if name and not template and name not in vocab.structures:
                vocab.extra_names.add(name)
                added += 1
    logger.info("worksheet %s: %d names added", path, added)
    return added


def read_worksheet(path: Path) -> list[WorksheetRow]:
    """Rows of an AAPM TG-263 worksheet as dicts keyed by the header (CSV or XLS)."""
    try:
        rows = _read_xls(path) if path.suffix.lower() in (".xls", ".xlsx") else _read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VocabularyError(f"{path}: cannot read worksheet: {exc}") from exc
    if not rows or PRIMARY_COLUMN not in rows[0]:
        raise VocabularyError(f"{path}: not a TG-263 worksheet (no {PRIMARY_COLUMN!r} column)")
    return rows


def _read_csv(path: Path) -> list[WorksheetRow]:
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def _read_xls(path: Path) -> list[WorksheetRow]:
    try:
        import xlrd
    except ImportError as exc:
        raise ValueError(
            "reading .xls worksheets needs xlrd (pip install 'xlrd>=2,<3'); "
            "or export the worksheet as CSV"
        ) from exc
    book = xlrd.open_workbook(str(path))
    sheet = book.sheet_by_index(0)
    header_row = _find_header(sheet)
    header = [str(v).strip() for v in sheet.row_values(header_row)]
    rows: list[WorksheetRow] = []
    for index in range(header_row + 1, sheet.nrows):
        values = [str(v).strip() for v in sheet.row_values(index)]
        rows.append(dict(zip(header, values, strict=False)))
    return rows


def _find_header(sheet: object) -> int:
    for index in range(min(10, sheet.nrows)):  # type: ignore[attr-defined]
        values = [str(v).strip() for v in sheet.row_values(index)]  # type: ignore[attr-defined]
        if PRIMARY_COLUMN in values:
            return index
    raise ValueError(f"no {PRIMARY_COLUMN!r} header in the first 10 rows")
