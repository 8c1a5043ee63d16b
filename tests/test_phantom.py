"""The synthetic study generator: determinism, DICOM validity, and physics against truth.json."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.cli import main
from node.phantom import PhantomOptions, generate_phantom
from tests.conftest import dciodvfy_errors

VENDORS = ("siemens", "ge", "philips")


def digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def parse_dt(value: str) -> datetime:
    value = value.strip()
    return datetime.strptime(value.split(".")[0][:14], "%Y%m%d%H%M%S")


def test_same_seed_same_bytes_other_seed_differs(phantom_factory, tmp_path: Path) -> None:
    a = phantom_factory(seed=1, noise=0.15)  # generated once per session (other tests read it too)
    b = generate_phantom(tmp_path / "b", PhantomOptions(seed=1, noise=0.15))  # made again here
    c = generate_phantom(tmp_path / "c", PhantomOptions(seed=8, noise=0.15))
    assert digest(a.files) == digest(b.files)
    assert (a.out_dir / "truth.json").read_bytes() == (b.out_dir / "truth.json").read_bytes()
    assert digest(a.files) != digest(c.files)
    assert a.truth["study_instance_uid"] != c.truth["study_instance_uid"]
    lesions_a = {r["name"]: r["center_mm"] for r in a.truth["regions"] if r["kind"] == "metastasis"}
    lesions_c = {r["name"]: r["center_mm"] for r in c.truth["regions"] if r["kind"] == "metastasis"}
    assert lesions_a.keys() == lesions_c.keys() and lesions_a != lesions_c  # positions vary with the seed


@pytest.mark.peer
@pytest.mark.parametrize("vendor", VENDORS)
def test_every_file_passes_dciodvfy(phantom_factory, vendor: str) -> None:
    result = phantom_factory(seed=1, vendor=vendor, noise=0.15)
    errors = [e for f in result.files for e in dciodvfy_errors(f)]
    assert errors == []


def test_study_is_realistic(phantom_factory) -> None:
    result = phantom_factory(seed=1, vendor="siemens", noise=0.15)
    truth = result.truth
    ct = pydicom.dcmread(result.ct_files[0])
    pet = pydicom.dcmread(result.pet_files[0])
    assert (ct.Rows, ct.Columns) == (256, 256) and ct.Modality == "CT"
    assert pet.Modality == "PT" and pet.Units == "BQML" and pet.DecayCorrection == "START"
    assert {"ATTN", "DECY"} <= set(pet.CorrectedImage)
    assert pet.NumberOfSlices == len(result.pet_files) and pet.ImageIndex == 1
    assert pet.BitsAllocated == 16 and pet.PixelRepresentation == 0
    assert ct.StudyInstanceUID == pet.StudyInstanceUID == truth["study_instance_uid"]
    assert ct.FrameOfReferenceUID == pet.FrameOfReferenceUID
    rp = pet.RadiopharmaceuticalInformationSequence[0]
    assert rp.RadionuclideCodeSequence[0].CodeValue == "40937006"
    assert rp.RadiopharmaceuticalCodeSequence[0].CodeValue == "422980002"
    assert float(rp.RadionuclideHalfLife) == 360806.4
    assert 37e6 <= float(rp.RadionuclideTotalDose) <= 185e6
    # Administration 24 h before the scan: an earlier calendar day.
    assert parse_dt(rp.RadiopharmaceuticalStartDateTime).date() < parse_dt(pet.SeriesDate + pet.SeriesTime).date()
    assert pet.AdditionalPatientHistory == "TSH=30 uIU/mL"
    # Per-slice rescale slopes, and PET slice positions that never coincide with CT's.
    slopes = {pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope for f in result.pet_files}
    assert len(slopes) > len(result.pet_files) // 2
    z_ct = {round(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), 2)
            for f in result.ct_files}
    z_pt = {round(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), 2)
            for f in result.pet_files}
    assert not z_ct & z_pt
    # CT numbers of air, lung, soft tissue and bone are where anatomy puts them.
    ct_mid = pydicom.dcmread(result.ct_files[len(result.ct_files) // 2])
    hu = ct_mid.pixel_array * float(ct_mid.RescaleSlope) + float(ct_mid.RescaleIntercept)
    assert hu.min() <= -990 and hu.max() >= 700
    assert np.any((hu > -900) & (hu < -800)) and np.any((hu > 20) & (hu < 70))
    kinds = {r["kind"] for r in truth["regions"]}
    assert {"metastasis", "physiological", "remnant", "non-avid", "background"} <= kinds
    sites = {r["site"] for r in truth["regions"] if r["kind"] == "metastasis"}
    assert {"lung", "bone", "lymph node (cervical)", "lymph node (mediastinal)"} <= sites
    lung = [r["diameter_mm"] for r in truth["regions"] if r["kind"] == "metastasis" and r["site"] == "lung"]
    assert min(lung) <= 6 and max(lung) >= 20


def textbook_suv(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """SUVbw of one slice by the textbook rule, independently of the node's own code:
    SUV = C [Bq/ml] x weight [g] / (dose [Bq] x exp(-ln2 (t_ref - t_inj) / T1/2)) (QIBA); Philips
    CNTS: the private SUV scale factor (7053,1000) times the rescaled pixel value."""
    ds = pydicom.dcmread(path)
    value = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    if ds.Units == "CNTS":
        return value * float(ds[0x70531000].value), ds
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    series = parse_dt(ds.SeriesDate + ds.SeriesTime)
    acquisition = parse_dt(ds.AcquisitionDate + ds.AcquisitionTime)
    reference = parse_dt(ds[0x0009100D].value) if series > acquisition else series  # GE post-processed
    elapsed_s = (reference - parse_dt(rp.RadiopharmaceuticalStartDateTime)).total_seconds()
    dose = float(rp.RadionuclideTotalDose) * math.exp(-math.log(2) * elapsed_s / float(rp.RadionuclideHalfLife))
    return value * float(ds.PatientWeight) * 1000.0 / dose, ds


def suv_at(result, center_mm: list[float]) -> float:
    """Textbook SUV in the voxel nearest to a point (patient LPS mm)."""
    best = min(result.pet_files,
               key=lambda f: abs(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                                 - center_mm[2]))
    suv, ds = textbook_suv(best)
    x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    col = round((center_mm[0] - x0) / float(ds.PixelSpacing[1]))
    row = round((center_mm[1] - y0) / float(ds.PixelSpacing[0]))
    return float(suv[row, col])


@pytest.mark.parametrize("vendor", VENDORS)
def test_textbook_suv_reproduces_truth_for_large_lesion(phantom_factory, vendor: str) -> None:
    result = phantom_factory(seed=1, vendor=vendor, noise=0.0)
    large = [r for r in result.truth["regions"] if r["kind"] == "metastasis" and r["diameter_mm"] >= 30]
    assert large, "the phantom must hold a lesion of at least 30 mm"
    for lesion in large:
        measured = suv_at(result, lesion["center_mm"])
        assert measured == pytest.approx(lesion["suv"], rel=0.015), lesion["name"]
    # Bq/ml as stored agrees with truth too (Philips: counts x activity-concentration factor).
    lesion = large[0]
    conc = suv_at(result, lesion["center_mm"]) / result.truth["suvbw_factor_g_per_bq"]
    assert conc == pytest.approx(lesion["conc_bq_per_ml"], rel=0.015)
    if vendor == "philips":
        ds = pydicom.dcmread(result.pet_files[0])
        suv_per_count = float(ds[0x70531000].value)
        bq_per_ml_per_count = float(ds[0x70531009].value)
        assert bq_per_ml_per_count * result.truth["suvbw_factor_g_per_bq"] == pytest.approx(suv_per_count, rel=1e-6)


def test_vendor_encodings_hold_the_same_activity(phantom_factory) -> None:
    ref = phantom_factory(seed=1, vendor="siemens", noise=0.0)
    for vendor in ("ge", "philips"):
        other = phantom_factory(seed=1, vendor=vendor, noise=0.0)
        for lesion in ref.truth["regions"]:
            if lesion["kind"] == "metastasis" and lesion["diameter_mm"] >= 12:
                assert suv_at(other, lesion["center_mm"]) == pytest.approx(suv_at(ref, lesion["center_mm"]),
                                                                            rel=2e-3)


def test_ge_and_philips_vendor_specifics(phantom_factory) -> None:
    ge = pydicom.dcmread(phantom_factory(seed=1, vendor="ge", noise=0.15).pet_files[0])
    assert ge[0x00090010].value == "GEMS_PETD_01"
    assert parse_dt(ge.SeriesDate + ge.SeriesTime) > parse_dt(ge.AcquisitionDate + ge.AcquisitionTime)
    ph = pydicom.dcmread(phantom_factory(seed=1, vendor="philips", noise=0.15).pet_files[0])
    assert ph.Units == "CNTS"
    assert ph[0x70530010].value == "Philips PET Private Group"
    assert float(ph[0x70531000].value) > 0 and float(ph[0x70531009].value) > 0


def test_second_timepoint_same_patient_new_study(phantom_factory) -> None:
    one = phantom_factory(seed=4, noise=0.0)
    two = phantom_factory(seed=4, noise=0.0, timepoint=2, tsh=120)
    a, b = one.truth, two.truth
    assert a["patient"]["id"] == b["patient"]["id"]
    assert a["study_instance_uid"] != b["study_instance_uid"]
    assert a["frame_of_reference_uid"] != b["frame_of_reference_uid"]
    assert a["administration_datetime"] != b["administration_datetime"]  # separate administrations
    assert pydicom.dcmread(two.pet_files[0]).AdditionalPatientHistory == "TSH=120 uIU/mL"
    assert b["pose"]["rot_z_deg"] != 0 and any(abs(t) > 0 for t in b["pose"]["translation_mm"])
    first = {r["name"]: r for r in a["regions"] if r["kind"] == "metastasis"}
    second = {r["name"]: r for r in b["regions"] if r["name"] in first}
    changes = {r["change_from_timepoint_1"] for r in second.values()}
    assert {"gained", "reduced", "lost"} <= changes
    lost = [r for r in second.values() if r["change_from_timepoint_1"] == "lost"]
    assert len(lost) == 1 and lost[0]["kind"] == "non-avid" and lost[0]["expected_avid"] is False
    for name, r in second.items():
        if r["change_from_timepoint_1"] == "gained":
            assert r["suv"] > first[name]["suv"]
        if r["change_from_timepoint_1"] == "reduced":
            assert r["suv"] < first[name]["suv"]
    # The patient moved: the same lesion sits elsewhere in scanner coordinates.
    name = next(iter(second))
    assert np.linalg.norm(np.subtract(first[name]["center_mm"], second[name]["center_mm"])) > 2


def test_same_administration_later_uptake(tmp_path: Path) -> None:
    early = generate_phantom(tmp_path / "24", PhantomOptions(seed=5, noise=0.0, uptake_h=24))
    late = generate_phantom(tmp_path / "96", PhantomOptions(seed=5, noise=0.0, uptake_h=96))
    assert early.truth["administration_datetime"] == late.truth["administration_datetime"]
    assert early.truth["study_instance_uid"] != late.truth["study_instance_uid"]
    for a, b in zip(early.truth["regions"], late.truth["regions"], strict=True):
        if a["kind"] == "metastasis":
            # Biological washout: SUV falls with the lesion's own biological half-life.
            expected = a["suv"] * math.exp(-math.log(2) * 72 / a["biological_half_life_h"])
            assert b["suv"] == pytest.approx(expected, rel=0.02)


@pytest.mark.peer
def test_non_ascii_patient_name_round_trips(tmp_path: Path) -> None:
    result = generate_phantom(tmp_path, PhantomOptions(seed=2, patient_name="王^小明", charset="GB18030",
                                                       noise=0.0))
    ds = pydicom.dcmread(result.pet_files[0])
    assert ds.SpecificCharacterSet == "GB18030"
    assert str(ds.PatientName) == "王^小明"
    assert dciodvfy_errors(result.pet_files[0]) == []


def test_cli_phantom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", str(tmp_path / "out"), "--seed", "3", "--vendor", "ge", "--noise", "0",
                 "--uptake-h", "48", "--activity-mbq", "100"]) == 0
    out = capsys.readouterr().out
    assert "PET files" in out and "uptake 48 h" in out
    truth = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert truth["vendor"] == "ge" and truth["uptake_time_h"] == 48 and truth["injected_activity_bq"] == 100e6
    assert len(list((tmp_path / "out" / "PT").glob("*.dcm"))) == truth["series"]["pet"]["instances"]
    assert main(["phantom", str(tmp_path / "bad"), "--activity-mbq", "0"]) == 2
    assert "activity_mbq must be 1..1000 MBq, got 0.0" in capsys.readouterr().err


# -- the realistic variant (node.phantom.realism) -------------------------------------------------


@pytest.mark.peer
def test_realistic_is_deterministic_and_dciodvfy_clean(phantom_factory, tmp_path: Path) -> None:
    opts = PhantomOptions(seed=2, realistic=True, noise=0.3)
    a = phantom_factory(seed=2, realistic=True, noise=0.3)  # the session's copy (tests/test_realistic.py's too)
    b = generate_phantom(tmp_path / "b", opts)
    assert digest(a.files) == digest(b.files)
    classic = generate_phantom(tmp_path / "c", PhantomOptions(seed=2, noise=0.3))
    assert a.truth["study_instance_uid"] != classic.truth["study_instance_uid"]
    errors = [e for f in (a.ct_files[::10] + a.pet_files[::10]) for e in dciodvfy_errors(f)]
    assert errors == []
    names = {r["name"]: r for r in a.truth["regions"]}
    # Neck nodes by level, CT-only nodules, a lone submandibular gland (seed 2), blood pool vessels.
    assert {"node_level_ii_r", "node_level_ii_l", "node_level_vi", "ct_nodule_vessel"} <= names.keys()
    assert "submandibular_r" in names and "submandibular_l" not in names
    assert {r["kind"] for r in a.truth["regions"] if r["name"].startswith("ct_nodule")} == {"non-avid"}
    assert a.truth["positron_range_mm"] == 3.0 and a.truth["respiratory_mm"] == 12.0
    # Lesion cores (heterogeneity) are painted but not listed as regions of their own.
    assert not any("core" in n or "hot_spot" in n for n in names)


def test_counts_noise_model_follows_activity_and_time() -> None:
    """CoV ~ 1/sqrt(counts): a 96 h scan of the same administration is noisier by 2^(72 h / 2 T1/2)."""
    from node.phantom.generate import REFERENCE_ACTIVITY_BQ, REFERENCE_WEIGHT_KG, scan_noise_cov

    lam = math.log(2) / 360806.4
    ref = REFERENCE_ACTIVITY_BQ / (REFERENCE_WEIGHT_KG * 1000)
    opts = PhantomOptions(noise=0.2, noise_model="counts")
    at_24 = scan_noise_cov(opts, ref * math.exp(-lam * 24 * 3600), 600.0)
    at_96 = scan_noise_cov(opts, ref * math.exp(-lam * 96 * 3600), 600.0)
    assert at_24 == pytest.approx(0.2)
    assert at_96 / at_24 == pytest.approx(2 ** (72 / 100.224 / 2), rel=1e-9)
    assert scan_noise_cov(opts, ref * math.exp(-lam * 24 * 3600), 150.0) == pytest.approx(0.4)  # 4x fewer counts
    assert scan_noise_cov(PhantomOptions(noise=0.2), 1.0, 1.0) == 0.2  # fixed: as given


def test_counts_noise_is_measurably_higher_late(tmp_path: Path) -> None:
    """In the images: soft-tissue CoV of a 96 h scan against a 24 h scan of one administration."""
    def cov(uptake_h: float) -> float:
        ph = generate_phantom(tmp_path / f"u{uptake_h}", PhantomOptions(seed=3, uptake_h=uptake_h, noise=0.15,
                                                                       noise_model="counts", activity_mbq=100))
        # A 24 mm cube in the (uniform) liver, centred at body (-65, -5, -540) mm.
        ds = [d for d in (pydicom.dcmread(f) for f in ph.pet_files) if abs(float(d.ImagePositionPatient[2]) + 540) < 12]
        d0 = ds[0]
        col = round((-65 - float(d0.ImagePositionPatient[0])) / float(d0.PixelSpacing[1]))
        row = round((-5 - float(d0.ImagePositionPatient[1])) / float(d0.PixelSpacing[0]))
        values = np.concatenate([(d.pixel_array * float(d.RescaleSlope))[row - 3:row + 4, col - 3:col + 4].ravel()
                                 for d in ds])
        return float(values.std() / values.mean()), ph.truth["noise_cov_soft_tissue"]

    (early, early_set), (late, late_set) = cov(24.0), cov(96.0)
    assert late_set / early_set == pytest.approx(2 ** (72 / 100.224 / 2), rel=1e-6)
    assert late > 1.1 * early


def test_positron_range_kernel_has_tails() -> None:
    from node.phantom.render import positron_range_kernel

    k = positron_range_kernel((2.0, 2.0, 2.0), 3.0)
    assert k.sum() == pytest.approx(1.0)
    c = np.array(k.shape) // 2
    # An exponential 3D range of mean 3 mm: 1 - e^-(r/3) of the positrons annihilate within r; the
    # emitting 2 mm voxel keeps about a third, and about 5 % travel beyond 9 mm (a Gaussian of the
    # same core would put nothing there).
    assert 0.2 < k[tuple(c)] < 0.5
    zz, yy, xx = np.indices(k.shape)
    r = 2.0 * np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    assert 0.02 < k[r > 9].sum() < 0.1
