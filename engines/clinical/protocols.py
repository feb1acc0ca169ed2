"""Protocol files (``config/protocols/<site>.yaml``): the strategy's decision rules as data.

Each decision is an ordered list of rules; the first rule whose ``when`` holds fires and its
``value`` is the decision (the last rule of a list must have no ``when``, so a decision
always has a value). A ``when`` holds when every key in it holds; a key about a fact the
note does not give (age unknown, no PSA) does not hold. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.config import validate_document
from appliance.yamlsource import ConfigError, ConfigProblem, load_yaml

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "config" / "protocols"
RiskGroup = Literal[
    "very_low",
    "low",
    "intermediate_favourable",
    "intermediate_unfavourable",
    "high",
    "very_high",
    "unknown",
]
Surgery = Literal["BCS", "mastectomy", "prostatectomy", "none"]
StageSource = Literal["c", "p", "yp"]
V = TypeVar("V")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AtLeast(_Strict):
    """``count`` or more of the conditions ``of`` hold."""

    count: Annotated[int, Field(ge=1)]
    of: list[Condition]


class Condition(_Strict):
    """Facts a rule needs; every key given must hold (ages in years, PSA in ng/mL)."""

    surgery: list[Surgery] | None = None
    t_in: list[str] | None = None  # T stage starts with one of these ("T3b", "T4")
    n_min: Annotated[int, Field(ge=0, le=3)] | None = None  # N number of the nodal stage
    n_max: Annotated[int, Field(ge=0, le=3)] | None = None
    age_min: Annotated[int, Field(ge=0)] | None = None  # age >= age_min
    age_below: Annotated[int, Field(ge=0)] | None = None  # age < age_below
    psa_min: Annotated[float, Field(ge=0)] | None = None  # PSA >= psa_min
    psa_above: Annotated[float, Field(ge=0)] | None = None  # PSA > psa_above
    psa_below: Annotated[float, Field(ge=0)] | None = None  # PSA < psa_below
    grade_group_min: Annotated[int, Field(ge=1, le=5)] | None = None
    grade_group_max: Annotated[int, Field(ge=1, le=5)] | None = None
    primary_pattern_min: Annotated[int, Field(ge=1, le=5)] | None = None
    svi: bool | None = None
    neoadjuvant: bool | None = None
    risk_group: list[RiskGroup] | None = None
    regional_nodes: bool | None = None  # a decision made before this one
    pelvic_nodes: bool | None = None  # a decision made before this one
    any: list[Condition] | None = None
    all: list[Condition] | None = None
    at_least: AtLeast | None = None


class Prescription(_Strict):
    """One dose level: ``dose_gy`` in ``fractions`` to ``target``."""

    target: str
    dose_gy: Annotated[float, Field(gt=0)]
    fractions: Annotated[int, Field(gt=0)]


class DoseScheme(_Strict):
    """A named fractionation scheme (one or more dose levels)."""

    name: str
    prescriptions: list[Prescription] = Field(min_length=1)


class Rule(_Strict, Generic[V]):
    """One rule: an audit ``id``, a condition (none: always) and the decision's value."""

    id: str
    when: Condition | None = None
    value: V
    note: str = ""


def _ends_unconditionally(rules: list[Rule[V]], name: str) -> None:
    if not rules:
        raise ValueError(f"{name}: at least one rule is required")
    if rules[-1].when is not None:
        raise ValueError(f"{name}: the last rule ({rules[-1].id}) must have no 'when'")


class _Protocol(_Strict):
    name: str
    version: str
    # Which nodal stage decides (first one the note gives): p, yp or c.
    nodal_stage_sources: list[StageSource] = Field(default=["p", "yp", "c"], min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> _Protocol:
        for name in self.decision_names():
            _ends_unconditionally(getattr(self, name), name)
        ids = [rule.id for name in self.decision_names() for rule in getattr(self, name)]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"rule ids must be unique: {', '.join(duplicates)}")
        return self

    @classmethod
    def decision_names(cls) -> tuple[str, ...]:
        """Decisions in evaluation order (a later one may use an earlier one's value)."""
        return ()


class BreastProtocol(_Protocol):
    """Breast: target, regional nodal irradiation, its guideline, dose, boost."""

    site: Literal["breast"]
    breast_or_chestwall: list[Rule[Literal["breast", "chestwall"]]]
    regional_nodes: list[Rule[bool]]
    scl_guideline: list[Rule[Literal["RTOG", "ESTRO"] | None]]
    dose: list[Rule[DoseScheme]]
    boost: list[Rule[DoseScheme | None]]

    @classmethod
    def decision_names(cls) -> tuple[str, ...]:
        return ("breast_or_chestwall", "regional_nodes", "scl_guideline", "dose", "boost")


class ProstateProtocol(_Protocol):
    """Prostate: NCCN risk group, target, seminal vesicles, pelvic nodes, dose."""

    site: Literal["prostate"]
    risk_group: list[Rule[RiskGroup]]
    target: list[Rule[Literal["prostate", "prostate_bed"]]]
    seminal_vesicles: list[Rule[bool]]
    pelvic_nodes: list[Rule[bool]]
    dose: list[Rule[DoseScheme]]

    @classmethod
    def decision_names(cls) -> tuple[str, ...]:
        return ("risk_group", "target", "seminal_vesicles", "pelvic_nodes", "dose")


Protocol = BreastProtocol | ProstateProtocol
_MODELS: dict[str, type[BreastProtocol] | type[ProstateProtocol]] = {
    "breast": BreastProtocol,
    "prostate": ProstateProtocol,
}


def load_protocol(path: Path) -> Protocol:
    """Validate one protocol file; every problem is reported with file, line and key."""
    doc = load_yaml(path)
    site = doc.data.get("site") if isinstance(doc.data, dict) else None
    model = _MODELS.get(str(site))
    if model is None:
        known = ", ".join(sorted(_MODELS))
        raise ConfigError([doc.problem(("site",), f"unknown site {site!r} (known: {known})")])
    return validate_document(doc, model)


def load_protocols(directory: Path | None = None) -> dict[str, Protocol]:
    """Every ``*.yaml`` protocol of ``directory`` (default ``config/protocols``), by site;
    all files' problems are reported together."""
    directory = directory or DEFAULT_DIR
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), 0, "", "no such protocol folder")])
    protocols: dict[str, Protocol] = {}
    problems: list[ConfigProblem] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            protocol = load_protocol(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if protocol.site in protocols:
            problems.append(ConfigProblem(str(path), 0, "site", f"second {protocol.site} file"))
        protocols[protocol.site] = protocol
    if problems:
        raise ConfigError(problems)
    return protocols


AtLeast.model_rebuild()
