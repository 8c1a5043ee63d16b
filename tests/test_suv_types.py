"""SUV types (bw, lbm-james, sul-janmahasatian, bsa, ibw), GML series of any declared SUV Type, and
the scan time of ADMIN / NONE / GML series. Expectations are computed here from the published
formulas (James 1976; Janmahasatian 2005; Du Bois 1916; Sugawara 1999), not by the code under test."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from node.quant.suv import SuvError, compute_suv
from node.quant.suvtypes import ratio_to_bw

I124 = 360806.4
ADMIN = datetime(2026, 3, 2, 9, 0)
SCAN = ADMIN + timedelta(hours=96, minutes=20)


def pet(**extra: object) -> Dataset:
    """A minimal 124I PET header: 80 kg, 1.75 m, male, 74 MBq, scanned 96 h 20 min after administration."""
    ds = Dataset()
    ds.Units, ds.DecayCorrection = "BQML", "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.PatientWeight, ds.PatientSize, ds.PatientSex = "80", "1.75", "M"
    ds.SeriesDate, ds.SeriesTime = SCAN.strftime("%Y%m%d"), SCAN.strftime("%H%M%S")
    ds.AcquisitionDate, ds.AcquisitionTime = SCAN.strftime("%Y%m%d"), SCAN.strftime("%H%M%S")
    ds.ActualFrameDuration, ds.FrameReferenceTime = 600000, 300000
    rp = Dataset()
    rp.RadionuclideTotalDose = "74000000"
    rp.RadionuclideHalfLife = str(I124)
    rp.RadiopharmaceuticalStartDateTime = ADMIN.strftime("%Y%m%d%H%M%S")
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


W, H_CM, H_M = 80.0, 175.0, 1.75
# Normalisers (kg, or m² for BSA) of this male patient, written out from the papers' formulas.
EXPECTED_KG = {
    "bw": W,
    "lbm-james": 1.10 * W - 128 * (W / H_CM) ** 2,
    "sul-janmahasatian": 9270 * W / (6680 + 216 * W / H_M**2),
    "ibw": 48.0 + 1.06 * (H_CM - 152),
}
BSA_M2 = 0.007184 * W**0.425 * H_CM**0.725


@pytest.mark.parametrize("decay_correction", ["ADMIN", "NONE"])
def test_admin_and_none_report_the_true_uptake_time(decay_correction: str) -> None:
    corrected = ["ATTN"] if decay_correction == "NONE" else ["ATTN", "DECY"]
    calc = compute_suv([pet(DecayCorrection=decay_correction, CorrectedImage=corrected)])
    assert calc.reference == SCAN
    assert calc.uptake_time_s == pytest.approx((SCAN - ADMIN).total_seconds())
    # Activity at the scan: the administered activity decayed over the true uptake time.
    assert calc.decayed_activity_bq == pytest.approx(74e6 * 2 ** (-(SCAN - ADMIN).total_seconds() / I124))
    # The SUV itself is unchanged by where the times come from: ADMIN values are already decayed to
    # administration (SUV = C_admin x W / D).
    if decay_correction == "ADMIN":
        assert calc.factors[0] == pytest.approx(80e3 / 74e6)


def test_admin_series_of_two_scans_keep_their_spacing() -> None:
    """Dosimetry needs two scans of one administration to be apart in time, also with ADMIN."""
    early = SCAN - timedelta(hours=72)
    first = compute_suv([pet(DecayCorrection="ADMIN", SeriesDate=early.strftime("%Y%m%d"),
                             SeriesTime=early.strftime("%H%M%S"), AcquisitionDate=early.strftime("%Y%m%d"),
                             AcquisitionTime=early.strftime("%H%M%S"))])
    second = compute_suv([pet(DecayCorrection="ADMIN")])
    assert (second.uptake_time_s - first.uptake_time_s) / 3600 == pytest.approx(72.0)


@pytest.mark.parametrize("suv_type", ["bw", "lbm-james", "sul-janmahasatian", "ibw"])
def test_type_ratio_from_the_formulas(suv_type: str) -> None:
    calc = compute_suv([pet()])
    assert ratio_to_bw(calc.patient, suv_type) == pytest.approx(EXPECTED_KG[suv_type] / W, rel=1e-12)


def test_bsa_ratio_is_cm2_per_g() -> None:
    calc = compute_suv([pet()])
    assert ratio_to_bw(calc.patient, "bsa") == pytest.approx(BSA_M2 * 1e4 / (W * 1000), rel=1e-12)


@pytest.mark.parametrize(("dicom_type", "ours"), [("LBMJAMES128", "lbm-james"), ("LBMJANMA", "sul-janmahasatian"),
                                                  ("IBW", "ibw"), ("BW", "bw"), ("", "bw")])
def test_gml_series_of_any_declared_type_is_converted_to_suvbw(dicom_type: str, ours: str) -> None:
    calc = compute_suv([pet(Units="GML", SUVType=dicom_type)])
    # value x factor = SUVbw: a GML value SUV_x = SUVbw x N_x / W.
    assert calc.factors[0] == pytest.approx(W / EXPECTED_KG[ours], rel=1e-12)
    assert calc.uptake_time_s == pytest.approx((SCAN - ADMIN).total_seconds())


def test_gml_bsa_and_plain_lbm() -> None:
    assert compute_suv([pet(Units="GML", SUVType="BSA")]).factors[0] == pytest.approx(W * 1000 / (BSA_M2 * 1e4))
    calc = compute_suv([pet(Units="GML", SUVType="LBM")])
    assert calc.factors[0] == pytest.approx(W / EXPECTED_KG["lbm-james"])
    assert any("James-128" in w for w in calc.warnings)


def test_gml_of_lbm_without_height_names_the_attribute() -> None:
    with pytest.raises(SuvError, match=r"PatientSize \(0010,1020\)"):
        compute_suv([pet(Units="GML", SUVType="LBMJAMES128", PatientSize="0")])
    with pytest.raises(SuvError, match=r"SUVType \(0054,1006\) 'XYZ'"):
        compute_suv([pet(Units="GML", SUVType="XYZ")])


def test_female_formulas() -> None:
    calc = compute_suv([pet(PatientSex="F", PatientWeight="62", PatientSize="1.60")])
    w, h = 62.0, 160.0
    assert ratio_to_bw(calc.patient, "lbm-james") == pytest.approx((1.07 * w - 148 * (w / h) ** 2) / w)
    assert ratio_to_bw(calc.patient, "sul-janmahasatian") == pytest.approx(9270 / (8780 + 244 * w / 1.6**2))
    assert ratio_to_bw(calc.patient, "ibw") == pytest.approx((45.5 + 0.91 * (h - 152)) / w)
    assert math.isfinite(ratio_to_bw(calc.patient, "bsa"))


def test_suv_command_type_sul(phantom_factory, tmp_path, capsys) -> None:
    """`iodine-node suv --type sul-janmahasatian` writes SUVbw x LBM/W, LBM from the phantom patient."""
    import SimpleITK as sitk

    from node.cli import main

    ph = phantom_factory(seed=1, vendor="siemens", noise=0.0)
    out = tmp_path / "sul.nii.gz"
    assert main(["suv", str(ph.out_dir / "PT"), "--output", str(out), "--type", "sul-janmahasatian"]) == 0
    assert "SUV type sul-janmahasatian" in capsys.readouterr().out
    p = ph.truth["patient"]
    w, h = p["weight_kg"], p["height_m"]
    lbm = 9270 * w / ((6680 + 216 * w / h**2) if p["sex"] == "M" else (8780 + 244 * w / h**2))
    image = sitk.ReadImage(str(out))
    lesion = next(r for r in ph.truth["regions"] if r["name"] == "node_mediastinal")
    index = image.TransformPhysicalPointToIndex(lesion["center_mm"])
    assert image[index] == pytest.approx(lesion["suv"] * lbm / w, rel=0.02)
