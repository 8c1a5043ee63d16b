"""Value types and the section base of the configuration: ports, AE titles, positive numbers, files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from node.uids import ae_title


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be 1..65535")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError("file not found")
    return value


Port = Annotated[int, AfterValidator(_port)]
PositiveFloat = Annotated[float, Field(gt=0)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
AETitle = Annotated[str, AfterValidator(ae_title)]  # PS3.5 6.2 (VR AE), node.uids
PositiveSeconds = Annotated[float, AfterValidator(_positive)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
