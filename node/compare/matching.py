"""Match lesions of two scans after mapping scan 1 into scan 2, and the trial category of each lesion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar

import numpy as np
from annotated_types import Gt
from scipy.optimize import linear_sum_assignment

# Avid at both scans, by the uptake change from the lower- to the higher-TSH scan:
GAINED, STABLE, REDUCED = "gained uptake", "stable", "reduced uptake"
RESTORED = "avidity restored (avid only at higher TSH)"
ONLY_LOWER = "avid only at lower TSH (refractory candidate)"
REFRACTORY = "non-avid at both (refractory)"
# Present at one scan only (no PET focus and no CT lesion at the site in the other):
LOST, LOST_NON_AVID, NEW = "lost (refractory candidate)", "lost (non-avid before)", "new"
RELABELLED = "relabelled (physiological in the other scan)"
CATEGORIES = (GAINED, STABLE, REDUCED, RESTORED, ONLY_LOWER, REFRACTORY, LOST, LOST_NON_AVID, NEW, RELABELLED)
REFRACTORY_CANDIDATES = (ONLY_LOWER, LOST)


# Relative SUVmax change called gained / reduced with the fixed method, and the largest distance of a
# match after registration (documented defaults: docs/comparison.md).
DEFAULT_GAINED, DEFAULT_REDUCED, DEFAULT_MATCH_GATE_MM = 0.25, -0.25, 15.0


@dataclass(frozen=True)
class ChangeThresholds:
    """Relative SUVmax change that counts as gained / reduced (configurable; documented defaults)."""

    gained: float = DEFAULT_GAINED
    reduced: float = DEFAULT_REDUCED
    match_gate_mm: float = DEFAULT_MATCH_GATE_MM


@dataclass(frozen=True)
class Match:
    first: int | None  # index in scan-1 lesions
    second: int | None  # index in scan-2 lesions
    distance_mm: float | None


def match_lesions(first_mapped_mm: np.ndarray, second_mm: np.ndarray, gate_mm: float,
                  first_radius_mm: np.ndarray | None = None, second_radius_mm: np.ndarray | None = None) -> list[Match]:
    """Hungarian assignment on centroid distance (scan-1 centroids already mapped into scan 2).

    A pair is a candidate when its centroids lie within the gate, or when the lesions overlap (the
    distance is shorter than the sum of their equivalent-sphere radii): a large lesion whose centroid
    moves with a change of shape is still the same lesion. Non-candidates stay unmatched: disappeared
    / new."""
    n1, n2 = len(first_mapped_mm), len(second_mm)
    matches: list[Match] = []
    used1: set[int] = set()
    used2: set[int] = set()
    if n1 and n2:
        cost = np.linalg.norm(np.asarray(first_mapped_mm)[:, None, :] - np.asarray(second_mm)[None, :, :], axis=2)
        allowed = cost <= gate_mm
        if first_radius_mm is not None and second_radius_mm is not None:
            allowed |= cost < np.asarray(first_radius_mm)[:, None] + np.asarray(second_radius_mm)[None, :]
        rows, cols = linear_sum_assignment(np.where(allowed, cost, 1e6))
        for r, c in zip(rows, cols, strict=True):
            if allowed[r, c]:
                matches.append(Match(int(r), int(c), float(cost[r, c])))
                used1.add(int(r))
                used2.add(int(c))
    matches += [Match(i, None, None) for i in range(n1) if i not in used1]
    matches += [Match(None, j, None) for j in range(n2) if j not in used2]
    return matches


def equivalent_radius_mm(volume_ml: float) -> float:
    return float((3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


@dataclass(frozen=True)
class AvidityRule:
    """One prespecified rule for "iodine-avid" applied to both scans of a comparison (whatever
    settings each scan was quantified with): lesion-to-background >= `lbr_min` and SUVmax >=
    `soft_tissue_factor` x the scan's soft-tissue reference SUV (and >= `suv_max_min` when set)."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    lbr_min: Annotated[float, Gt(0)] = 3.0
    soft_tissue_factor: Annotated[float, Gt(0)] = 2.0
    suv_max_min: Annotated[float, Gt(0)] | None = None

    def is_avid(self, lesion: dict, soft_tissue_suv: float | None) -> bool:
        lbr, suv = lesion.get("lesion_to_background"), lesion.get("suv_max")
        if lbr is None or suv is None:
            return bool(lesion.get("iodine_avid"))
        if lbr < self.lbr_min or (self.suv_max_min is not None and suv < self.suv_max_min):
            return False
        return soft_tissue_suv is None or suv >= self.soft_tissue_factor * soft_tissue_suv

    def describe(self) -> dict[str, object]:
        text = f"LBR >= {self.lbr_min:g} and SUVmax >= {self.soft_tissue_factor:g} x soft-tissue SUV"
        if self.suv_max_min is not None:
            text += f" and SUVmax >= {self.suv_max_min:g}"
        return {"lbr_min": self.lbr_min, "soft_tissue_factor": self.soft_tissue_factor,
                "suv_max_min": self.suv_max_min, "rule": text}


def classify_pair(avid_lower: bool | None, avid_higher: bool | None, lower_is_earlier: bool,
                  change: str | None = None) -> str:
    """Trial category of one lesion from the lower- to the higher-TSH scan.

    `avid_*` is None where the lesion is absent at that scan (no PET focus and no CT lesion there).
    Present at both: avid at both (then `change`: "gained", "stable" or "reduced" beyond the
    lesion's repeatability), avidity restored (avid only at the higher TSH), avid only at the lower
    TSH (a refractory candidate), or non-avid at both (refractory). Present at one scan only is a
    question of time, not TSH: new (absent at the earlier scan), or lost - a refractory candidate
    only when the earlier focus was avid."""
    if avid_lower is None and avid_higher is None:
        raise ValueError("a lesion must be present at one scan at least")
    if avid_lower is None or avid_higher is None:
        earlier = avid_lower if lower_is_earlier else avid_higher
        if earlier is None:
            return NEW
        return LOST if earlier else LOST_NON_AVID
    if avid_lower and avid_higher:
        return {"gained": GAINED, "reduced": REDUCED}.get(change or "stable", STABLE)
    if avid_higher:
        return RESTORED
    if avid_lower:
        return ONLY_LOWER
    return REFRACTORY


def patient_summary(categories: Sequence[str], avid_at_higher_tsh: Sequence[bool]) -> dict[str, object]:
    counts = {c: 0 for c in CATEGORIES}
    for c in categories:
        counts[c] += 1
    n_avid = sum(avid_at_higher_tsh)
    overall = "all" if avid_at_higher_tsh and n_avid == len(avid_at_higher_tsh) else ("none" if n_avid == 0
                                                                                      else "some")
    return {"categories": counts, "avid_at_higher_tsh": overall}
