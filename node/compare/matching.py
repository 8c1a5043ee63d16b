"""Match lesions of two scans after mapping scan 1 into scan 2, and classify each change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

GAINED, STABLE, REDUCED, LOST, NEW = "gained uptake", "stable", "reduced uptake", "lost (refractory candidate)", "new"
RELABELLED = "relabelled (physiological in the other scan)"


@dataclass(frozen=True)
class ChangeThresholds:
    """Relative SUVmax change that counts as gained / reduced (configurable; documented defaults)."""

    gained: float = 0.25
    reduced: float = -0.25
    match_gate_mm: float = 15.0


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


def classify_change(suv1: float | None, suv2: float | None, avid1: bool, avid2: bool,
                    thresholds: ChangeThresholds) -> str:
    """Per-lesion category between scan 1 and scan 2."""
    if suv1 is None or (not avid1 and avid2 and suv1 is None):
        return NEW
    if avid1 and not avid2:
        return LOST
    if suv2 is None:
        return LOST
    change = (suv2 - suv1) / suv1 if suv1 > 0 else float("inf")
    if change >= thresholds.gained:
        return GAINED
    if change <= thresholds.reduced:
        return REDUCED
    return STABLE


def patient_summary(categories: Sequence[str], avid_at_higher_tsh: Sequence[bool]) -> dict[str, object]:
    counts = {c: 0 for c in (GAINED, STABLE, REDUCED, LOST, NEW, RELABELLED)}
    for c in categories:
        counts[c] += 1
    n_avid = sum(avid_at_higher_tsh)
    overall = "all" if avid_at_higher_tsh and n_avid == len(avid_at_higher_tsh) else ("none" if n_avid == 0
                                                                                      else "some")
    return {"categories": counts, "avid_at_higher_tsh": overall}
