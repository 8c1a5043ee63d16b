"""Serial scans through the running node: the TSH comparison (separate administrations), lesion
dosimetry (one administration imaged 2-3 times), TSH from a sidecar, tracking UIDs carried over,
the comparison in the SR and on a side-by-side SC page, and priors fetched from a real Orthanc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from node.compare.dosimetry import lesion_dose
from tests.conftest import dciodvfy_errors
from tests.peers import NodeProcess, wait_for

pytestmark = pytest.mark.peer  # every test runs node processes (and Orthanc, dciodvfy)


def push_in_turn(n: NodeProcess, *studies) -> dict:
    """Push studies one after the other, each quantified before the next; the last one's results.json."""
    for count, study in enumerate(studies, start=1):
        assert n.storescu(study.files).returncode == 0
        wait_for(lambda count=count: len([j for j in n.jobs() if j["state"] == "done"]) == count, 300,
                 f"job {count}")
    return json.loads((n.root / "results" / studies[-1].truth["study_instance_uid"] / "results.json").read_text())


def nearest(regions: list[dict], centre: list[float]) -> dict:
    return min(regions, key=lambda r: np.linalg.norm(np.subtract(r["center_mm"], centre)))


def sr_groups(path: Path) -> list[dict]:
    """Per measurement group of a TID 1500 SR: tracking UID and {concept meaning: value}."""
    sr = pydicom.dcmread(path)
    groups = []
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning != "Imaging Measurements":
            continue
        for group in item.ContentSequence:
            entry: dict = {"values": {}}
            for c in group.ContentSequence:
                name = c.ConceptNameCodeSequence[0].CodeMeaning
                if name == "Tracking Unique Identifier":
                    entry["tracking_uid"] = c.UID
                elif c.ValueType == "NUM":
                    entry["values"][name] = float(c.MeasuredValueSequence[0].NumericValue)
                elif c.ValueType == "CODE":
                    entry["values"][name] = c.ConceptCodeSequence[0].CodeMeaning
            groups.append(entry)
    return groups


def test_tsh_pair_compared_with_tracking_sr_and_side_by_side_page(peers, phantom_factory, tmp_path: Path) -> None:
    """TSH 30 (from a sidecar CSV), then TSH 120 (from the header): the second scan's results compare
    lesion by lesion, keep scan 1's tracking UIDs in SEG and SR, and add a side-by-side SC page."""
    one = phantom_factory(seed=4, noise=0.0, tsh=31)
    two = phantom_factory(seed=4, noise=0.0, timepoint=2, tsh=120)  # the session's copy: read, never changed
    sidecars = tmp_path / "tsh"
    sidecars.mkdir()
    (sidecars / "lab.csv").write_text(f"AccessionNumber,TSH\n{one.truth['accession_number']},28.5\n")
    n = peers[1]({"comparison": {"tsh": {"sidecar_dir": str(sidecars)}}})
    n.start()
    doc = push_in_turn(n, one, two)
    comparison = doc["comparison"]
    assert comparison["prior_study_instance_uid"] == one.truth["study_instance_uid"]
    assert comparison["kind"] == "separate administrations" and "dosimetry" not in doc
    # TSH from both sources: the sidecar wins over the header's 31 for scan 1; scan 2 from the header.
    first, second = comparison["time_points"]
    assert (first["tsh_uiu_per_ml"], first["tsh_source"]) == (28.5, "sidecar lab.csv")
    assert (second["tsh_uiu_per_ml"], second["tsh_source"]) == (120.0, "attribute AdditionalPatientHistory")
    assert comparison["registration"]["method"].startswith("rigid CT-CT")

    truth2 = two.truth["regions"]
    rows = comparison["lesions"]
    lost = [r for r in rows if r["category"].startswith("lost")]
    lost_truth = [r for r in truth2 if r.get("change_from_timepoint_1") == "lost"]
    assert len(lost) == 1 and len(lost_truth) == 1
    assert np.linalg.norm(np.subtract(lost[0]["prior_centroid_mapped_mm"], lost_truth[0]["center_mm"])) < 5
    assert comparison["refractory_candidates"] == [lost[0]["prior_id"]]
    # One lesion lost its uptake at the higher TSH: some, not all, lesions are avid there.
    assert comparison["summary"]["higher_tsh_scan"] == "current"
    assert comparison["summary"]["avid_at_higher_tsh"] == "some"
    checked = 0
    for r in rows:  # every matched lesion's category agrees with how the generator changed it
        if r["current_id"] is None or r["prior_id"] is None:
            continue
        centre = next(les["centroid_mm"] for les in doc["lesions"] if les["id"] == r["current_id"])
        region = nearest(truth2, centre)
        expected = {"gained": "gained uptake", "reduced": "reduced uptake", "stable": "stable"}.get(
            region.get("change_from_timepoint_1"))
        if expected and region["diameter_mm"] >= 10:
            assert r["category"] == expected, (region["name"], r)
            checked += 1
    assert checked >= 6

    # Tracking: a matched lesion keeps scan 1's UID in results.json, the SEG and the SR.
    out1 = n.root / "results" / one.truth["study_instance_uid"]
    out2 = n.root / "results" / two.truth["study_instance_uid"]
    doc1 = json.loads((out1 / "results.json").read_text())
    uid1 = {les["id"]: les["tracking_uid"] for les in doc1["lesions"]}
    uid2 = {les["id"]: les["tracking_uid"] for les in doc["lesions"]}
    matched = [r for r in rows if r["current_id"] is not None and r["prior_id"] is not None]
    assert matched and all(uid2[r["current_id"]] == uid1[r["prior_id"]] for r in matched)
    seg = pydicom.dcmread(out2 / "seg.dcm")
    seg_uids = {int(s.SegmentNumber): s.TrackingUID for s in seg.SegmentSequence}
    assert all(seg_uids[r["current_id"]] == uid1[r["prior_id"]] for r in matched)
    groups = {g.get("tracking_uid"): g["values"] for g in sr_groups(out2 / "sr.dcm")}
    for r in matched:
        values = groups[uid1[r["prior_id"]]]
        assert values["SUVbw max at prior time point"] == pytest.approx(r["suv_max"][0], rel=1e-6)
        assert values["Iodine uptake change since prior time point"].lower().startswith(r["category"].split()[0])
    lost_group = groups[uid1[lost[0]["prior_id"]]]  # the lesion gone since keeps its group and UID
    assert lost_group["Iodine uptake change since prior time point"].startswith("Lost uptake")
    assert "SUVbw max at the mapped site of the prior lesion" in lost_group

    pages = sorted(out2.glob("sc-*.dcm"))
    assert len(pages) == 2  # the summary, then the side-by-side comparison page
    side = pydicom.dcmread(pages[-1]).pixel_array
    left, right = side[120:640, 16:500], side[120:640, 524:1008]
    assert (left < 200).any() and (right < 200).any()  # both MIPs drawn (inverse grey: uptake is dark)
    reds = (side[..., 0] > 200) & (side[..., 1] < 40) & (side[..., 2] < 40)
    assert reds[120:640, 16:1008].any()  # the lost lesion is marked in its category's colour
    errors = [e for p in [out2 / "seg.dcm", out2 / "sr.dcm", *pages] for e in dciodvfy_errors(p)]
    assert errors == []

    # A lab value arriving after the job: `jobs retry` reprocesses and the sidecar now wins.
    (sidecars / "late.json").write_text(json.dumps({two.truth["accession_number"]: 131}))
    job = next(j for j in n.jobs() if j["study_uid"] == two.truth["study_instance_uid"])
    assert n.cli("jobs", "retry", str(job["id"])).returncode == 0
    wait_for(lambda: n.db("SELECT state, attempts FROM jobs WHERE id=?", (job["id"],))[0]["attempts"] == 2
             and n.db("SELECT state FROM jobs WHERE id=?", (job["id"],))[0]["state"] == "done", 300, "the rerun")
    again = json.loads((out2 / "results.json").read_text())["comparison"]["time_points"][1]
    assert (again["tsh_uiu_per_ml"], again["tsh_source"]) == (131.0, "sidecar late.json")


def _dose_rows(doc: dict, truths: list[dict], times: list[float]) -> list[tuple[dict, dict, float, float]]:
    """(dosimetry row, truth region, reference-method dose, full-kinetics dose) per dosed lesion."""
    out = []
    for row in doc["dosimetry"]["lesions"]:
        if "gy_per_gbq" not in row:
            continue
        centre = next(les["centroid_mm"] for les in doc["lesions"] if les["id"] == row["current_id"])
        region = nearest(truths[-1]["regions"], centre)
        if "analytic_131i" not in region:
            continue
        retention = [next(r for r in t["regions"] if r["name"] == region["name"])["analytic_131i"]["retention_percent"]
                     for t in truths]
        reference = lesion_dose(times, retention, region["analytic_131i"]["mass_g"]).gy_per_gbq
        out.append((row, region, reference, region["analytic_131i"]["gy_per_gbq"]))
    return out


def test_24h_and_96h_dosimetry_reproduces_the_analytic_dose(peers, phantom_factory) -> None:
    """One administration imaged at 24 h and 96 h: per-lesion 131I dose within 5 % of the analytic dose
    of the same method from the phantom's true retention and mass, for lesions >= 2x the resolution."""
    scans = [phantom_factory(seed=6, noise=0.0, uptake_h=t) for t in (24.0, 96.0)]
    n = peers[1]()
    n.start()
    doc = push_in_turn(n, *scans)
    assert "comparison" not in doc  # same administration: kinetics, not a TSH comparison
    dosimetry = doc["dosimetry"]
    assert [p["uptake_time_h"] for p in dosimetry["time_points"]] == [24.0, 96.0]
    rows = _dose_rows(doc, [s.truth for s in scans], [24.0, 96.0])
    reliable = [(row, region, ref) for row, region, ref, _ in rows if row["mass_reliable"]]
    assert len(reliable) >= 3
    for row, region, ref in reliable:
        assert row["model"] == "mono-exponential"
        assert row["gy_per_gbq"] == pytest.approx(ref, rel=0.05), region["name"]
        assert row["biological_half_life_h"] == pytest.approx(region["biological_half_life_h"], rel=0.10)
        assert row["predicted_dose_gy"]["3.7_gbq"] == pytest.approx(3.7 * row["gy_per_gbq"], rel=0.01)
    # Small lesions are flagged: their PET volume (hence mass) is overestimated.
    assert all(not row["mass_reliable"] for row, region, _, _ in rows if region["diameter_mm"] <= 10)
    # Dosimetry in the SR under the private scheme.
    groups = sr_groups(n.root / "results" / scans[-1].truth["study_instance_uid"] / "sr.dcm")
    doses = [g["values"]["Predicted 131I absorbed dose per administered activity"] for g in groups
             if "Predicted 131I absorbed dose per administered activity" in g["values"]]
    assert sorted(round(d, 3) for d in doses) == sorted(round(r["gy_per_gbq"], 3) for r in doc["dosimetry"]["lesions"]
                                                        if "gy_per_gbq" in r)
    # Each dose carries its uncertainty (results.json and SR) and the treat decision rests on its interval.
    dosed = [r for r in doc["dosimetry"]["lesions"] if "gy_per_gbq" in r]
    assert all(r["gy_per_gbq_ci95"][0] < r["gy_per_gbq"] < r["gy_per_gbq_ci95"][1] for r in dosed)
    sd_name = "Standard uncertainty of predicted 131I dose per activity"
    sds = sorted(round(g["values"][sd_name], 3) for g in groups if sd_name in g["values"])
    assert sds == sorted(round(r["gy_per_gbq_sd"], 3) for r in dosed)
    decisions = {g["values"]["Predicted dose reaches treat threshold"] for g in groups
                 if "Predicted dose reaches treat threshold" in g["values"]}
    assert decisions and decisions <= {"Reaches (lower 95 % bound)", "Uncertain (95 % interval spans it)",
                                       "Below (upper 95 % bound)"}
    # ... and on a Secondary Capture page after the summary, valid DICOM.
    out = n.root / "results" / scans[-1].truth["study_instance_uid"]
    pages = sorted(out.glob("sc-*.dcm"))
    assert len(pages) == 2 and not [e for p in pages for e in dciodvfy_errors(p)]
    table = pydicom.dcmread(pages[-1]).pixel_array[140:400]
    assert (table < 128).any()  # rows of the dose table are drawn


def test_three_time_points_fit_uptake_and_washout(peers, phantom_factory) -> None:
    """4 h, 24 h and 96 h after one administration: the uptake + washout fit reproduces the phantom's
    true time-integrated 131I dose (its uptake phase included) within 5 %."""
    times = [4.0, 24.0, 96.0]
    scans = [phantom_factory(seed=6, noise=0.0, uptake_h=t) for t in times]  # 24 h and 96 h made once
    n = peers[1]()
    n.start()
    doc = push_in_turn(n, *scans)
    assert [p["uptake_time_h"] for p in doc["dosimetry"]["time_points"]] == times
    rows = _dose_rows(doc, [s.truth for s in scans], times)
    reliable = [(row, region, full) for row, region, _, full in rows if row["mass_reliable"]]
    assert len(reliable) >= 3
    for row, region, full in reliable:
        assert row["model"] == "uptake + washout" and row["times_h"] == times
        assert row["gy_per_gbq"] == pytest.approx(full, rel=0.05), region["name"]


@pytest.mark.parametrize("retrieve", ["move", "get"])
def test_prior_fetched_from_orthanc(peers, phantom_factory, retrieve: str) -> None:
    """The first scan is only in the PACS: the node finds it by C-FIND and fetches it by C-MOVE (to
    its own listener) or C-GET, then compares."""
    one = phantom_factory(seed=4, noise=0.0)
    two = phantom_factory(seed=4, noise=0.0, timepoint=2, tsh=120)  # 120: a later time point's default
    make_orthanc, make_node = peers
    n = make_node()
    orthanc = make_orthanc(modalities={"node": [n.ae_title, "127.0.0.1", n.port]})
    query = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "retrieve": retrieve,
             "timeout_s": 120}
    config = yaml.safe_load(n.config_path.read_text())
    config["comparison"] = {"priors": {"query": query}}
    n.config_path.write_text(yaml.safe_dump(config))
    orthanc.start()
    for path in one.files:  # the scanner sent scan 1 to the PACS only
        orthanc.post("/instances", path.read_bytes())
    n.start()
    assert n.storescu(two.files).returncode == 0
    uid1, uid2 = one.truth["study_instance_uid"], two.truth["study_instance_uid"]
    wait_for(lambda: (n.root / "results" / uid2 / "results.json").is_file(), 300, "the second scan's results")
    doc = json.loads((n.root / "results" / uid2 / "results.json").read_text())
    assert "prior_study_instance_uid" in doc.get("comparison", {}), (doc.get("comparison"), n.log()[-3000:])
    assert doc["comparison"]["prior_study_instance_uid"] == uid1
    assert n.instance_count(uid1) == len(one.files)  # PET and CT of the prior, all of it
    assert any(r["category"].startswith("lost") for r in doc["comparison"]["lesions"])
    assert f"by C-{retrieve.upper()}" in n.log()
    # The retrieved prior is quantified as a study of its own, without asking the PACS in turn.
    wait_for(lambda: len([j for j in n.jobs() if j["state"] == "done"]) == 2, 300, "the prior's own job")
    assert n.log().count("for earlier studies of the patient") == 1 and n.log().count("retrieved (") == 1
