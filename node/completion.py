"""When is a study complete? Pure rules over a snapshot of what has arrived.

Guessing this wrong is the commonest complaint about processing nodes (studies split, processed
twice, or stuck), so the rules use what the scanner states rather than timers where it can:
a PET series is complete when its instance count equals NumberOfSlices (0054,0081) and
ImageIndex (0054,1330) covers 1..N (PS3.3 C.8.9.4.1.9); other series, and PET series that do not
state their size, when nothing arrived for `stable_after_s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeriesSnapshot:
    series_uid: str
    modality: str
    frame_of_reference_uid: str
    instance_count: int
    last_received: float
    number_of_slices: int | None = None
    distinct_image_indices: int = 0
    min_image_index: int | None = None
    max_image_index: int | None = None
    series_description: str = ""


@dataclass(frozen=True)
class StudySnapshot:
    study_uid: str
    first_received: float
    last_received: float
    series: tuple[SeriesSnapshot, ...]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    pet_series: tuple[str, ...] = ()
    ct_series: dict[str, list[str]] = field(default_factory=dict)  # PET series -> CT series (same FoR)
    warnings: tuple[str, ...] = ()
    no_pet: bool = False


def pet_series_complete(s: SeriesSnapshot) -> bool | None:
    """True/False when the series states its size; None when it does not (use stability)."""
    n = s.number_of_slices
    if not n or n <= 1 or s.max_image_index is None:
        return None
    return (s.instance_count == n and s.distinct_image_indices == n
            and s.min_image_index == 1 and s.max_image_index == n)


def assess_study(study: StudySnapshot, now: float, stable_after_s: float, force_after_s: float) -> Readiness:
    def stable(last: float) -> bool:
        return now - last >= stable_after_s

    pets = [s for s in study.series if s.modality == "PT"]
    cts = [s for s in study.series if s.modality == "CT"]
    if not pets:
        if stable(study.last_received):
            return Readiness(False, "no PET series in the study: nothing to quantify", no_pet=True)
        return Readiness(False, "waiting: no PET series yet")

    waiting: list[str] = []
    for s in pets:
        complete = pet_series_complete(s)
        if complete is None:
            if not stable(s.last_received):
                waiting.append(f"PET series {s.series_uid} does not state NumberOfSlices/ImageIndex; "
                               f"waiting {stable_after_s:g} s without new instances")
        elif not complete:
            waiting.append(f"PET series {s.series_uid}: {s.instance_count} of {s.number_of_slices} instances "
                           f"(ImageIndex {s.distinct_image_indices} distinct, "
                           f"{s.min_image_index}..{s.max_image_index})")

    ct_for_pet: dict[str, list[str]] = {}
    for p in pets:
        for_uid = p.frame_of_reference_uid
        matching = [c for c in cts if for_uid and c.frame_of_reference_uid == for_uid]
        ct_for_pet[p.series_uid] = [c.series_uid for c in matching]
        for c in matching:
            if not stable(c.last_received):
                waiting.append(f"CT series {c.series_uid} still receiving")
        if not matching and not stable(study.last_received):
            waiting.append(f"no CT with the Frame of Reference of PET series {p.series_uid} yet; "
                           f"waiting {stable_after_s:g} s for one")

    pet_uids = tuple(p.series_uid for p in pets)
    if not waiting:
        return Readiness(True, "complete", pet_uids, ct_for_pet)
    if now - study.first_received >= force_after_s:
        return Readiness(True, f"forced after {force_after_s:g} s", pet_uids, ct_for_pet,
                         warnings=tuple(f"processed before complete: {w}" for w in waiting))
    return Readiness(False, "; ".join(waiting))
