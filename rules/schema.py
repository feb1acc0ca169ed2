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

    _match = field_validator("match", "exclude")(_check_conditions)


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
