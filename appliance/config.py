"""The node configuration (``rtnode.yaml``): schema, defaults, loading and overrides.

Every setting has a documented default here; relative paths in the file are resolved
against the directory of the configuration file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.yamlsource import ConfigError, ConfigProblem, YamlDocument, load_yaml

M = TypeVar("M", bound=BaseModel)

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
_DEST_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)=(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)$"
)


def _check_ae(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_RE.match(value):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable chars, no '\\')")
    return stripped


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Strict):
    """The node's own DICOM identity and listening socket."""

    ae_title: str = "RTNODE"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 11112
    data_dir: Path = Path("var")
    max_pdu_bytes: Annotated[int, Field(ge=0)] = 262144
    network_timeout_s: Annotated[float, Field(gt=0)] = 60.0

    _ae = field_validator("ae_title")(_check_ae)


class AllowedCaller(_Strict):
    """A calling AE title allowed to associate, optionally only from one host address."""

    ae_title: str
    host: str | None = None

    _ae = field_validator("ae_title")(_check_ae)


class SecuritySettings(_Strict):
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    accept_any_caller: bool = False


class StorageSettings(_Strict):
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 1024


class SpoolSettings(_Strict):
    """Retention of received instances (the TPS/PACS keeps the originals).

    A series' spool files are deleted ``retention_days`` after its last activity (last
    instance, completion, job end, send), and only once every job of the series is done
    or skipped and every output delivered. 0 keeps everything forever.
    """

    retention_days: Annotated[float, Field(ge=0)] = 30.0
    purge_interval_minutes: Annotated[float, Field(gt=0)] = 60.0


class CompletionSettings(_Strict):
    quiet_seconds: Annotated[float, Field(ge=0)] = 3.0
    tick_seconds: Annotated[float, Field(gt=0)] = 0.5


class WorkerSettings(_Strict):
    count: Annotated[int, Field(ge=1, le=64)] = 1
    max_attempts: Annotated[int, Field(ge=1)] = 3
    job_timeout_s: Annotated[float, Field(gt=0)] = 900.0


class DeliverySettings(_Strict):
    max_attempts: Annotated[int, Field(ge=1)] = 15
    backoff_initial_s: Annotated[float, Field(gt=0)] = 2.0
    backoff_max_s: Annotated[float, Field(gt=0)] = 300.0
    tick_seconds: Annotated[float, Field(gt=0)] = 1.0


class Destination(_Strict):
    ae_title: str
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]

    _ae = field_validator("ae_title")(_check_ae)


class EngineSettings(_Strict):
    """Settings handed to the engines in the worker processes; every key is optional."""

    tg263_overrides: Path | None = None  # site file: local name -> TG-263 name, colour
    tg263_vocabulary: Path | None = None  # default: config/tg263.yaml
    tg263_worksheet: Path | None = None  # the AAPM worksheet (CSV/XLS), if the site has it
    llm_model: str | None = None  # "bundled" (SmolLM2-135M), a GGUF path, or none
    segmentation_model: Path | None = None  # model card; default: the shipped thorax model
    segmentation_providers: list[str] = Field(default_factory=list)  # empty: choose at run time
    segmentation_threads: Annotated[int, Field(ge=0)] = 0  # 0: ONNX Runtime's default
    segmentation_thread_spinning: bool = False  # ORT idle threads spin (its default) or sleep
    llm_threads: Annotated[int, Field(ge=0)] = 0  # llama.cpp threads; 0: cores - 1
    clinical_protocols: Path | None = None  # protocol folder; default: config/protocols
    clinical_time_budget_s: Annotated[float, Field(gt=0, le=600)] = 5.0  # LLM time per case

    def as_params(self) -> dict[str, Any]:
        """The ``ctx.params`` keys the engines read."""
        params: dict[str, Any] = {
            "tg263_overrides": self.tg263_overrides,
            "tg263_vocabulary": self.tg263_vocabulary,
            "tg263_worksheet": self.tg263_worksheet,
            "tg263_llm_model": self.llm_model,
            "segmentation_model": self.segmentation_model,
            "segmentation_providers": list(self.segmentation_providers),
            "segmentation_threads": self.segmentation_threads,
            "segmentation_thread_spinning": self.segmentation_thread_spinning,
            # one LLM for both engines (one model per worker): none -> deterministic only
            "clinical_llm_model": self.llm_model or "none",
            "clinical_llm_threads": self.llm_threads,
            "clinical_protocols": self.clinical_protocols,
            "clinical_time_budget_s": self.clinical_time_budget_s,
        }
        return {k: str(v) if isinstance(v, Path) else v for k, v in params.items() if v}


class NodeConfig(_Strict):
    """Top-level ``rtnode.yaml``."""

    node: NodeSettings = NodeSettings()
    security: SecuritySettings = SecuritySettings()
    storage: StorageSettings = StorageSettings()
    spool: SpoolSettings = SpoolSettings()
    completion: CompletionSettings = CompletionSettings()
    workers: WorkerSettings = WorkerSettings()
    delivery: DeliverySettings = DeliverySettings()
    destinations: dict[str, Destination] = Field(default_factory=dict)
    engines: EngineSettings = EngineSettings()
    rules_file: Path = Path("rules.yaml")
    structure_template: Path = Path("structures.yaml")
    # Site (or test) engines: pipeline step name -> "package.module:Class", importable
    # in the worker processes. Default: none.
    engine_plugins: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")],
        Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")],
    ] = Field(default_factory=dict)


class LoadedConfig(BaseModel):
    """A validated config with its paths resolved and the file's digest."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    sha256: str
    config: NodeConfig

    @property
    def data_dir(self) -> Path:
        return self.config.node.data_dir

    def with_overrides(self, **changes: Any) -> LoadedConfig:
        return self.model_copy(update={"config": apply_overrides(self.config, **changes)})


def load_config(path: Path) -> LoadedConfig:
    """Read and validate ``path``; raises :class:`ConfigError` listing every problem."""
    doc = load_yaml(path)
    config = validate_document(doc, NodeConfig)
    base = path.resolve().parent
    node = config.node.model_copy(update={"data_dir": _resolve(base, config.node.data_dir)})
    config = config.model_copy(
        update={
            "node": node,
            "engines": _resolve_engine_paths(base, config.engines),
            "rules_file": _resolve(base, config.rules_file),
            "structure_template": _resolve(base, config.structure_template),
        }
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedConfig(path=path.resolve(), sha256=digest, config=config)


def validate_document(doc: YamlDocument, model: type[M]) -> M:
    """Validate parsed YAML against ``model``, mapping every error to file and line."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        problems = [doc.problem(tuple(err["loc"]), err["msg"]) for err in exc.errors()]
        raise ConfigError(problems) from exc


def _resolve_engine_paths(base: Path, engines: EngineSettings) -> EngineSettings:
    names = (
        "tg263_overrides",
        "tg263_vocabulary",
        "tg263_worksheet",
        "segmentation_model",
        "clinical_protocols",
    )
    changes: dict[str, Any] = {
        n: _resolve(base, getattr(engines, n)) for n in names if getattr(engines, n) is not None
    }
    model = engines.llm_model
    if model and model != "bundled":
        changes["llm_model"] = str(_resolve(base, Path(model)))
    return engines.model_copy(update=changes)


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value).resolve()


def parse_destination(text: str) -> tuple[str, Destination]:
    """Parse ``NAME=AET@HOST:PORT`` as given to ``--destination``."""
    match = _DEST_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r}: expected NAME=AET@HOST:PORT")
    dest = Destination(ae_title=match["ae"], host=match["host"], port=int(match["port"]))
    return match["name"], dest


def apply_overrides(
    config: NodeConfig,
    *,
    ae_title: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    allow_callers: list[str] | None = None,
    destinations: list[str] | None = None,
) -> NodeConfig:
    """Return a copy of ``config`` with the command-line overrides applied."""
    node_changes: dict[str, Any] = {}
    if ae_title:
        node_changes["ae_title"] = _check_ae(ae_title)
    if port:
        node_changes["port"] = port
    if data_dir:
        node_changes["data_dir"] = data_dir.resolve()
    callers = list(config.security.allowed_callers)
    callers += [AllowedCaller(ae_title=aet) for aet in allow_callers or []]
    dests = dict(config.destinations)
    for text in destinations or []:
        name, dest = parse_destination(text)
        dests[name] = dest
    return config.model_copy(
        update={
            "node": config.node.model_copy(update=node_changes),
            "security": config.security.model_copy(update={"allowed_callers": callers}),
            "destinations": dests,
        }
    )


__all__ = [
    "ConfigError",
    "ConfigProblem",
    "Destination",
    "LoadedConfig",
    "NodeConfig",
    "apply_overrides",
    "load_config",
    "parse_destination",
    "validate_document",
]
