"""The TSH comparison and dosimetry at their edges, over results documents built by hand (no images,
no registration): TSH order against time order, trial categories incl. CT-found lesions (the
cross-team contract: `detection`, `iodine_avid`), change limits from repeatability, uptake times,
rising retention, one-time-point lesions and dose uncertainty."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pydicom
import pytest

from node.compare.dosimetry import I124_HALF_LIFE_H, RISING, decay_correct_percent, lesion_dose, rising_tia_h
from node.compare.matching import (
    GAINED,
    LOST,
    LOST_NON_AVID,
    NEW,
    ONLY_LOWER,
    REDUCED,
    REFRACTORY,
    RESTORED,
    STABLE,
    classify_pair,
)
from node.compare.repeatability import FIXED, ChangeLimits, ChangeLimitSettings, judge_change, lesion_noise, sampling_sd
from node.compare.study import ComparisonSettings, ScanView, compare_scans, dosimetry_section, pair_scans
from node.quant.volume import Volume

SUV = Volume(np.zeros((4, 4, 4), np.float32), (-300.0, -300.0, -700.0), (4.0, 4.0, 4.0),
             tuple(np.eye(3).ravel()))


def lesion(n: int, centre: list[float], suv: float, lbr: float, volume_ml: float = 4.0, detection: str = "pet",
           **extra) -> dict:
    les = {"id": n, "label": "metastasis", "site": "lung", "centroid_mm": centre, "volume_ml": volume_ml,
           "suv_max": suv, "suv_peak": suv * 0.8, "suv_mean": suv * 0.6, "percent_injected_activity": 0.01 * suv,
           "lesion_to_background": lbr, "iodine_avid": lbr >= 3, "tracking_uid": f"2.25.{n}"}
    if detection == "ct":  # the contract of issue 15: found on CT, measured on PET at its site
        les.update({"detection": "ct", "iodine_avid": False, "ct_diameter_mm": 2 * (3 * volume_ml * 1000 /
                                                                                  (4 * math.pi)) ** (1 / 3)})
    les.update(extra)
    return les


def view(lesions: list[dict], day: int, tsh: float | None, uptake_h: float = 24.0, injected_day: int | None = None,
         activity_bq: float = 74e6) -> ScanView:
    injection = datetime(2026, 3, 1, 9) + timedelta(days=(injected_day if injected_day is not None else day))
    reference = injection + timedelta(hours=uptake_h)
    doc = {"study_instance_uid": f"2.25.{day}{int(uptake_h)}", "accession_number": f"A{day}",
           "reference_datetime": reference.isoformat(), "injection_datetime": injection.isoformat(),
           "uptake_time_h": uptake_h, "injected_activity_bq": activity_bq, "reference_soft_tissue_suv": 0.5,
           "lesions": lesions}
    header = pydicom.Dataset()
    if tsh is not None:
        header.AdditionalPatientHistory = f"TSH={tsh:g}"
    return ScanView(doc, header)


def compare(prior: ScanView, current: ScanView, settings: ComparisonSettings | None = None) -> dict:
    return compare_scans(SUV, current, prior, pair_scans(prior, current, 15.0), settings)


def by_current(section: dict) -> dict[int, dict]:
    return {r["current_id"]: r for r in section["lesions"] if r["current_id"] is not None}


def test_higher_tsh_first_in_time_is_compared_from_the_lower_tsh_scan() -> None:
    """Scan 1 at TSH 120, scan 2 (later) at TSH 30: changes and categories run 30 -> 120."""
    prior = view([lesion(1, [0.0, 0, -300], 10.0, 12), lesion(2, [80.0, 0, -300], 6.0, 8),
                  lesion(3, [-80.0, 0, -300], 1.2, 1.5), lesion(4, [0.0, 80, -300], 9.0, 9)], 1, tsh=120)
    current = view([lesion(1, [0.0, 0, -300], 5.0, 6), lesion(2, [80.0, 0, -300], 1.1, 1.4),
                    lesion(3, [-80.0, 0, -300], 7.0, 9), lesion(5, [0.0, -80, -300], 8.0, 9)], 15, tsh=30)
    section = compare(prior, current)
    assert section["direction"]["from"] == "current" and section["direction"]["basis"] == "TSH"
    assert "from the current scan (TSH 30) to the prior scan (TSH 120)" in section["summary"]["direction"]
    assert section["summary"]["higher_tsh_scan"] == "prior"
    rows = by_current(section)
    # 5 -> 10 from the lower to the higher TSH: gained (in time order it would read "reduced").
    assert rows[1]["category"] == GAINED and rows[1]["tsh_change"]["suv_max"] == [5.0, 10.0]
    assert rows[1]["relative_change_suv_max"] == pytest.approx(-0.5)  # time-ordered value kept as before
    assert rows[2]["category"] == RESTORED  # avid only at the higher TSH (the earlier scan here)
    assert rows[3]["category"] == ONLY_LOWER
    assert rows[5]["category"] == NEW  # absent at the earlier scan: a question of time, not TSH
    gone = next(r for r in section["lesions"] if r["current_id"] is None)
    assert gone["prior_id"] == 4 and gone["category"] == LOST
    assert section["avidity_restored"] == [{"prior_id": 2, "current_id": 2}]
    assert sorted(section["refractory_candidates"]) == [3, 4]
    assert not any("TSH" in w or "uptake" in w for w in section["warnings"])


def test_unknown_tsh_falls_back_to_time_order_and_says_so() -> None:
    prior = view([lesion(1, [0.0, 0, -300], 10.0, 12)], 1, tsh=None)
    current = view([lesion(1, [0.0, 0, -300], 10.5, 12)], 15, tsh=130)
    section = compare(prior, current)
    assert section["direction"]["flagged"] and section["direction"]["basis"] == "time order (TSH unknown)"
    assert section["direction"]["from"] == "prior"
    assert any("TSH unknown" in w for w in section["warnings"])
    assert section["summary"]["higher_tsh_scan"].startswith("unknown")


def test_refractory_lesion_seen_on_both_scans_without_uptake() -> None:
    """A CT-found nodule without uptake at both TSH levels is refractory; so is a PET-found focus
    below the avidity rule at both; a non-avid lesion gone later is lost but no refractory candidate."""
    prior = view([lesion(1, [0.0, 0, -300], 0.6, 1.1, volume_ml=1.0, detection="ct"),
                  lesion(2, [80.0, 0, -300], 1.3, 2.0), lesion(3, [-80.0, 0, -300], 1.2, 2.0)], 1, tsh=28)
    current = view([lesion(7, [1.0, 0, -300], 0.7, 1.2, volume_ml=1.1, detection="ct"),
                    lesion(8, [80.0, 1, -300], 1.4, 2.2)], 15, tsh=140)
    section = compare(prior, current)
    rows = by_current(section)
    assert rows[7]["category"] == REFRACTORY and rows[7]["detection"] == ["ct", "ct"]
    assert rows[8]["category"] == REFRACTORY and rows[8]["detection"] == ["pet", "pet"]
    assert section["refractory"] == [{"prior_id": 1, "current_id": 7, "detection": ["ct", "ct"]},
                                     {"prior_id": 2, "current_id": 8, "detection": ["pet", "pet"]}]
    gone = next(r for r in section["lesions"] if r["current_id"] is None)
    assert gone["category"] == LOST_NON_AVID and section["refractory_candidates"] == []
    assert section["summary"]["avid_at_higher_tsh"] == "none"


def test_avidity_is_one_rule_for_both_scans_and_reported() -> None:
    """A focus the scan itself flagged avid (another rule at quantification) is judged by the
    comparison's rule: LBR 3.5 is avid at lbr_min 3, not at lbr_min 4."""
    from node.compare.matching import AvidityRule

    prior = view([lesion(1, [0.0, 0, -300], 5.0, 3.5)], 1, tsh=30)
    current = view([lesion(1, [0.0, 0, -300], 9.0, 9.0)], 15, tsh=120)
    assert by_current(compare(prior, current))[1]["category"] in (GAINED, STABLE)
    strict = ComparisonSettings(avidity=AvidityRule(lbr_min=4.0))
    section = compare(prior, current, strict)
    assert by_current(section)[1]["category"] == RESTORED
    assert section["avidity_rule"]["rule"].startswith("LBR >= 4")


def test_categories_are_pure_functions_of_presence_and_avidity() -> None:
    assert classify_pair(True, True, True, "gained") == GAINED
    assert classify_pair(True, True, False, "reduced") == REDUCED
    assert classify_pair(False, True, True) == RESTORED
    assert classify_pair(True, False, True) == ONLY_LOWER
    assert classify_pair(False, False, True) == REFRACTORY
    assert classify_pair(True, None, True) == LOST  # lower TSH earlier: gone since an avid focus
    assert classify_pair(None, True, False) == LOST  # higher TSH earlier and avid, absent later
    assert classify_pair(False, None, True) == LOST_NON_AVID
    assert classify_pair(None, True, True) == NEW
    with pytest.raises(ValueError):
        classify_pair(None, None, True)


def test_limits_are_wider_for_small_lesions_and_fixed_limits_stay_available() -> None:
    limits = ChangeLimits()
    big = lesion_noise(lesion(1, [0.0, 0, 0], 12.0, 10, volume_ml=14.0), None, None, 0.5, limits)
    small = lesion_noise(lesion(2, [0.0, 0, 0], 2.5, 4, volume_ml=0.3), None, None, 0.5, limits)
    assert small.statistical > big.statistical and small.sampling > big.sampling
    assert big.source == "assumed (no image)"
    wide = judge_change(2.5, 3.2, small, small, limits)
    narrow = judge_change(12.0, 15.4, big, big, limits)
    assert wide.limits[1] > narrow.limits[1] > 0.25  # the fixed +25 % is inside both
    assert wide.verdict == "stable"  # +28 % in a sub-centimetre lesion: within measurement error
    assert judge_change(12.0, 20.0, big, big, limits).verdict == "gained"
    fixed = ChangeLimits(method=FIXED)
    assert judge_change(2.5, 3.2, small, small, fixed).verdict == "gained"
    assert judge_change(2.5, 3.2, small, small, fixed).limits == pytest.approx((-0.25, 0.25))
    # Sampling of the peak: ~0 for a large lesion on fine voxels, grows with voxel size.
    assert sampling_sd(16.0, 7.0, (2.0, 2.0, 2.0)) < 0.01 < sampling_sd(3.0, 7.0, (4.0, 4.0, 4.0))


def test_noise_measured_in_the_image_sets_the_limits() -> None:
    """Noise measured around the lesion: a count-poor (noisier) scan gives wider limits."""
    rng = np.random.default_rng(3)
    spacing = 4.0

    def scan(cov: float) -> Volume:
        arr = 1.0 + cov * rng.standard_normal((40, 40, 40)).astype(np.float32)
        return Volume(arr, (-80.0, -80.0, -80.0), (spacing,) * 3, tuple(np.eye(3).ravel()))

    les = lesion(1, [0.0, 0, 0], 8.0, 8, volume_ml=4.0)
    limits = ChangeLimits()
    quiet, noisy = (lesion_noise(les, scan(c), None, 1.0, limits) for c in (0.05, 0.30))
    assert quiet.source == noisy.source == "image"
    assert noisy.statistical == pytest.approx(0.30 / math.sqrt(8.0), rel=0.2)  # k sqrt(SUVmax) / SUVmax
    assert judge_change(8, 9, noisy, noisy, limits).limits[1] > judge_change(8, 9, quiet, quiet, limits).limits[1]


def test_24h_against_48h_without_true_change_stays_within_repeatability() -> None:
    """Scan 2 at 48 h instead of 24 h: washout lowers every SUVmax by 11-13 % (no true change). The
    node warns, widens the limits by what washout can do, and calls nothing gained or reduced; a real
    halving still counts as reduced. With the second administration also imaged at 24 h, the
    matched-uptake value is used instead."""
    from node.compare.study import relate_scans

    sizes = [(14.0, 12.0), (4.0, 9.0), (1.0, 6.0), (0.3, 3.5)]  # (ml, SUVmax at 24 h)
    prior = view([lesion(n, [40.0 * n, 0, -300], suv, 10, volume_ml=v) for n, (v, suv) in enumerate(sizes, 1)],
                 1, tsh=30)
    shift = [0.88, 0.89, 0.87, 0.88]
    current = view([lesion(n, [40.0 * n, 0, -300], suv * f, 10, volume_ml=v)
                    for n, ((v, suv), f) in enumerate(zip(sizes, shift, strict=True), 1)], 15, tsh=120, uptake_h=48)
    # What a narrow fixed limit does when the uptake times are not looked at:
    blind = ComparisonSettings(gained=0.1, reduced=-0.1,
                               change_limits=ChangeLimitSettings(method=FIXED, uptake_time_tolerance=10.0))
    assert blind.limits == ChangeLimits(method=FIXED, gained=0.1, reduced=-0.1, uptake_time_tolerance=10.0)
    assert all(r["category"] == REDUCED for r in compare(prior, current, blind)["lesions"])
    section = compare(prior, current)
    assert section["uptake_times_differ"] and any("uptake times differ" in w for w in section["warnings"])
    assert {r["category"] for r in section["lesions"]} == {STABLE}
    halved = view([lesion(1, [40.0, 0, -300], 12.0 * 0.88 * 0.45, 10, volume_ml=14.0)], 15, tsh=120, uptake_h=48)
    assert compare(prior, halved)["lesions"][0]["category"] == REDUCED
    # The second administration imaged at 24 h and 48 h: the 48 h scan is compared at 24 h.
    early = view([lesion(n, [40.0 * n, 0, -300], suv, 10, volume_ml=v) for n, (v, suv) in enumerate(sizes, 1)],
                 15, tsh=120, uptake_h=24, injected_day=15)
    late = view(current.doc["lesions"], 15, tsh=120, uptake_h=48, injected_day=15)
    sections, _, _ = relate_scans(SUV, late, [prior, early])
    rows = by_current(sections["comparison"])
    assert all(r["tsh_change"]["matched_uptake"]["uptake_time_h"] == 24.0 for r in rows.values())
    assert all(r["tsh_change"]["relative_change"] == pytest.approx(0.0, abs=1e-3) for r in rows.values())
    assert all(r["tsh_change"]["washout_allowance_log"] == [0.0, 0.0] for r in rows.values())
    assert "dosimetry" in sections


def test_residual_124i_of_the_earlier_administration_is_reported() -> None:
    prior = view([lesion(1, [0.0, 0, -300], 10.0, 12)], 1, tsh=30, activity_bq=74e6)
    current = view([lesion(1, [0.0, 0, -300], 10.0, 12)], 15, tsh=120, activity_bq=74e6)
    residual = compare(prior, current)["residual_from_earlier_administration"]
    elapsed_h = 14 * 24 + 24
    assert residual["residual_124i_mbq_upper_bound"] == pytest.approx(74 * 2 ** (-elapsed_h / I124_HALF_LIFE_H),
                                                                      rel=1e-3)
    assert residual["fraction_of_own_activity_at_scan"] == pytest.approx(2 ** (-14 * 24 / I124_HALF_LIFE_H), rel=1e-3)


def test_rising_retention_gives_a_bounded_dose_with_a_physical_tail() -> None:
    """0.10 then 0.12 %IA (as measured) at 24 and 96 h: no negative washout; the dose is the
    trapezoid plus physical 131I decay after 96 h, never more than if all 124I stayed for ever."""
    r = [decay_correct_percent(0.10, 24), decay_correct_percent(0.12, 96)]
    dose = lesion_dose([24, 96], r, volume_ml=1.0)
    assert dose.model == RISING and dose.biological_half_life_h == math.inf
    lam = math.log(2) / (8.0207 * 24)
    assert dose.tia_h == pytest.approx(rising_tia_h([24, 96], [v / 100 for v in r]))
    assert dose.tia_h <= max(r) / 100 / lam  # all of it staying, decaying physically: the ceiling
    assert dose.gy_per_gbq < 97.0 / 1.4  # the runaway value: far below it (63 Gy/GBq)
    assert dose.effective_half_life_131_h == pytest.approx(8.0207 * 24)
    # The rise inside an uptake + washout series (last point higher) is treated the same way.
    assert lesion_dose([4, 24, 96], [0.05, 0.08, 0.09], volume_ml=1.0).model == RISING
    # Closed form against a numerical integral of the same piecewise-linear curve.
    t = np.linspace(0, 96, 20001)
    curve = np.interp(t, [0, 24, 96], [0, r[0] / 100, r[1] / 100]) * np.exp(-lam * t)
    tail = r[1] / 100 * math.exp(-lam * 96) / lam
    assert rising_tia_h([24, 96], [v / 100 for v in r]) == pytest.approx(np.trapezoid(curve, t) + tail, rel=1e-6)


def _dose_views(lesions_by_time: list[list[dict]], times: list[float]) -> tuple[ScanView, list]:
    views = [view(les, 1, tsh=120, uptake_h=t, injected_day=1) for les, t in zip(lesions_by_time, times, strict=True)]
    return views[-1], [(v, pair_scans(v, views[-1], 15.0)) for v in views[:-1]]


def test_one_time_point_lesion_gets_no_dose_and_uncertainty_is_wider_for_small_lesions() -> None:
    def les(n, x, volume, pia, diameter=None, resolved=True):
        fit = {"diameter_mm": diameter, "volume_ml": math.pi / 6 * diameter**3 / 1000, "fwhm_mm": 7.0,
               "resolved": resolved} if diameter else None
        return lesion(n, [x, 0.0, -300], 8.0, 8, volume_ml=volume, percent_injected_activity_recovered=pia,
                      sphere_fit=fit)

    early = [les(1, 0.0, 20.0, 0.30, 32.0), les(2, 60.0, 0.5, 0.02, 9.0, resolved=False)]
    late = [les(1, 0.0, 20.0, 0.20, 32.0), les(2, 60.0, 0.5, 0.013, 9.0, resolved=False),
            les(3, 120.0, 2.0, 0.05, 16.0)]  # lesion 3 only at the late scan
    current, priors = _dose_views([early, late], [24.0, 96.0])
    section = dosimetry_section(current, priors)
    rows = {r["current_id"]: r for r in section["lesions"]}
    assert "gy_per_gbq" not in rows[3] and "one time point" in rows[3]["error"]
    big, small = rows[1], rows[2]
    for row in (big, small):
        lo, hi = row["gy_per_gbq_ci95"]
        assert lo < row["gy_per_gbq"] < hi and row["gy_per_gbq_sd"] > 0
        assert set(row["uncertainty"]) >= {"counts_and_fit", "mass", "calibration"}
        assert row["predicted_dose_gy_ci95"]["3.7_gbq"][0] < row["predicted_dose_gy"]["3.7_gbq"]
    assert small["uncertainty"]["relative_sd"] > 2 * big["uncertainty"]["relative_sd"]
    assert small["uncertainty"]["mass"] > big["uncertainty"]["mass"]


def test_threshold_reached_only_when_the_lower_bound_reaches_it() -> None:
    from node.compare.study import threshold_decision

    assert threshold_decision([21.0, 40.0], 20.0) == "reaches"
    assert threshold_decision([12.0, 35.0], 20.0) == "uncertain"
    assert threshold_decision([5.0, 19.0], 20.0) == "below"
    assert threshold_decision(None, 20.0) == "uncertain"
    # A lesion whose point estimate passes 20 Gy at 3.7 GBq but whose interval spans it: uncertain.
    early = [lesion(1, [0.0, 0, -300], 8.0, 8, volume_ml=1.0, percent_injected_activity_recovered=0.045)]
    late = [lesion(1, [0.0, 0, -300], 8.0, 8, volume_ml=1.0, percent_injected_activity_recovered=0.028)]
    current, priors = _dose_views([early, late], [24.0, 96.0])
    row = dosimetry_section(current, priors)["lesions"][0]
    gy = row["predicted_dose_gy"]["3.7_gbq"]
    assert gy > 20 and row["treat_threshold"] == "uncertain" and row["reaches_treat_threshold"] is False, row


def test_every_comparison_and_dose_concept_is_a_valid_sr_code() -> None:
    """Code meanings of the SR's private concepts fit DICOM (LO, at most 64 characters): a longer one
    fails the whole job when the SR is built."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    from node.encode import codes as c

    concepts = [v for v in vars(c).values() if isinstance(v, Code)]
    concepts += [*c.CHANGE_CATEGORIES.values(), *c.DECISIONS.values(), c.predicted_dose(11.1),
                 c.predicted_dose_sd(11.1)]
    for code in concepts:
        hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning)
    from node.compare.matching import CATEGORIES
    assert set(CATEGORIES) <= set(c.CHANGE_CATEGORIES)
