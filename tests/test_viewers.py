"""The result objects in the consumers people use: dcmqi (3D Slicer), dcmjs, the OHIF Viewer in Chromium.

One study goes through a running node to a real Orthanc (DICOMweb enabled); every check reads what
the node delivered: its results folder and what Orthanc holds.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml

from node.assemble import quantify_files
from node.phantom import PhantomOptions, PhantomResult, generate_phantom
from node.quant.models import SeriesResult
from node.quant.study import QuantSettings
from tests.conftest import IN_CI, require_tool
from tests.peers import NodeProcess, Orthanc, run_dcmtk, wait_for

pytestmark = pytest.mark.peer

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
ARTEFACTS = Path(os.environ.get("IODINE_TEST_ARTEFACTS", Path(__file__).resolve().parent / "artefacts")) / "viewers"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SEG, SR_3D, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
SUVBW, MAXIMUM, MEAN, PEAK, VOLUME = "126401", "56851009", "373098007", "126031", "118565006"
FOUR_DIGITS = 5e-4  # relative: equal to 4 significant digits


@dataclass
class Delivered:
    phantom: PhantomResult
    orthanc: Orthanc
    results: Path  # the node's results folder of the study
    doc: dict[str, Any]  # its results.json
    study_uid: str


def node_script(script: str, *args: str, timeout: float = 600) -> Any:
    """Run one of tests/viewer/*.mjs with Debian's Node.js; its stdout is JSON."""
    node = require_tool("node")
    if not (VIEWER_DIR / "node_modules" / "dcmjs").is_dir():
        message = "tests/viewer/node_modules missing: run `make viewer` (npm ci)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    out = subprocess.run([node, str(VIEWER_DIR / script), *args], capture_output=True, text=True, timeout=timeout,
                         cwd=VIEWER_DIR, check=False)
    if out.returncode != 0:
        raise AssertionError(f"{script} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("viewers")
    phantom = generate_phantom(base / "study", PhantomOptions(seed=1, noise=0.15))
    node = NodeProcess(base / "node")
    orthanc = Orthanc(base / "orthanc", modalities={"node": [node.ae_title, "127.0.0.1", node.port],
                                                    "scanner": ["SCANNER", "127.0.0.1", 104]},
                      plugins=[DICOMWEB_PLUGIN], extra={"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    config = yaml.safe_load(node.config_path.read_text())
    config["destinations"] = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                               "port": orthanc.dicom_port}]
    config["export"] = {"retry": {"first_s": 0.3, "max_s": 1.0, "give_up_after_h": 24}, "poll_s": 0.2}
    node.config_path.write_text(yaml.safe_dump(config))
    try:
        orthanc.start()
        node.start()
        # The scanner sends the study to both the PACS and the node; the node sends its results to the PACS.
        stored = run_dcmtk("storescu", ["-aet", "SCANNER", "-aec", orthanc.aet, "+sd", "+r", "127.0.0.1",
                                        str(orthanc.dicom_port), *map(str, phantom.files)], timeout=300)
        assert stored.returncode == 0, stored.stderr
        assert node.storescu(phantom.files).returncode == 0
        uid = phantom.truth["study_instance_uid"]

        def results_in_orthanc() -> bool:  # one query per result series (Modality is indexed by Orthanc)
            return all(orthanc.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": uid,
                                                                                  "Modality": modality}})
                       for modality in ("SEG", "SR", "OT"))

        wait_for(results_in_orthanc, 180, "SEG, SR and SC delivered to Orthanc", interval=0.5)
        delivered_classes = {i["SOPClassUID"] for i in orthanc.study_instances(uid)}
        assert {SEG, SR_3D, SC} <= delivered_classes
        results = node.root / "results" / uid
        yield Delivered(phantom, orthanc, results, json.loads((results / "results.json").read_text()), uid)
    finally:
        node.stop()
        orthanc.stop()


@pytest.fixture(scope="module")
def quantified(delivered: Delivered) -> SeriesResult:
    """The same study quantified here (same default settings as the node): its label volume is the
    reference the SEG's masks must give back."""
    result = quantify_files(delivered.phantom.pet_files, delivered.phantom.ct_files, QuantSettings())
    assert [les.suv_max for les in result.lesions] == pytest.approx(
        [les["suv_max"] for les in delivered.doc["lesions"]], abs=1e-4)
    return result


def dcmqi_tool(name: str) -> str:
    """dcmqi's command-line converters, installed with the Python package `dcmqi` (pyproject test extra)
    beside this interpreter."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else require_tool(name)


def test_dcmqi_seg_gives_back_the_masks_on_the_pet_grid(delivered: Delivered, quantified: SeriesResult,
                                                        tmp_path: Path) -> None:
    out = subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(delivered.results / "seg.dcm"),
                          "--outputDirectory", str(tmp_path), "-t", "nrrd"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    attributes = {a["labelID"]: a for group in meta["segmentAttributes"] for a in group}
    pet = quantified.suv_volume.to_sitk()
    assert sorted(attributes) == [les.id for les in quantified.lesions]
    for lesion in quantified.lesions:
        attr = attributes[lesion.id]
        assert attr["SegmentLabel"].startswith(("Lesion", "Remnant", "Physiological"))
        suffix = " non-avid (CT)" if lesion.detection == "ct" else ""  # CT-found: the display text everywhere
        assert attr["TrackingIdentifier"] == f"Lesion {lesion.id}{suffix}"
        assert attr["recommendedDisplayRGBValue"] != [128, 174, 128]  # our colour, not dcmqi's default
        image = sitk.ReadImage(str(tmp_path / f"{lesion.id}.nrrd"))
        # Same geometry as the PET series: spacing, orientation, and an origin on the PET grid.
        assert image.GetSpacing() == pytest.approx(pet.GetSpacing(), abs=1e-3)
        assert image.GetDirection() == pytest.approx(pet.GetDirection(), abs=1e-4)
        offset = pet.TransformPhysicalPointToContinuousIndex(image.GetOrigin())
        assert offset == pytest.approx(np.round(offset), abs=1e-2)
        on_pet = sitk.GetArrayFromImage(sitk.Resample(image, pet, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
        expected = quantified.labels == lesion.mask_label
        dice = 2 * np.logical_and(on_pet, expected).sum() / (on_pet.sum() + expected.sum())
        assert dice >= 0.99, (lesion.id, dice)


def _items(group: dict[str, Any]) -> dict[tuple[str, str | None], tuple[float, str]]:
    out = {}
    for m in group["measurementItems"]:
        derivation = m.get("derivationModifier", {}).get("CodeValue")
        out[(m["quantity"]["CodeValue"], derivation)] = (float(m["value"]), m["units"]["CodeValue"])
    return out


def test_dcmqi_reads_the_sr_values_equal_to_results_json(delivered: Delivered, tmp_path: Path) -> None:
    target = tmp_path / "sr.json"
    out = subprocess.run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(delivered.results / "sr.dcm"),
                          "--outputMetadata", str(target)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and target.exists(), out.stdout + out.stderr
    report = json.loads(target.read_text())
    assert report["observerContext"]["ObserverType"] == "DEVICE"
    assert report["procedureReported"]["CodeValue"] == "702767007"
    volumetric = {g["TrackingUniqueIdentifier"]: g for g in report["Measurements"] if "ReferencedSegment" in g}
    planar = {g["TrackingUniqueIdentifier"]: g for g in report["Measurements"] if "ReferencedSegment" not in g}
    lesions = delivered.doc["lesions"]
    assert len(volumetric) == len(planar) == len(lesions)
    for lesion in lesions:
        group = volumetric[lesion["tracking_uid"]]
        assert group["ReferencedSegment"] == lesion["id"] and group["TrackingIdentifier"] == lesion["tracking_id"]
        assert group["measurementMethod"]["CodeValue"] == "126410"  # SUV body weight calculation method
        assert group["measurementAlgorithmIdentification"]["AlgorithmName"] == "iodine-node"
        values = _items(group)
        suv = "g/ml{SUVbw}"
        for key, name, unit in [((SUVBW, MAXIMUM), "suv_max", suv), ((SUVBW, MEAN), "suv_mean", suv),
                                ((SUVBW, PEAK), "suv_peak", suv), ((VOLUME, None), "volume_ml", "ml")]:
            value, got_unit = values[key]
            assert got_unit == unit and value == pytest.approx(lesion[name], rel=FOUR_DIGITS), (lesion["id"], name)
        if lesion["label"] == "metastasis":
            assert group["Finding"]["CodeValue"] == "52988006"
            assert group["FindingSite"]["CodingSchemeDesignator"] == "SCT"
        point = _items(planar[lesion["tracking_uid"]])
        assert point[(SUVBW, MAXIMUM)][0] == pytest.approx(lesion["suv_max"], rel=FOUR_DIGITS)
        assert point[(SUVBW, PEAK)][0] == pytest.approx(lesion["suv_peak"], rel=FOUR_DIGITS)


def test_dcmjs_reads_seg_and_sr_and_frames_reference_pet_in_orthanc(delivered: Delivered,
                                                                   quantified: SeriesResult) -> None:
    parsed = node_script("dcmjs-read.mjs", str(delivered.results / "seg.dcm"), str(delivered.results / "sr.dcm"))
    in_orthanc = {i["SOPInstanceUID"]: i["Modality"] for i in delivered.orthanc.study_instances(delivered.study_uid)}
    lesions = {les["id"]: les for les in delivered.doc["lesions"]}
    seg, sr = parsed["seg"], parsed["sr"]
    assert seg["sopInstanceUid"] in in_orthanc and sr["sopInstanceUid"] in in_orthanc
    assert [s["number"] for s in seg["segments"]] == sorted(lesions)
    assert all(len(s["cielab"]) == 3 for s in seg["segments"])
    index = {uid: k for k, uid in enumerate(quantified.pet_sop_uids)}
    for lesion in quantified.lesions:
        frames = [f for f in seg["frames"] if f["segment"] == lesion.id]
        sources = {uid for f in frames for uid in f["sources"]}
        assert sources and all(in_orthanc.get(uid) == "PT" for uid in sources), lesion.id
        # One frame per PET slice the lesion occupies, each naming that slice.
        slices = {int(k) for k in np.nonzero((quantified.labels == lesion.mask_label).any(axis=(1, 2)))[0]}
        assert {index[uid] for uid in sources} == slices and len(frames) == len(slices)
    groups = sr["groups"]
    for lesion_id, lesion in lesions.items():
        mine = [g for g in groups if g["trackingUid"] == lesion["tracking_uid"]]
        point = next(g for g in mine if g["scoord"])
        volume = next(g for g in mine if g.get("segment") is not None)
        assert volume["segment"] == lesion_id and point["comment"].startswith(("Lesion", "Remnant", "Physiological"))
        (scoord,) = point["scoord"]
        assert scoord["graphicType"] == "POINT" and in_orthanc.get(scoord["image"]) == "PT"
        nums = {(n["name"], n["derivation"]): n for n in point["nums"]}
        assert nums[(SUVBW, MAXIMUM)]["value"] == pytest.approx(lesion["suv_max"], rel=FOUR_DIGITS)
        # The point is on the lesion's hottest voxel: the SUV there is its SUVmax.
        k = quantified.pet_sop_uids.index(scoord["image"])
        col, row = (int(v - 0.5) for v in scoord["data"])
        assert quantified.suv_volume.array[k, row, col] == pytest.approx(lesion["suv_max"], rel=FOUR_DIGITS)


def _shows(text: str, value: float) -> bool:
    """Whether the panel text under a lesion's label starts with `value` as OHIF prints it (three
    significant digits, JavaScript's toPrecision(3): "6.50", "328")."""
    found = re.match(r"\s*(\d+(?:\.\d+)?)\s", text)
    return found is not None and abs(float(found[1]) - value) <= 0.5 * 10 ** (math.floor(math.log10(value)) - 2) + 1e-9


def test_ohif_shows_segments_measurements_and_summary(delivered: Delivered, tmp_path: Path) -> None:
    from tests.viewer_server import OHIF_DIST, ViewerServer

    require_tool("chromium")
    if not (OHIF_DIST / "index.html").is_file():
        message = "OHIF build missing: run `make viewer`"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    lesions = delivered.doc["lesions"]
    segments = pydicom.dcmread(delivered.results / "seg.dcm", stop_before_pixels=True).SegmentSequence
    labels = [s.SegmentLabel for s in sorted(segments, key=lambda s: s.SegmentNumber)]
    expected = tmp_path / "expected.json"
    jump = 1  # the second lesion: not the one on screen when the SR opens
    expected.write_text(json.dumps({"segments": labels, "lesions": labels, "jump": jump}))
    server = ViewerServer(delivered.orthanc.url).start()
    try:
        report = node_script("ohif.mjs", server.url, delivered.study_uid, str(ARTEFACTS), str(expected), timeout=900)
    finally:
        server.stop()
    (ARTEFACTS / "ohif-report.json").write_text(json.dumps(report, indent=1))
    assert report["errors"] == [], (report["errors"], report["pageErrors"])
    steps = report["steps"]
    for description in ("iodine-node lesion SEG", "iodine-node lesion measurements (TID 1500)",
                        "iodine-node summary (MIP and lesion table)"):
        assert description in steps["study"]["text"]
    assert all(label in steps["seg"]["text"] for label in labels)  # the segment list
    # The measurement panel: every lesion by its label, with its SUVmax under it (OHIF prints 3
    # significant digits). OHIF recomputes the probe of the lesion on screen from the image and, in
    # 3.13, loses that one value (docs/viewing.md): every other lesion must show its SUVmax.
    panel = steps["sr-panel"]["text"]
    starts = [panel.index(label) for label in labels]
    shown = [_shows(panel[a + len(label):], les["suv_max"]) for label, les, a in zip(labels, lesions, starts,
                                                                                      strict=True)]
    assert sum(shown) >= len(lesions) - 1, list(zip(labels, shown, strict=True))
    # Jumping to a lesion from the panel shows the PET slice of its SUVmax (the SR's point).
    sr = pydicom.dcmread(delivered.results / "sr.dcm")
    target = next(uid for uid, label in _points(sr) if label == labels[jump])
    number = next(int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in delivered.phantom.pet_files
                  if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == target)
    assert re.search(rf"\bI:\s*{number} \({number}/", steps["sr-jump"]["text"]), number
    assert "iodine-node summary" in steps["sc"]["text"]
    for name in ("study", "seg", "seg-jump", "sr-panel", "sr-jump", "sc"):
        assert Path(steps[name]["screenshot"]).stat().st_size > 10_000


def _points(sr: pydicom.Dataset) -> list[tuple[str, str]]:
    """(referenced PET SOP Instance UID, comment) of each planar group's point in the SR."""
    out = []
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in imaging.ContentSequence:
        items = group.ContentSequence
        scoord = [i for i in items if i.ValueType == "SCOORD"]
        comment = [i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
        if scoord and comment:
            out.append((scoord[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID, comment[0]))
    return out
