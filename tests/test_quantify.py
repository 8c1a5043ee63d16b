"""Quantification accuracy on generated studies, volume assembly rules, and `iodine-node process`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from node.assemble import quantify_files
from node.cli import main
from node.quant.study import QuantSettings
from node.quant.volume import VolumeError, assemble

VENDORS = ("siemens", "ge", "philips")
MATCH_MM = 10.0


def match(result, truth: dict) -> dict[str, object]:
    """Truth region name -> the lesion found nearest to it (within MATCH_MM)."""
    out = {}
    for region in truth["regions"]:
        centre = np.array(region["center_mm"])
        best = min(result.lesions, key=lambda les: np.linalg.norm(np.array(les.centroid_mm) - centre), default=None)
        if best is not None and np.linalg.norm(np.array(best.centroid_mm) - centre) <= MATCH_MM:
            out[region["name"]] = best
    return out


@pytest.fixture(scope="module")
def quantified(phantom_factory):
    cache = {}

    def run(vendor: str, **kw: object):
        key = (vendor, tuple(sorted(kw.items())))
        if key not in cache:
            ph = phantom_factory(seed=1, vendor=vendor, noise=0.0, **kw)
            cache[key] = (ph, quantify_files(ph.pet_files, ph.ct_files, QuantSettings()))
        return cache[key]

    return run


@pytest.mark.parametrize("vendor", VENDORS)
def test_noise_free_accuracy(quantified, vendor: str) -> None:
    ph, result = quantified(vendor)
    truth = ph.truth
    found = match(result, truth)
    for region in truth["regions"]:
        lbr = region.get("lesion_to_background") or 0
        if region["kind"] == "metastasis" and region["diameter_mm"] >= 10 and lbr >= 4:
            assert region["name"] in found, f"{region['name']} ({region['diameter_mm']} mm) not found"
            assert found[region["name"]].label == "metastasis", region["name"]
            assert found[region["name"]].iodine_avid, region["name"]
        if region["diameter_mm"] >= 30 and region["kind"] == "metastasis":
            assert found[region["name"]].suv_max == pytest.approx(region["suv"], rel=0.02)
        if region["diameter_mm"] >= 20 and region["kind"] == "metastasis":
            true_ml = math.pi / 6 * region["diameter_mm"] ** 3 / 1000
            assert found[region["name"]].volume_ml == pytest.approx(true_ml, rel=0.15), region["name"]
    # No physiological region or background called a metastasis; the remnant is recognised.
    by_kind = {r["name"]: r["kind"] for r in truth["regions"]}
    for lesion in result.lesions:
        centre = np.array(lesion.centroid_mm)
        nearest = min(truth["regions"], key=lambda r: np.linalg.norm(np.array(r["center_mm"]) - centre))
        if lesion.label == "metastasis" and lesion.detection == "pet":
            assert nearest["kind"] == "metastasis", f"lesion {lesion.id} at {lesion.centroid_mm} is {nearest['name']}"
        if lesion.detection == "ct":  # found on CT without a PET focus: the CT-visible non-avid nodule
            assert nearest["kind"] == "non-avid" and not lesion.iodine_avid, nearest["name"]
    assert found["thyroid_bed_remnant"].label == "remnant"
    for name, kind in by_kind.items():
        if kind == "physiological" and name in found:
            assert found[name].label.startswith("physiological:"), name
    nonavid = next(r for r in truth["regions"] if r["kind"] == "non-avid")
    assert found[nonavid["name"]].detection == "ct" and not found[nonavid["name"]].iodine_avid
    assert found[nonavid["name"]].ct_diameter_mm == pytest.approx(nonavid["diameter_mm"], abs=2.5)


def test_sites_and_measures_are_consistent(quantified) -> None:
    ph, result = quantified("siemens")
    found = match(result, ph.truth)
    assert found["lung_l_upper"].site == "lung"
    assert found["bone_vertebra_t8"].site == "bone"
    assert found["node_cervical_r"].site == "neck"
    les = found["node_mediastinal"]
    assert les.total_lesion_uptake == pytest.approx(les.suv_mean * les.volume_ml)
    assert les.suv_mean <= les.suv_peak <= les.suv_max
    # Activity and %IA follow from SUV, the injected activity and the decay over the uptake time.
    truth = ph.truth
    conc_sum = les.suv_mean * les.volume_ml * truth["decayed_activity_at_scan_start_bq"] / (
        truth["patient"]["weight_kg"] * 1000)
    assert les.activity_mbq == pytest.approx(conc_sum / 1e6, rel=1e-4)
    decay = math.exp(math.log(2) * truth["uptake_time_h"] * 3600 / truth["half_life_s"])
    assert les.percent_injected_activity == pytest.approx(100 * les.activity_mbq * 1e6 * decay /
                                                          truth["injected_activity_bq"], rel=1e-6)
    assert les.lesion_to_background == pytest.approx(les.suv_max / les.background_suv)


def test_vendor_encodings_give_identical_suvs(quantified) -> None:
    ref = match(quantified("siemens")[1], quantified("siemens")[0].truth)
    for vendor in ("ge", "philips"):
        ph, result = quantified(vendor)
        other = match(result, ph.truth)
        for name, lesion in ref.items():
            assert other[name].suv_max == pytest.approx(lesion.suv_max, rel=1e-3), (vendor, name)
            assert other[name].volume_ml == pytest.approx(lesion.volume_ml, rel=1e-3), (vendor, name)


def test_pet_only_study_is_still_quantified(quantified) -> None:
    ph, _ = quantified("siemens")
    result = quantify_files(ph.pet_files, None, QuantSettings())
    found = match(result, ph.truth)
    assert "node_mediastinal" in found and found["node_mediastinal"].mean_hu is None
    assert any("no CT" in w for w in result.warnings)


def _slices(ph, n: int = 12) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in ph.pet_files[:n]]


def test_volume_assembly_rules(phantom_factory) -> None:
    ph = phantom_factory(seed=1, vendor="siemens", noise=0.15)
    ds = _slices(ph)
    vol, _order = assemble(list(reversed(ds)), "PET test")  # any input order
    z = [vol.index_to_lps(np.array([k, 0, 0]))[2] for k in range(len(ds))]
    assert np.all(np.diff(z) > 0) and vol.spacing[2] == pytest.approx(4.0)
    first = ds[0]
    assert vol.array[-1, 10, 10] == pytest.approx(first.pixel_array[10, 10] * float(first.RescaleSlope), rel=1e-6)
    with pytest.raises(VolumeError, match=r"PET test: gap of 8\.000 mm .* missing slice"):
        assemble(ds[:5] + ds[6:], "PET test")
    with pytest.raises(VolumeError, match="duplicate slice"):
        assemble([*ds, ds[3]], "PET test")
    tilted = pydicom.dcmread(ph.pet_files[20])
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(VolumeError, match="different ImageOrientationPatient"):
        assemble([*ds, tilted], "PET test")
    with pytest.raises(VolumeError, match="a single image is not a volume"):
        assemble(ds[:1], "PET test")
    small = pydicom.dcmread(ph.ct_files[0])
    with pytest.raises(VolumeError, match="differ in matrix size"):
        assemble([*ds, small], "PET test")


def test_compressed_and_multiframe_pet(phantom_factory) -> None:
    ph = phantom_factory(seed=1, vendor="siemens", noise=0.15)
    ds = _slices(ph)
    plain, _ = assemble(ds, "plain")
    rle = []
    for d in ds:
        c = pydicom.dcmread(d.filename)
        c.compress(RLELossless)
        rle.append(c)
    packed, _ = assemble(rle, "rle")
    assert np.array_equal(packed.array, plain.array)
    # One multi-frame dataset built from the slices (functional groups, PS3.3 C.7.6.16).
    mf = pydicom.dcmread(ds[0].filename)
    frames = sorted(ds, key=lambda d: float(d.ImagePositionPatient[2]))
    mf.NumberOfFrames = len(frames)
    mf.PixelData = b"".join(f.PixelData for f in frames)
    per = []
    for f in frames:
        item = pydicom.Dataset()
        pos, ori, meas, rescale = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
        pos.ImagePositionPatient = f.ImagePositionPatient
        ori.ImageOrientationPatient = f.ImageOrientationPatient
        meas.PixelSpacing, meas.SliceThickness = f.PixelSpacing, f.SliceThickness
        rescale.RescaleSlope, rescale.RescaleIntercept = f.RescaleSlope, f.RescaleIntercept
        item.PlanePositionSequence = pydicom.Sequence([pos])
        item.PlaneOrientationSequence = pydicom.Sequence([ori])
        item.PixelMeasuresSequence = pydicom.Sequence([meas])
        item.PixelValueTransformationSequence = pydicom.Sequence([rescale])
        per.append(item)
    mf.PerFrameFunctionalGroupsSequence = pydicom.Sequence(per)
    multi, _ = assemble([mf], "multi-frame")
    assert np.allclose(multi.array, plain.array)


def test_process_command(phantom_factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ph = phantom_factory(seed=1, vendor="ge", noise=0.15)
    out = tmp_path / "out"
    assert main(["process", str(ph.out_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    uid = ph.truth["study_instance_uid"]
    doc = json.loads((out / uid / "results.json").read_text())
    assert doc["schema"] == "iodine-node/results/v1" and doc["study_instance_uid"] == uid
    assert doc["pet_series_instance_uid"] == ph.truth["series"]["pet"]["series_instance_uid"]
    assert doc["patient_id"] == ph.truth["patient"]["id"]
    assert doc["uptake_time_h"] == pytest.approx(24.0, abs=0.01)
    assert doc["injected_activity_bq"] == ph.truth["injected_activity_bq"]
    assert doc["suv"]["factor_g_per_unit"] == pytest.approx(ph.truth["suvbw_factor_g_per_bq"], rel=1e-6)
    assert any("GE private" in line for line in doc["suv"]["derivation"])
    keys = {"id", "label", "centroid_mm", "volume_ml", "suv_max", "suv_peak", "suv_mean", "total_lesion_uptake",
            "activity_mbq", "percent_injected_activity", "lesion_to_background", "background_suv", "iodine_avid"}
    assert doc["lesions"] and all(keys <= set(les) for les in doc["lesions"])
    with open(out / uid / "lesions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(doc["lesions"]) and rows[0]["suv_max"] == str(doc["lesions"][0]["suv_max"])
    assert "iodine-avid" in printed and "metastasis" in printed
    for name in ("seg.dcm", "sr.dcm", "sc-1.dcm"):  # the DICOM objects beside results.json
        assert pydicom.dcmread(out / uid / name).StudyInstanceUID == uid


def test_process_fails_clearly_without_pet(phantom_factory, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ph = phantom_factory(seed=1, vendor="siemens", noise=0.15)
    assert main(["process", str(ph.out_dir / "CT"), "--output", str(tmp_path / "o")]) == 1
    assert "cannot be processed: no quantifiable PET series" in capsys.readouterr().err


def test_suv_command_writes_nifti(phantom_factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import SimpleITK as sitk

    ph = phantom_factory(seed=1, vendor="philips", noise=0.0)
    out = tmp_path / "suv.nii.gz"
    assert main(["suv", str(ph.out_dir / "PT"), "--output", str(out)]) == 0
    assert "Philips private SUV Scale Factor" in capsys.readouterr().out
    image = sitk.ReadImage(str(out))
    lesion = next(r for r in ph.truth["regions"] if r["name"] == "node_mediastinal")
    index = image.TransformPhysicalPointToIndex(lesion["center_mm"])  # ITK keeps LPS in memory
    assert image[index] == pytest.approx(lesion["suv"], rel=0.02)
