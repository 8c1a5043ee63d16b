"""What every export target does: send a batch of files, answer per file as each answer arrives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.store.states import DeliveryState

# A send's outcome: delivered and dead are the outbox row's next state; retry keeps the row pending.
DELIVERED, DEAD = DeliveryState.DELIVERED, DeliveryState.DEAD
RETRY = "retry"


@dataclass(frozen=True)
class Outcome:
    state: str  # delivered | retry | dead
    error: str | None = None
    warning: str | None = None


@dataclass(frozen=True)
class Parcel:
    """One file to deliver."""

    item_id: int
    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str


Report = Callable[[int, Outcome], None]


def no_report(_item_id: int, _outcome: Outcome) -> None:
    return None


class Target(Protocol):
    def send(self, parcels: Sequence[Parcel], report: Report = no_report) -> dict[int, Outcome]:
        """Deliver the batch (one association / request session); an outcome per parcel. `report`
        is called with each outcome as soon as it is known (a C-STORE response, a STOW-RS
        response, a file renamed into place), so the outbox records it before the next send and
        a crash mid-batch re-sends only what was not confirmed."""
        ...


TargetFactory = Callable[[Any, Any], Target]
_REGISTRY: dict[str, TargetFactory] = {}


def register(kind: str) -> Callable[[TargetFactory], TargetFactory]:
    """Adding a destination kind is adding one module that registers its factory here."""

    def wrap(factory: TargetFactory) -> TargetFactory:
        _REGISTRY[kind] = factory
        return factory

    return wrap


def make_target(destination: Any, node_config: Any) -> Target:
    from node.export import dicom, folder, stowrs  # noqa: F401 - importing registers the kinds

    return _REGISTRY[destination.kind](destination, node_config)
