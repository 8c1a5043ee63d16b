"""SEG, TID 1500 SR and Secondary Capture: valid, readable back, consistent, deterministic."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.assemble import quantify_files
from node.encode.objects import build_objects
from node.output.document import results_document
from node.output.files import write_objects
from node.quant.detect import DetectionSettings
from node.quant.study import QuantSettings
from tests.conftest import dciodvfy_errors


@pytest.fixture(scope="module")
def encoded(phantom_factory, tmp_path_factory: pytest.TempPathFactory):
    cache: dict = {}

    def run(settings: QuantSettings | None = None, **phantom: object):
        settings = settings or QuantSettings()
        key = (tuple(sorted(phantom.items())), settings)
        if key not in cache:
            ph = phantom_factory(**{"seed": 1, "noise": 0.15, **phantom})
            result = quantify_files(ph.pet_files, ph.ct_files, settings)
            doc = results_document(result, settings)
            objects = build_objects(result, doc, settings).datasets
            paths = write_objects(tmp_path_factory.mktemp("objects"), objects)
            cache[key] = (ph, result, doc, dict(zip([k for k, _ in objects], paths, strict=False)), paths)
        return cache[key]

    return run


VARIANTS = [
    {"vendor": "siemens"},
    {"vendor": "ge"},
    {"vendor": "philips"},
    {"vendor": "siemens", "patient_name": "王^小明", "charset": "GB18030"},
    {"vendor": "siemens", "patient_name": "Zhang^San=张^三", "charset": ["", "ISO 2022 IR 58"]},
    {"vendor": "ge", "patient_name": "Müller^Zoë", "charset": "ISO_IR 192"},
]


@pytest.mark.peer
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['vendor']}-{v.get('charset', 'utf8')}")
def test_every_object_passes_dciodvfy_and_keeps_patient(encoded, variant: dict) -> None:
    if isinstance(variant.get("charset"), list):
        variant = {**variant, "charset": "\\".join(variant["charset"])}
    ph, _, _, _, paths = encoded(**variant)
    assert {p.name for p in paths} >= {"seg.dcm", "sr.dcm", "sc-1.dcm"}
    source = pydicom.dcmread(ph.pet_files[0], stop_before_pixels=True)
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert str(ds.PatientName) == str(source.PatientName)
        assert ds.SpecificCharacterSet == source.SpecificCharacterSet
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SeriesDescription.startswith("iodine-node")


def test_seg_reads_back_with_masks_and_tracking(encoded) -> None:
    _, result, _, files, _ = encoded(vendor="siemens")
    seg = hd.seg.segread(files["seg"])
    assert seg.number_of_segments == len(result.lesions)
    assert seg.SegmentationType == "BINARY"
    source_uids = set(result.pet_sop_uids)
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        <= source_uids
    assert len(seg.PerFrameFunctionalGroupsSequence) < len(result.lesions) * len(result.pet_sop_uids)  # sparse
    for lesion in result.lesions:
        desc = seg.get_segment_description(lesion.id)
        assert desc.segment_label.startswith(("Lesion", "Remnant", "Physiological")) and str(lesion.id) in \
            desc.segment_label
        assert desc.algorithm_type.value == "AUTOMATIC"
        suffix = " non-avid (CT)" if lesion.detection == "ct" else ""  # CT-found: the display text in every object
        assert desc.tracking_id == f"Lesion {lesion.id}{suffix}"
        mask = seg.get_volume(segment_numbers=[lesion.id], combine_segments=False).array[..., 0]
        expected = (result.labels == lesion.mask_label)
        assert int(mask.sum()) == int(expected.sum()), lesion.id


def _groups(sr: hd.sr.Comprehensive3DSR) -> list:
    return list(sr.content.get_volumetric_roi_measurement_groups())


def test_sr_values_units_codes_and_references(encoded) -> None:
    _, result, _, files, _ = encoded(vendor="siemens")
    sr = hd.sr.srread(files["sr"])
    seg = pydicom.dcmread(files["seg"], stop_before_pixels=True)
    groups = _groups(sr)
    assert len(groups) == len(result.lesions)
    by_uid = {g.tracking_uid: g for g in groups}
    seg_tracking = {d.TrackingUID: d.SegmentNumber for d in seg.SegmentSequence}
    for lesion in result.lesions:
        desc_uid = next(u for u, n in seg_tracking.items() if n == lesion.id)
        group = by_uid[desc_uid]  # same tracking UID in SEG and SR
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID and ref.referenced_segment_numbers == [lesion.id]
        values = {}
        for m in group.get_measurements():
            derivation = m.derivation.value if m.derivation is not None else None
            values[(m.name.value, derivation)] = (m.value, m.unit.value)
        assert values[("126401", "56851009")] == pytest.approx((lesion.suv_max, "g/ml{SUVbw}"))
        assert values[("126401", "373098007")][0] == pytest.approx(lesion.suv_mean)
        assert values[("126401", "126031")][0] == pytest.approx(lesion.suv_peak)
        assert values[("118565006", None)] == pytest.approx((lesion.volume_ml, "ml"))
        assert values[("126039", None)][0] == pytest.approx(lesion.lesion_to_background)
        assert values[("126040", None)][0] == pytest.approx(lesion.background_suv)
        assert values[("126033", None)] == pytest.approx((lesion.total_lesion_uptake, "g"))
        assert values[("PCT-IA", None)] == pytest.approx((lesion.percent_injected_activity, "%"))
        assert values[("ACT-SCAN", None)] == pytest.approx((lesion.activity_mbq, "MBq"))
        (avid,) = group.get_qualitative_evaluations()
        assert avid.value.value == ("373066001" if lesion.iodine_avid else "373067005")
    # Every referenced instance exists: the PET slices or the SEG.
    known = set(result.pet_sop_uids) | {seg.SOPInstanceUID}
    referenced = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert referenced and referenced <= known
    assert any(item.CodingSchemeDesignator == "99IODINE" for item in sr.CodingSchemeIdentificationSequence)


def test_sc_marks_lesions_on_the_mip(encoded) -> None:
    _, result, _, files, _ = encoded(vendor="siemens")
    sc = pydicom.dcmread(files["sc"])
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB" and sc.Columns == 1024
    page = sc.pixel_array
    red = (page[..., 0] > 180) & (page[..., 1] < 60) & (page[..., 2] < 60)  # avid-lesion outlines
    avid = sum(1 for les in result.lesions if les.iodine_avid and les.label == "metastasis")
    assert avid > 0 and red[:, :410].sum() > 20 * avid  # outlines on the MIP side
    assert (page[:, 420:] < 80).all(axis=2).sum() > 5000  # the table's text


def test_uids_are_deterministic_and_follow_settings(encoded, tmp_path: Path, phantom_factory) -> None:
    _, result, doc, files, _ = encoded(vendor="siemens")
    again = build_objects(result, doc, QuantSettings()).datasets
    first = {k: pydicom.dcmread(p, stop_before_pixels=True) for k, p in files.items()}
    for kind, ds in again:
        if kind in first:
            assert ds.SOPInstanceUID == first[kind].SOPInstanceUID
            assert ds.SeriesInstanceUID == first[kind].SeriesInstanceUID
    changed = replace(QuantSettings(), avid=replace(QuantSettings().avid, lbr_threshold=5.0))
    other = dict(build_objects(result, results_document(result, changed), changed).datasets)
    assert other["sr"].SOPInstanceUID != first["sr"].SOPInstanceUID
    assert other["seg"].SeriesInstanceUID != first["seg"].SeriesInstanceUID


@pytest.mark.peer
def test_zero_lesions_gives_sr_and_sc_but_no_seg(encoded) -> None:
    # No PET focus reaches the threshold and the CT nodule search is off: nothing to segment.
    nothing = QuantSettings(detection=DetectionSettings(min_peak_suv=1000.0), ct_nodules=False)
    _, result, _, files, paths = encoded(settings=nothing, vendor="siemens")
    assert result.lesions == ()
    assert "seg" not in files and {p.name for p in paths} == {"sr.dcm", "sc-1.dcm"}
    for path in paths:
        assert dciodvfy_errors(path) == [], path.name
    sr = hd.sr.srread(files["sr"])
    assert _groups(sr) == []

    def codes_in(items) -> list[str]:
        out = []
        for item in items:
            out += [c.CodeValue for c in item.get("ConceptCodeSequence", [])]
            out += codes_in(item.get("ContentSequence", []))
        return out

    assert "NO-FOCI" in codes_in(sr.ContentSequence)  # the report says no focus was found


@pytest.mark.peer
def test_many_lesions_get_a_second_page(encoded, tmp_path: Path) -> None:
    from node.encode.identity import ResultIdentity
    from node.encode.sc import build_sc
    from node.encode.sc_render import ROWS_PER_PAGE

    _, result, doc, _, _ = encoded(vendor="siemens")
    copies = -(-(ROWS_PER_PAGE + 5) // len(result.lesions))
    many = [replace(les, id=i + 1) for i, les in enumerate(result.lesions * copies)]
    big = replace(result, lesions=many)
    pages = build_sc(big, doc, ResultIdentity(result.pet_series_uid, None, "test"), "ISO_IR 192")
    assert len(pages) == -(-len(many) // ROWS_PER_PAGE) >= 2
    assert len({p.SOPInstanceUID for p in pages}) == len(pages) and [p.InstanceNumber for p in pages] == [1, 2]
    for n, page in enumerate(pages, 1):
        path = tmp_path / f"sc-{n}.dcm"
        page.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


def test_sr_planar_point_on_the_suvmax_voxel_beside_each_volumetric_group(encoded) -> None:
    """What image viewers draw (TID 1410): a point on the focus' hottest voxel, its SUVmax and SUVpeak."""
    _, result, _, files, _ = encoded(vendor="siemens")
    sr = hd.sr.srread(files["sr"])
    planar = {g.tracking_uid: g for g in sr.content.get_planar_roi_measurement_groups()}
    volumetric = {g.tracking_uid: g for g in _groups(sr)}
    assert set(planar) == set(volumetric) and len(planar) == len(result.lesions)
    seg = pydicom.dcmread(files["seg"], stop_before_pixels=True)
    for lesion in result.lesions:
        uid = next(d.TrackingUID for d in seg.SegmentSequence if d.SegmentNumber == lesion.id)
        group = planar[uid]
        region = group.roi
        assert region.graphic_type.value == "POINT"
        (col, row), = region.value
        k = result.pet_sop_uids.index(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        j, i = int(row - 0.5), int(col - 0.5)
        assert result.labels[k, j, i] == lesion.mask_label
        assert result.suv_volume.array[k, j, i] == pytest.approx(lesion.suv_max)
        values = {m.derivation.value: m.value for m in group.get_measurements()}
        assert values == pytest.approx({"56851009": lesion.suv_max, "126031": lesion.suv_peak})
        comment = [i for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
        assert comment[0].TextValue == next(d.SegmentLabel for d in seg.SegmentSequence if d.TrackingUID == uid)
    colours = {tuple(d.RecommendedDisplayCIELabValue) for d in seg.SegmentSequence}
    assert 2 <= len(colours) <= 4  # one colour per kind of focus (avid, non-avid, remnant, physiological)


def test_sc_pixels_match_the_reference_page(encoded) -> None:
    """The page drawn by the renderer, and the SC image built around it, are the reference page pixel for
    pixel (tests/data/sc-pages: rendered before the renderer and the IOD builder were split)."""
    from PIL import Image

    from node.encode.sc_render import render_pages

    _, result, doc, files, _ = encoded(vendor="siemens")
    reference = np.asarray(Image.open(Path(__file__).parent / "data" / "sc-pages" / "siemens-seed1-page1.png"))
    page = render_pages(result, doc)[0]
    assert page.shape == reference.shape == (1024, 1024, 3)
    different = np.argwhere((page != reference).any(axis=2))
    assert different.size == 0, f"{len(different)} pixels differ, first at (row, column) {different[0].tolist()}"
    assert np.array_equal(pydicom.dcmread(files["sc"]).pixel_array, reference)


def test_building_objects_leaves_the_document_alone(encoded) -> None:
    """Tracking identities are settled in a new document (the one written as results.json); the document
    handed in is not changed, and the SEG carries the new document's identities."""
    _, result, doc, _, _ = encoded(vendor="siemens")
    before = json.dumps(doc, sort_keys=True, default=str)
    objects = build_objects(result, doc, QuantSettings())
    assert json.dumps(doc, sort_keys=True, default=str) == before
    assert all(les["tracking_uid"] is None for les in doc["lesions"])
    settled = {les["id"]: (les["tracking_uid"], les["tracking_id"]) for les in objects.document["lesions"]}
    seg = dict(objects.datasets)["seg"]
    assert settled == {d.SegmentNumber: (d.TrackingUID, d.TrackingID) for d in seg.SegmentSequence}
