"""Routing rules as validated data (``rules.yaml``).

A rule matches a completed series by DICOM keywords, in the style of the MONAI Deploy
App SDK's series selection rules::

    rules:
      - name: ct-organs
        match:
          Modality: "(?i)^CT$"                 # a regular expression (re.search)
          SeriesDescription: ["(?i)chest", "(?i)thorax"]   # any of several
          BodyPartExamined: "!(?i)head"        # a leading "!" negates one pattern
          SliceThickness: {min: 1.0, max: 5.0} # a numeric range, inclusive
        exclude:
          SeriesDescription: "(?i)scout|localizer"
        pipeline: [classical_body_lungs, rtstruct_writer]
        destinations: [tps]
        clinical_text:                       # optional: the pipeline needs clinical text
          wait_seconds: 60                   # how long a completed series waits for it
          without_text: [classical_body_lungs, rtstruct_writer]   # if none came ([]: skip)
        params:                              # optional: engine settings for this rule's jobs
          segmentation_model: models/site_lung.yaml   # paths: relative to the rules file

Keys are DICOM keywords (``pydicom.datadict``) or one of the node's own attributes:
``CallingAETitle``, ``CalledAETitle``, ``InstanceCount``. All keys of ``match`` must
hold; a series is dropped if any key of ``exclude`` holds.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import keyword_dict

NODE_KEYWORDS = frozenset({"CallingAETitle", "CalledAETitle", "InstanceCount"})


class Range(BaseModel):
    """Inclusive numeric range; either bound may be omitted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


Condition = str | list[str] | Range


def _check_pattern(pattern: str) -> str:
    body = pattern[1:] if pattern.startswith("!") else pattern
    try:
        re.compile(body)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {body!r}: {exc}") from exc
    return pattern


def _check_conditions(conditions: dict[str, Condition]) -> dict[str, Condition]:
    for key, cond in conditions.items():
        if key not in keyword_dict and key not in NODE_KEYWORDS:
            raise ValueError(f"{key!r} is not a DICOM keyword or node attribute")
        for pattern in [cond] if isinstance(cond, str) else cond if isinstance(cond, list) else []:
            _check_pattern(pattern)
    return conditions


MAX_WAIT_SECONDS = 7 * 24 * 3600


class ClinicalTextNeed(BaseModel):
    """A rule whose pipeline needs the clinical text joined to the series.

    Text is joined by Patient ID and (Study Instance UID or Accession Number). A series
    with joined text runs ``pipeline`` at once; otherwise its job waits up to
    ``wait_seconds`` (default 60) for a document, then runs ``without_text`` instead
    (required: an empty list skips the series).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)] = 60.0
    without_text: list[str]
    # Text that arrives after the fallback ran (or the series was skipped) starts a new
    # job with the full pipeline; false: it is only audited (clinical_text_late).
    rerun_late_text: bool = True


ParamValue = str | int | float | bool | list[str]
# Job parameters that name files: a relative path is taken from the rules file's folder.
PATH_PARAMS = frozenset(
    {
        "segmentation_model",
        "ctv_model",
        "clinical_protocols",
        "tg263_overrides",
        "tg263_vocabulary",
        "tg263_worksheet",
        "structure_template",
    }
)


def _check_params(params: dict[str, ParamValue]) -> dict[str, ParamValue]:
    for key in params:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ValueError(f"parameter name {key!r} must be lower_snake_case")
    return params


class Rule(BaseModel):
    """One routing rule: conditions, the pipeline to run and where results go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    enabled: bool = True
    match: dict[str, Condition] = Field(default_factory=dict)
    exclude: dict[str, Condition] = Field(default_factory=dict)
    pipeline: Annotated[list[str], Field(min_length=1)]
    destinations: list[str] = Field(default_factory=list)
    clinical_text: ClinicalTextNeed | None = None
    # Engine settings for this rule's jobs, over the node config's ``engines:`` (ctx.params).
    params: dict[str, ParamValue] = Field(default_factory=dict)

    _match = field_validator("match", "exclude")(_check_conditions)
    _params = field_validator("params")(_check_params)


class RuleSet(BaseModel):
    """The whole rules file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate rule names: {', '.join(dupes)}")
        return self
