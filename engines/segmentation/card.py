"""Model cards: the YAML file beside each ``.onnx`` model that says how to run it.

A card names the model and its intended use, gives the input geometry (spacing in mm,
orientation axis codes), the intensity window and normalisation, the sliding-window
patch and overlap, the output labels (index -> TG-263 name, display colour, RT ROI
Interpreted Type, post-processing), optional extra inputs, and the sha256 of the model
file, which is checked before the model is loaded. See ``config/models/thorax.yaml``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engines.segmentation.context import FIELDS as CONTEXT_FIELDS
from engines.structures import InterpretedType

logger = logging.getLogger(__name__)

ColourComponent = Annotated[int, Field(ge=0, le=255)]
_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
_CHUNK_BYTES = 1 << 20


MODELS_DIR = Path(__file__).resolve().parents[2] / "config" / "models"
THORAX_CARD = MODELS_DIR / "thorax.yaml"  # the shipped organ model (segment_onnx)
BREAST_CTV_CARD = MODELS_DIR / "breast_ctv.yaml"  # the shipped context-aware CTV (segment_ctv)


class ModelCardError(ValueError):
    """A card is unreadable or invalid, or its model file does not match it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalisation(_Strict):
    """After clipping to the window: ``linear`` maps the window onto ``out_range``;
    ``zscore`` subtracts ``mean`` and divides by ``std`` (both in HU)."""

    kind: Literal["linear", "zscore"]
    out_range: tuple[float, float] = (0.0, 1.0)
    mean: float = 0.0
    std: float = 1.0

    @model_validator(mode="after")
    def _sane(self) -> Normalisation:
        if self.kind == "zscore" and self.std <= 0:
            raise ValueError("std must be positive")
        if self.kind == "linear" and self.out_range[0] == self.out_range[1]:
            raise ValueError("out_range must not be empty")
        return self


class Intensity(_Strict):
    window_hu: tuple[float, float]
    normalisation: Normalisation

    @field_validator("window_hu")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError("window_hu must be [low, high] with low < high")
        return value


class InputSpec(_Strict):
    """The image input: ONNX input name, model grid and sliding window."""

    name: str = "image"
    spacing_mm: tuple[float, float, float]
    orientation: str = "RAS"
    intensity: Intensity
    patch_size: tuple[int, int, int]
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)

    @field_validator("spacing_mm")
    @classmethod
    def _positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("spacing_mm must be positive")
        return value

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, value: str) -> str:
        codes = value.upper()
        if len(codes) != 3 or any(c not in _AXES for c in codes):
            raise ValueError("orientation must be three axis codes such as RAS or LPS")
        if sorted(_AXES[c] for c in codes) != [0, 1, 2]:
            raise ValueError("orientation must name each axis (L/R, A/P, S/I) once")
        return codes

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("patch_size must be positive")
        return value


class ExtraInput(_Strict):
    """An additional model input besides the image (e.g. a clinical context vector).

    The engine feeds ``ctx.params["segmentation_inputs"][name]`` when given, zeros when
    the input is optional, and fails the job when a required one is missing.
    """

    name: str
    kind: Literal["context_vector"] = "context_vector"
    length: int = Field(ge=1)
    required: bool = False
    description: str = ""


class Postprocess(_Strict):
    """Clean-up of one label's mask on the CT grid, in this order.

    ``skin_margin_mm``: voxels closer than this to the body surface (in-plane Euclidean
    distance per axial slice) are removed: the contouring convention the model was trained
    to, e.g. a breast CTV 5 mm under the skin. Applied when the body outline is known (an
    External); 0 turns it off. ``skin_margin_mm_by_context``: for a context-aware model,
    the margin when a flag of the context vector is set (the largest of the set flags'
    margins), e.g. ``{target_breast: 5, target_chestwall: 3}`` for one CTV label that is
    the whole breast or the chest wall; keys are the context layout's field names
    (``engines.segmentation.context.FIELDS``).
    """

    skin_margin_mm: float = Field(default=0.0, ge=0.0, le=30.0)
    skin_margin_mm_by_context: dict[str, Annotated[float, Field(ge=0.0, le=30.0)]] = Field(
        default_factory=dict
    )
    largest_component: bool = False
    fill_holes: bool = False

    @field_validator("skin_margin_mm_by_context")
    @classmethod
    def _known_flags(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(CONTEXT_FIELDS))
        if unknown:
            raise ValueError(f"unknown context fields {unknown}; known: {list(CONTEXT_FIELDS)}")
        return value


class OutputLabel(_Strict):
    """One structure the model produces.

    ``threshold``: the structure is where the summed probability of its channels exceeds
    this value on the CT grid (0.5: its argmax against any one other label). A lower value
    suits a structure the model under-segments; set it from cases outside the training and
    the held-out sets (``engines.segmentation.training.calibrate_ctv`` does so).
    """

    index: int = Field(ge=1)
    name: str = Field(min_length=1, max_length=64)
    color_rgb: tuple[ColourComponent, ColourComponent, ColourComponent]
    interpreted_type: InterpretedType
    covers: tuple[int, ...] = ()
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    postprocess: Postprocess = Postprocess()

    def indices(self) -> tuple[int, ...]:
        """Label indices whose union is this structure (``covers``, default its own)."""
        return self.covers or (self.index,)


class OutputSpec(_Strict):
    name: str = "logits"
    activation: Literal["softmax"] = "softmax"
    channels: int = Field(ge=2)
    labels: tuple[OutputLabel, ...]

    @model_validator(mode="after")
    def _consistent(self) -> OutputSpec:
        indices = [label.index for label in self.labels]
        names = [label.name for label in self.labels]
        problems = []
        if len(set(indices)) != len(indices):
            problems.append("label indices repeat")
        if len(set(names)) != len(names):
            problems.append("label names repeat")
        for label in self.labels:
            bad = [i for i in label.indices() if not 1 <= i < self.channels]
            if bad:
                problems.append(f"{label.name}: indices {bad} outside 1..{self.channels - 1}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class MirrorSpec(_Strict):
    """Average each patch's probabilities with those of its mirror image (flipped back).

    ``axis``: the model-grid spatial axis to flip (0, 1, 2 in the card's ``orientation``;
    0 is left-right for RAS). ``swap_channels``: output channels that trade places in a
    mirror image (e.g. Lung_L and Lung_R). ``swap_inputs``: per extra input, the elements
    that trade places (e.g. the left and right flags of a context vector).
    """

    axis: int = Field(ge=0, le=2)
    swap_channels: tuple[tuple[int, int], ...] = ()
    swap_inputs: dict[str, tuple[tuple[int, int], ...]] = Field(default_factory=dict)


class RegionSpec(_Strict):
    """Where a refinement model looks: the box around structures found before it.

    A refinement model (listed in another card's ``refined_by``) runs after that card's
    model, only inside the (slice, row, column) box of the structures named in ``around``
    plus ``margin_mm`` on every side, usually on a finer grid; its outputs replace the
    first model's structures of the same names. When none of ``around`` was found it
    does not run.

    ``min_volume_cm3``: only structures of at least this volume are refined (and seed the
    region); smaller ones stay as the first model drew them. A refinement model trained on
    crops around real organs has learnt that its crop holds one: shown the crop around a
    first model's small false positive, it may draw a whole organ there, so the gate keeps
    it from deciding whether an organ is present.
    """

    around: tuple[str, ...] = Field(min_length=1)
    margin_mm: float = Field(default=20.0, ge=0.0, le=200.0)
    min_volume_cm3: float = Field(default=0.0, ge=0.0)


class ModelCard(_Strict):
    """Everything the engine needs to run one exported model, and what it is for.

    ``refined_by``: cards (paths relative to this card) of refinement models run after
    this one, in order; each must have a ``region``. ``region``: set only on a
    refinement model's card (:class:`RegionSpec`).
    """

    name: str
    version: str
    intended_use: str
    modality: Literal["CT"] = "CT"
    model_file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    input: InputSpec
    extra_inputs: tuple[ExtraInput, ...] = ()
    outputs: OutputSpec
    test_time_mirror: MirrorSpec | None = None
    region: RegionSpec | None = None
    refined_by: tuple[str, ...] = ()
    limitations: tuple[str, ...] = ()
    training: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _mirror_fits(self) -> ModelCard:
        mirror = self.test_time_mirror
        if mirror is None:
            return self
        problems = []
        for pair in mirror.swap_channels:
            if not all(0 <= c < self.outputs.channels for c in pair):
                problems.append(
                    f"swap_channels {list(pair)} outside 0..{self.outputs.channels - 1}"
                )
        lengths = {spec.name: spec.length for spec in self.extra_inputs}
        for name, pairs in mirror.swap_inputs.items():
            if name not in lengths:
                problems.append(f"swap_inputs names {name!r}, which is not an extra input")
                continue
            for pair in pairs:
                if not all(0 <= i < lengths[name] for i in pair):
                    problems.append(
                        f"swap_inputs {name} {list(pair)} outside 0..{lengths[name] - 1}"
                    )
        if problems:
            raise ValueError("test_time_mirror: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _cascade_fits(self) -> ModelCard:
        if self.region is not None and self.refined_by:
            raise ValueError(
                "a refinement model (with a region) cannot itself be refined_by others"
            )
        return self

    def refiner_paths(self, card_path: Path) -> tuple[Path, ...]:
        """The ``refined_by`` cards, relative paths resolved against this card's directory."""
        return tuple(
            path if path.is_absolute() else card_path.parent / path
            for path in (Path(p) for p in self.refined_by)
        )

    def model_path(self, card_path: Path) -> Path:
        """The model file, relative paths resolved against the card's directory."""
        path = Path(self.model_file)
        return path if path.is_absolute() else card_path.parent / path


def load_card(path: Path | str) -> ModelCard:
    """Read and validate a card; every problem is listed in the :class:`ModelCardError`."""
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelCardError(f"{source}: cannot read model card: {exc}") from exc
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise ModelCardError(describe(source, exc)) from exc


def describe(source: Path, exc: ValidationError) -> str:
    """One line per validation error: ``file: key: message``."""
    lines = [f"{source}: invalid model card ({exc.error_count()} problems)"]
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "<root>"
        lines.append(f"{source}: {key}: {error['msg']}")
    return "\n".join(lines)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verified_model_path(card: ModelCard, card_path: Path) -> Path:
    """The card's model file after checking it exists and its sha256 matches.

    Raises
    ------
    ModelCardError
        When the file is missing or its sha256 differs from the card's.
    """
    model = card.model_path(card_path)
    if not model.is_file():
        raise ModelCardError(f"{card_path}: model file {model} does not exist")
    actual = file_sha256(model)
    if actual != card.sha256:
        raise ModelCardError(
            f"{card_path}: sha256 mismatch for {model.name}: the card says {card.sha256}, "
            f"the file is {actual}. The model file was replaced or the card is stale; "
            "re-export the model or correct the card (rtnode check-model shows both)."
        )
    return model


def load_refiner(path: Path, parent: Path) -> ModelCard:
    """A card named in ``parent``'s ``refined_by``: it must exist and have a ``region``."""
    refiner = load_card(path)
    if refiner.region is None:
        raise ModelCardError(
            f"{parent}: refined_by names {path}, whose card has no region (the structures "
            "around which it runs)"
        )
    return refiner


def verify_cascade(card_path: Path) -> ModelCard:
    """Load a card and check its model file, and those of its ``refined_by`` cards."""
    card = load_card(card_path)
    verified_model_path(card, card_path)
    for path in card.refiner_paths(card_path):
        verified_model_path(load_refiner(path, card_path), path)
    return card


def write_card(card: ModelCard, path: Path, header: str = "") -> None:
    """Write ``card`` as YAML (keys in schema order), with an optional comment header."""
    data = card.model_dump(mode="json")
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(comment + body, encoding="utf-8")
    logger.info("model card written: %s", path)
