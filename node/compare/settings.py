"""The comparison's settings: `comparison` in the configuration file, in the file's own shape.

node.config uses these frozen dataclasses directly as pydantic field types (pydantic v2 validates stdlib
dataclasses: the Annotated constraints below, and `__pydantic_config__` rejects a mistyped key), so the
defaults are written once, here. Nothing here reads files or the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, ClassVar, Literal

from annotated_types import Gt, Interval, Lt, MinLen
from pydantic import AfterValidator

from node.compare.context import TshSource
from node.compare.matching import DEFAULT_GAINED, DEFAULT_MATCH_GATE_MM, DEFAULT_REDUCED, AvidityRule, ChangeThresholds
from node.compare.repeatability import ChangeLimits, ChangeLimitSettings
from node.uids import ae_title

Positive = Annotated[float, Gt(0)]
FORBID: dict[str, str] = {"extra": "forbid"}


@dataclass(frozen=True)
class DoseUncertaintySettings:
    """Type-B relative standard uncertainties (assumptions a site replaces with its own measurements;
    EANM 2018 uncertainty guidance, Gear et al.): the activity calibration common to all time points,
    and the recovery of a lesion's activity (resolved by the sphere fit / not resolved)."""

    __pydantic_config__: ClassVar[dict[str, str]] = FORBID

    calibration: Annotated[float, Interval(ge=0, le=1)] = 0.05
    recovery_resolved: Annotated[float, Interval(ge=0, le=1)] = 0.05
    recovery_unresolved: Annotated[float, Interval(ge=0, le=2)] = 0.20


@dataclass(frozen=True)
class SValuePoint:
    """One sphere of a 131I S-value table: mass (g) -> absorbed dose per decay integral (Gy per MBq h)."""

    __pydantic_config__: ClassVar[dict[str, str]] = FORBID

    mass_g: Positive
    gy_per_mbq_h: Positive


AETitle = Annotated[str, AfterValidator(ae_title)]


@dataclass(frozen=True)
class PriorQuery:
    """`comparison.priors.query` in the configuration: a PACS asked for earlier studies of the patient
    (C-FIND), which then sends them here (C-MOVE to this node's AE title, which the PACS must know) or
    hands them over (C-GET)."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    ae_title: AETitle
    host: Annotated[str, MinLen(1)]
    port: Annotated[int, Interval(ge=1, le=65535)]
    calling_ae_title: AETitle | None = None  # None: the node's own AE title (for_node)
    retrieve: Literal["move", "get"] = "move"
    move_destination: AETitle | None = None  # None: the node's own AE title (for_node)
    timeout_s: Annotated[float, Gt(0)] = 120.0
    # Series retrieved at once, each over its own association (a PET/CT study has two series; the
    # PACS then sends both at once, and the node's listener processes take them in parallel).
    associations: Annotated[int, Interval(ge=1, le=8)] = 2

    def for_node(self, node_ae_title: str) -> PriorQuery:
        """The query with the node's AE title where the configuration left the AE titles open."""
        return replace(self, calling_ae_title=self.calling_ae_title or node_ae_title,
                       move_destination=self.move_destination or node_ae_title)


@dataclass(frozen=True)
class PriorsSettings:
    """`comparison.priors`: where earlier studies come from besides the node itself."""

    __pydantic_config__: ClassVar[dict[str, str]] = FORBID

    query: PriorQuery | None = None  # a PACS to ask for earlier studies (node/retrieve.py)


@dataclass(frozen=True)
class ComparisonSettings:
    """Comparison with an earlier scan of the same patient, and 131I lesion dosimetry (documented defaults:
    docs/comparison.md)."""

    __pydantic_config__: ClassVar[dict[str, str]] = FORBID

    prior_window_days: Positive = 90.0
    tsh: TshSource = field(default_factory=TshSource)
    gained: Positive = DEFAULT_GAINED
    reduced: Annotated[float, Lt(0)] = DEFAULT_REDUCED
    match_gate_mm: Positive = DEFAULT_MATCH_GATE_MM
    registration: Literal["rigid", "affine"] = "rigid"  # affine: a 12-parameter stage after the rigid one
    dose_activities_gbq: Annotated[tuple[Positive, ...], MinLen(1)] = (3.7, 7.4)
    # Ho et al., NEJM 2013: treat if the predicted lesion dose is >= 20 Gy; Maxon 1983/1992:
    # >= 80-85 Gy for nodal metastases (docs/science.md)
    treat_threshold_gy: Positive = 20.0
    nodal_response_gy: Positive = 80.0
    s_values: Annotated[tuple[SValuePoint, ...], MinLen(1)] | None = None
    priors: PriorsSettings = field(default_factory=PriorsSettings)
    change_limits: ChangeLimitSettings = field(default_factory=ChangeLimitSettings)
    avidity: AvidityRule = field(default_factory=AvidityRule)
    dose_uncertainty: DoseUncertaintySettings = field(default_factory=DoseUncertaintySettings)

    @property
    def thresholds(self) -> ChangeThresholds:
        return ChangeThresholds(self.gained, self.reduced, self.match_gate_mm)

    @property
    def limits(self) -> ChangeLimits:
        """The change limits with the fixed thresholds of this section."""
        return ChangeLimits(**vars(self.change_limits), gained=self.gained, reduced=self.reduced)

    @property
    def uncertainty(self) -> DoseUncertaintySettings:
        return self.dose_uncertainty

    @property
    def query(self) -> PriorQuery | None:
        return self.priors.query

    @property
    def s_table(self) -> tuple[tuple[float, float], ...] | None:
        """The S-value table as (sphere mass g, Gy per MBq h) pairs."""
        return tuple((p.mass_g, p.gy_per_mbq_h) for p in self.s_values) if self.s_values else None
