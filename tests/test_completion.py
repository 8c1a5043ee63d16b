"""Study completion rules (pure)."""

from __future__ import annotations

from node.completion import SeriesSnapshot, StudySnapshot, assess_study

FOR = "1.2.3.4"


def pet(n_arrived: int, n_slices: int | None = 10, indices: tuple[int, int, int] | None = None,
        last: float = 100.0, uid: str = "1.1", for_uid: str = FOR) -> SeriesSnapshot:
    d, lo, hi = indices if indices else (n_arrived, 1 if n_arrived else None, n_arrived or None)
    return SeriesSnapshot(uid, "PT", for_uid, n_arrived, last, n_slices, d, lo, hi)


def ct(last: float = 100.0, uid: str = "2.1", for_uid: str = FOR) -> SeriesSnapshot:
    return SeriesSnapshot(uid, "CT", for_uid, 50, last)


def study(*series: SeriesSnapshot, first: float = 0.0) -> StudySnapshot:
    return StudySnapshot("9.9", first, max(s.last_received for s in series), series)


def test_complete_pet_and_stable_ct_is_ready_at_once() -> None:
    verdict = assess_study(study(pet(10), ct(last=50)), now=100.5, stable_after_s=30, force_after_s=600)
    assert verdict.ready and verdict.pet_series == ("1.1",) and verdict.ct_series == {"1.1": ["2.1"]}
    assert verdict.warnings == ()


def test_pet_count_short_waits_even_when_quiet() -> None:
    verdict = assess_study(study(pet(9), ct(last=50)), now=500, stable_after_s=30, force_after_s=600)
    assert not verdict.ready and "9 of 10 instances" in verdict.reason


def test_pet_with_a_duplicate_index_is_not_complete() -> None:
    # 10 instances, but ImageIndex 1..9 with one repeated: one slice is missing.
    verdict = assess_study(study(pet(10, indices=(9, 1, 9)), ct(last=50)), now=500, stable_after_s=30,
                           force_after_s=600)
    assert not verdict.ready and "ImageIndex 9 distinct" in verdict.reason


def test_ct_still_receiving_holds_the_study() -> None:
    verdict = assess_study(study(pet(10), ct(last=95)), now=100, stable_after_s=30, force_after_s=600)
    assert not verdict.ready and "CT series 2.1 still receiving" in verdict.reason
    assert assess_study(study(pet(10), ct(last=95)), now=125.1, stable_after_s=30, force_after_s=600).ready


def test_pet_without_size_waits_for_stability() -> None:
    s = study(pet(10, n_slices=None, indices=(0, None, None), last=100), ct(last=50))
    assert not assess_study(s, now=110, stable_after_s=30, force_after_s=600).ready
    assert assess_study(s, now=131, stable_after_s=30, force_after_s=600).ready


def test_pet_only_study_waits_for_a_ct_then_goes_alone() -> None:
    s = study(pet(10, last=100))
    waiting = assess_study(s, now=110, stable_after_s=30, force_after_s=600)
    assert not waiting.ready and "no CT" in waiting.reason
    alone = assess_study(s, now=131, stable_after_s=30, force_after_s=600)
    assert alone.ready and alone.ct_series == {"1.1": []}


def test_ct_of_another_frame_of_reference_is_not_paired() -> None:
    verdict = assess_study(study(pet(10), ct(last=50, for_uid="7.7")), now=200, stable_after_s=30, force_after_s=600)
    assert verdict.ready and verdict.ct_series == {"1.1": []}


def test_forced_after_timeout_with_warning() -> None:
    verdict = assess_study(study(pet(5), ct(last=50), first=0), now=601, stable_after_s=30, force_after_s=600)
    assert verdict.ready and verdict.reason == "forced after 600 s"
    assert len(verdict.warnings) == 1 and "5 of 10 instances" in verdict.warnings[0]


def test_study_without_pet() -> None:
    s = study(ct(last=100))
    assert not assess_study(s, now=110, stable_after_s=30, force_after_s=600).no_pet
    verdict = assess_study(s, now=131, stable_after_s=30, force_after_s=600)
    assert verdict.no_pet and not verdict.ready


def test_all_pet_series_must_be_complete() -> None:
    s = study(pet(10, uid="1.1"), pet(3, n_slices=4, uid="1.2"), ct(last=50))
    assert not assess_study(s, now=500, stable_after_s=30, force_after_s=600).ready
    s = study(pet(10, uid="1.1"), pet(4, n_slices=4, uid="1.2"), ct(last=50))
    verdict = assess_study(s, now=500, stable_after_s=30, force_after_s=600)
    assert verdict.ready and verdict.pet_series == ("1.1", "1.2")
