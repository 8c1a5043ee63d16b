"""Every configuration type of the node, loaded from one YAML file.

The file is validated into frozen pydantic models whose leaves are the settings dataclasses of the pure
packages (node.quant, node.compare): defaults are written once, there. Unknown keys are rejected: a typo
in a hospital's config must fail loudly at start, naming the key, not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from node.compare.settings import ComparisonSettings
from node.config.index import IndexSection
from node.config.quantification import (
    CtNodulesSection,
    QuantificationSection,
    RecoveryCurvePoint,
    RecoveryPoint,
    RecoverySection,
    SeriesSection,
)
from node.config.sections import (
    RESULT_KINDS,
    AllowedCaller,
    Destination,
    DestinationTLS,
    DicomDestination,
    ExportSection,
    FolderDestination,
    HttpSection,
    IngestSection,
    LoggingSection,
    NetworkLimitsSection,
    NodeSection,
    ProcessingSection,
    RetentionSection,
    RetrySection,
    StorageSection,
    StowDestination,
    TLSSection,
)
from node.config.types import AETitle, ExistingFile, Port, PositiveFloat, PositiveSeconds, _Section

__all__ = [
    "RESULT_KINDS", "AETitle", "AllowedCaller", "ConfigError", "CtNodulesSection", "Destination", "DestinationTLS",
    "DicomDestination", "ExistingFile", "ExportSection", "FolderDestination", "HttpSection", "IndexSection",
    "IngestSection", "LoggingSection", "NetworkLimitsSection", "NodeConfig", "NodeSection", "Port", "PositiveFloat",
    "PositiveSeconds", "ProcessingSection", "QuantificationSection", "RecoveryCurvePoint", "RecoveryPoint",
    "RecoverySection", "RetentionSection", "RetrySection", "SeriesSection", "StorageSection", "StowDestination",
    "TLSSection", "dump_config", "load_config", "parse_config",
]

ENV_CONFIG = "IODINE_NODE_CONFIG"


class NodeConfig(_Section):
    """The whole configuration file."""

    node: NodeSection = NodeSection()
    storage: StorageSection = StorageSection()
    index: IndexSection = IndexSection()
    ingest: IngestSection = IngestSection()
    processing: ProcessingSection = ProcessingSection()
    quantification: QuantificationSection = QuantificationSection()
    comparison: ComparisonSettings = ComparisonSettings()
    export: ExportSection = ExportSection()
    http: HttpSection = HttpSection()
    logging: LoggingSection = LoggingSection()
    destinations: list[Destination] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_destination_kind(cls, data: Any) -> Any:
        # Destinations without `kind` are DICOM peers (the common case, and the original form).
        if isinstance(data, dict) and isinstance(data.get("destinations"), list):
            data = {**data, "destinations": [({"kind": "dicom", **d} if isinstance(d, dict) and "kind" not in d
                                              else d) for d in data["destinations"]]}
        return data

    @model_validator(mode="after")
    def _unique_destination_names(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(dup)}")
        return self


class ConfigError(Exception):
    """A configuration file that cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


_UNION_TAGS = {"dicom": DicomDestination, "stowrs": StowDestination, "folder": FolderDestination}


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in _UNION_TAGS:
            continue  # pydantic's tag of the union member, not a key of the file
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The model class that owns the key at `loc` (for listing the allowed keys)."""
    model: Any = NodeConfig
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        if i > 0 and isinstance(loc[i - 1], int) and part in _UNION_TAGS:
            model = _UNION_TAGS[part]
            continue
        fields = _fields_of(model)
        if part not in fields:
            return None
        annotation = fields[part]
        args = getattr(annotation, "__args__", None)
        model = args[0] if args else annotation  # list[X] and X | None -> X; unions resolved by tag
    return model if _fields_of(model) else None


def _fields_of(model: Any) -> dict[str, Any]:
    """{key: type} of a section: a pydantic model or a settings dataclass of the pure packages."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: f.annotation for name, f in model.model_fields.items()}
    if dataclasses.is_dataclass(model) and isinstance(model, type):
        hints = typing.get_type_hints(model)
        return {f.name: hints[f.name] for f in dataclasses.fields(model)}
    return {}


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    path = _loc_to_path(loc)
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's / a settings dataclass's
        owner = _model_at(loc)
        allowed = ", ".join(_fields_of(owner)) if owner else "?"
        return f"{path}: unknown key; expected one of: {allowed}"
    if kind in ("missing", "missing_argument"):
        return f"{path}: required key is missing"
    message = str(error["msg"])
    # Our validators' messages are complete phrases; pydantic's own get a lower-case start.
    message = message.removeprefix("Value error, ") if kind == "value_error" else message[0].lower() + message[1:]
    given = error.get("input")
    if isinstance(given, dict):  # a rule about a whole section: its message says what is wrong
        return f"{path}: {message}"
    return f"{path}: {message}, got {given!r}"


def parse_config(data: Any, source: str = "<config>") -> NodeConfig:
    """Validate already-parsed YAML; raises ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping of sections, got {type(data).__name__}"])
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Load the YAML file at `path`, else $IODINE_NODE_CONFIG, else the built-in defaults."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        return NodeConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    return parse_config(data, source)


def dump_config(config: NodeConfig) -> str:
    """The effective configuration as YAML (defaults filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
