"""SUV factors: the real-scan reference cases, and our own cases for every rule."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timedelta

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.quant.suv import SuvError, SuvSettings, compute_suv
from tests.conftest import data_file

REF = "suv-reference-headers"  # under tests/data (origin, licence: tests/data/SOURCE.md)
RP_KEYS = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
           "RadiopharmaceuticalStartDateTime")
I124 = 360806.4


def from_reference(item: dict) -> Dataset:
    ds = Dataset()
    rp = Dataset()
    for key, value in item.items():
        if key == "PhilipsPETPrivateGroup":
            if value:
                ds.add_new(0x70530010, "LO", "Philips PET Private Group")
                if "SUVScaleFactor" in value:
                    ds.add_new(0x70531000, "DS", str(value["SUVScaleFactor"]))
                if "ActivityConcentrationScaleFactor" in value:
                    ds.add_new(0x70531009, "DS", str(value["ActivityConcentrationScaleFactor"]))
        elif key in RP_KEYS:
            setattr(rp, key, str(value).strip() if isinstance(value, str) else value)
        else:
            setattr(ds, key, value)
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    return ds


def reference_cases() -> list[tuple[str, float]]:
    with open(data_file(REF, "expected_suvbw_factors.csv")) as fh:
        return [(row["case"], float(row["suvbw_factor_g_per_bq"])) for row in csv.DictReader(fh)]


@pytest.mark.parametrize(("case", "expected"), reference_cases())
def test_reference_scans(case: str, expected: float) -> None:
    items = json.loads(data_file(REF, f"{case}-instances.json").read_text())
    result = compute_suv([from_reference(i) for i in items])
    for factor in result.factors:
        assert factor == pytest.approx(expected, rel=1e-6), result.derivation


def pet(admin: datetime, scan: datetime, **extra: object) -> Dataset:
    """A minimal 124I BQML/START PET header."""
    ds = Dataset()
    ds.Units, ds.DecayCorrection = "BQML", "START"
    ds.CorrectedImage = ["ATTN", "DECY", "SCAT"]
    ds.PatientWeight, ds.PatientSize, ds.PatientSex = "70", "1.70", "F"
    ds.SeriesDate, ds.SeriesTime = scan.strftime("%Y%m%d"), scan.strftime("%H%M%S")
    ds.AcquisitionDate, ds.AcquisitionTime = scan.strftime("%Y%m%d"), scan.strftime("%H%M%S")
    ds.ActualFrameDuration, ds.FrameReferenceTime = 240000, 120000
    rp = Dataset()
    rp.RadionuclideTotalDose = "74000000"
    rp.RadionuclideHalfLife = str(I124)
    rp.RadiopharmaceuticalStartDateTime = admin.strftime("%Y%m%d%H%M%S")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "40937006", "SCT", "^124^Iodine"
    rp.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def textbook(weight_kg: float, dose_bq: float, elapsed_s: float, half_life_s: float = I124) -> float:
    return weight_kg * 1000 / (dose_bq * math.exp(-math.log(2) * elapsed_s / half_life_s))


@pytest.mark.parametrize("days", [1, 2, 4])
def test_i124_days_after_administration(days: int) -> None:
    admin = datetime(2026, 3, 2, 9, 0)
    scan = admin + timedelta(days=days, hours=1, minutes=30)
    result = compute_suv([pet(admin, scan)])
    elapsed = (scan - admin).total_seconds()
    assert result.factors[0] == pytest.approx(textbook(70, 74e6, elapsed), rel=1e-9)
    assert result.uptake_time_s == elapsed and result.nuclide == "124I"
    # Each day of 124I decay changes SUV by ~15 %: the date matters.
    assert compute_suv([pet(admin, scan)]).factors[0] / textbook(70, 74e6, elapsed - 86400) == pytest.approx(
        2 ** (86400 / I124), rel=1e-9)


def test_scan_crossing_midnight() -> None:
    admin = datetime(2026, 3, 2, 23, 50)
    scan = datetime(2026, 3, 3, 0, 20)  # 30 min later, next calendar day
    result = compute_suv([pet(admin, scan)])
    assert result.factors[0] == pytest.approx(textbook(70, 74e6, 1800), rel=1e-9)


def test_time_without_date_is_an_error_for_i124_unless_configured() -> None:
    admin = datetime(2026, 3, 2, 9, 0)
    scan = datetime(2026, 3, 3, 10, 0)
    ds = pet(admin, scan)
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    del rp.RadiopharmaceuticalStartDateTime
    rp.RadiopharmaceuticalStartTime = "090000"
    with pytest.raises(SuvError, match=r"RadiopharmaceuticalStartTime \(0018,1072\) 090000 has no date"):
        compute_suv([ds])
    result = compute_suv([ds], SuvSettings(time_only_administration_days_before=1))
    assert result.administration == admin
    assert result.factors[0] == pytest.approx(textbook(70, 74e6, 25 * 3600), rel=1e-9)


def test_time_without_date_short_lived_rolls_back_over_midnight() -> None:
    ds = pet(datetime(2026, 3, 2, 23, 30), datetime(2026, 3, 3, 0, 30))
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    del rp.RadiopharmaceuticalStartDateTime
    rp.RadiopharmaceuticalStartTime = "233000"
    rp.RadionuclideHalfLife = "6586.2"
    rp.RadionuclideCodeSequence[0].CodeValue = "77004003"
    result = compute_suv([ds])
    assert result.administration == datetime(2026, 3, 2, 23, 30)
    assert any("crosses midnight" in w for w in result.warnings)
    assert result.factors[0] == pytest.approx(textbook(70, 74e6, 3600, 6586.2), rel=1e-9)


def test_half_life_contradicting_the_nuclide_is_an_error() -> None:
    ds = pet(datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9))
    ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife = "6586.2"  # FDG protocol copied
    with pytest.raises(SuvError, match=r"RadionuclideHalfLife \(0018,1075\) 6586.2 s contradicts the nuclide code "
                                       r"\(124I, 360806 s\)"):
        compute_suv([ds])


def test_dose_in_mbq_and_weight_in_grams_are_converted_with_warnings() -> None:
    admin, scan = datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9)
    ds = pet(admin, scan, PatientWeight="70000")
    ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = "74"
    result = compute_suv([ds])
    assert result.factors[0] == pytest.approx(textbook(70, 74e6, 86400), rel=1e-9)
    assert any("MBq" in w for w in result.warnings) and any("grams" in w for w in result.warnings)


def test_missing_weight_dose_and_bad_units_name_the_attribute() -> None:
    admin, scan = datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9)
    with pytest.raises(SuvError, match=r"PatientWeight \(0010,1030\)"):
        compute_suv([pet(admin, scan, PatientWeight="0")])
    ds = pet(admin, scan)
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose
    with pytest.raises(SuvError, match=r"RadionuclideTotalDose \(0018,1074\)"):
        compute_suv([ds])
    with pytest.raises(SuvError, match=r"Units \(0054,1001\) is 'PROPCNTS'"):
        compute_suv([pet(admin, scan, Units="PROPCNTS")])
    with pytest.raises(SuvError, match=r"CorrectedImage \(0028,0051\) lacks DECY:"):
        compute_suv([pet(admin, scan, CorrectedImage="ATTN")])


def test_ge_post_processed_uses_private_scan_time() -> None:
    admin = datetime(2026, 3, 2, 9)
    scan = datetime(2026, 3, 3, 10)
    ds = pet(admin, scan, SeriesTime="113000")  # series made after the acquisition
    ds.add_new(0x00090010, "LO", "GEMS_PETD_01")
    ds.add_new(0x0009100D, "DT", scan.strftime("%Y%m%d%H%M%S"))
    result = compute_suv([ds])
    assert result.reference == scan and "GE private" in " ".join(result.derivation)
    assert result.factors[0] == pytest.approx(textbook(70, 74e6, 25 * 3600), rel=1e-9)


def test_post_processed_without_ge_tag_back_computes_from_frame() -> None:
    admin = datetime(2026, 3, 2, 9)
    start = datetime(2026, 3, 3, 10)
    bed_start = start + timedelta(minutes=8)
    lam = math.log(2) / I124
    t = 240.0
    t_ave = math.log(lam * t / (1 - math.exp(-lam * t))) / lam
    ds = pet(admin, start, SeriesTime="113000", AcquisitionTime=bed_start.strftime("%H%M%S"),
             FrameReferenceTime=(480 + t_ave) * 1000)
    result = compute_suv([ds])
    assert abs((result.reference - start).total_seconds()) < 1e-3


def test_decay_correction_admin_and_none() -> None:
    admin, scan = datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9)
    assert compute_suv([pet(admin, scan, DecayCorrection="ADMIN")]).factors[0] == pytest.approx(70e3 / 74e6)
    ds = pet(admin, scan, DecayCorrection="NONE", CorrectedImage=["ATTN"])
    lam = math.log(2) / I124
    expected = 70e3 / 74e6 * lam * 240 / (1 - math.exp(-lam * 240)) * math.exp(lam * 86400)
    assert compute_suv([ds]).factors[0] == pytest.approx(expected, rel=1e-9)


def test_philips_cnts_with_and_without_creator() -> None:
    admin, scan = datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9)
    ds = pet(admin, scan, Units="CNTS")
    ds.add_new(0x70530010, "LO", "Philips PET Private Group")
    ds.add_new(0x70531009, "DS", "0.0357")
    result = compute_suv([ds])
    assert result.factors[0] == pytest.approx(0.0357 * textbook(70, 74e6, 86400), rel=1e-9)
    ds.add_new(0x70531000, "DS", "0.00123")
    assert compute_suv([ds]).factors[0] == pytest.approx(0.00123)
    del ds[0x70530010]
    result = compute_suv([ds])
    assert result.factors[0] == pytest.approx(0.00123)
    assert any("without their creator" in w for w in result.warnings)
    bare = pet(admin, scan, Units="CNTS")
    with pytest.raises(SuvError, match=r"Units CNTS without a usable Philips"):
        compute_suv([bare])


def test_philips_private_factors_ignored_with_bqml() -> None:
    admin, scan = datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9)
    ds = pet(admin, scan)
    ds.add_new(0x70530010, "LO", "Philips PET Private Group")
    ds.add_new(0x70531000, "DS", "0.5")
    assert compute_suv([ds]).factors[0] == pytest.approx(textbook(70, 74e6, 86400), rel=1e-9)


def test_gml_cm2ml_and_other_normalisations() -> None:
    admin, scan = datetime(2026, 3, 2, 9), datetime(2026, 3, 3, 9)
    assert compute_suv([pet(admin, scan, Units="GML")]).factors == (1.0,)
    with pytest.raises(SuvError, match="SUVType"):  # GML of other declared types: tests/test_suv_types.py
        compute_suv([pet(admin, scan, Units="GML", SUVType="NOTATYPE")])
    bsa_cm2 = 0.007184 * 70**0.425 * 170**0.725 * 1e4
    assert compute_suv([pet(admin, scan, Units="CM2ML")]).factors[0] == pytest.approx(70e3 / bsa_cm2)
    result = compute_suv([pet(admin, scan)])
    james = 1.07 * 70 - 148 * (70 / 170) ** 2
    assert result.other_normalisations["LBM_JAMES128"] == pytest.approx(james / 70)
    janma = 9270 * 70 / (8780 + 244 * 70 / 1.7**2)
    assert result.other_normalisations["LBM_JANMAHASATIAN"] == pytest.approx(janma / 70)


def test_real_siemens_slices_parse() -> None:
    for name in ("1.dcm", "2.dcm"):
        ds = pydicom.dcmread(data_file("real-pet-slices", name))
        result = compute_suv([ds])  # 18F with a time-only administration: QIBA date assumption
        assert result.factors[0] > 0 and any("assumed" in w for w in result.warnings)
