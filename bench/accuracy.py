"""Detection accuracy on realistic 124I phantoms as a curve over image noise: sensitivity per lesion
size and false positives per scan, for PET foci and for CT-found (non-avid) lung nodules.

The phantom is the realistic variant (docs/phantom.md): lobulated heterogeneous lesions, level II/VI
nodes, CT-only nodules beside vessels, textured liver, blood pool, bowel loops, positron-range tails,
breathing blur; the noise CoV at soft tissue is set per curve point (`noise_model` fixed).

Scoring (truth from truth.json, never seen by the node):
- PET: a truth metastasis counts as found when a PET-detected lesion labelled metastasis lies within
  10 mm of its centre. A PET metastasis matching no truth metastasis is a false positive ("false avid
  focus" when it is also called iodine-avid).
- CT: a non-avid truth lung nodule counts as found when a CT-detected lesion lies within 10 mm. A CT
  lesion within 10 mm of no truth lung lesion (avid or not) is a CT false positive; one on an avid lesion
  that PET missed is counted apart (a real nodule, reported as non-avid).
Usage: python -m bench.accuracy [--seeds 10] [--size small] [--noise 0.1,0.2,0.3,0.38,0.45]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT  # noqa: E402
from node.assemble import quantify_files  # noqa: E402
from node.phantom import PhantomOptions, generate_phantom  # noqa: E402
from node.quant.study import QuantSettings  # noqa: E402

MATCH_MM = 10.0
BANDS = ("< 10 mm", "10-19 mm", ">= 20 mm")


def _near(a: object, b: object) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def band(diameter_mm: float) -> str:
    return BANDS[0] if diameter_mm < 10 else (BANDS[1] if diameter_mm < 20 else BANDS[2])


def evaluate(truth: dict, lesions: list) -> dict:
    """Per-scan scoring (module docstring)."""
    get = (lambda les, k, d=None: les.get(k, d)) if lesions and isinstance(lesions[0], dict) else (
        lambda les, k, d=None: getattr(les, k, d))
    pet = [les for les in lesions if get(les, "detection", "pet") == "pet" and get(les, "label") == "metastasis"]
    ct = [les for les in lesions if get(les, "detection", "pet") == "ct"]
    mets = [r for r in truth["regions"] if r["kind"] == "metastasis"]
    used: set[int] = set()
    found = {}
    for r in mets:
        cands = [les for les in pet if _near(get(les, "centroid_mm"), r["center_mm"]) <= MATCH_MM]
        if cands:
            best = min(cands, key=lambda les: _near(get(les, "centroid_mm"), r["center_mm"]))
            used.add(get(best, "id"))
        found[r["name"]] = bool(cands)
    fps = [les for les in pet if get(les, "id") not in used]
    nonavid = [r for r in truth["regions"] if r["kind"] == "non-avid" and r["site"] == "lung"]
    lung_truth = [r for r in truth["regions"] if r["site"] == "lung" and r["kind"] in ("metastasis", "non-avid")]
    ct_found = {r["name"]: any(_near(get(les, "centroid_mm"), r["center_mm"]) <= MATCH_MM for les in ct)
                for r in nonavid}
    ct_fp = sum(1 for les in ct if not any(_near(get(les, "centroid_mm"), r["center_mm"]) <= MATCH_MM
                                           for r in lung_truth))
    ct_on_avid = sum(1 for les in ct if any(_near(get(les, "centroid_mm"), r["center_mm"]) <= MATCH_MM
                                            for r in lung_truth if r["kind"] == "metastasis"))
    remnant = next((r for r in truth["regions"] if r["kind"] == "remnant"), None)
    remnant_ok = remnant is not None and any(
        get(les, "label") == "remnant" and _near(get(les, "centroid_mm"), remnant["center_mm"]) < MATCH_MM
        for les in lesions)
    return {"found": found, "diameters": {r["name"]: r["diameter_mm"] for r in mets},
            "false_positives": len(fps), "false_avid_foci": sum(1 for les in fps if get(les, "iodine_avid")),
            "false_positive_sites": [get(les, "site") for les in fps],
            "ct_found": ct_found, "ct_diameters": {r["name"]: r["diameter_mm"] for r in nonavid},
            "ct_false_positives": ct_fp, "ct_on_avid_lesion": ct_on_avid, "remnant_labelled": remnant_ok}


def summarise(rows: list[dict]) -> dict:
    by_band: dict[str, list[bool]] = {b: [] for b in BANDS}
    for row in rows:
        for name, ok in row["found"].items():
            by_band[band(row["diameters"][name])].append(ok)
    ge10 = by_band[BANDS[1]] + by_band[BANDS[2]]
    ct = [ok for row in rows for ok in row["ct_found"].values()]
    return {
        "scans": len(rows),
        "sensitivity_by_size": {b: [int(sum(v)), len(v)] for b, v in by_band.items()},
        "sensitivity_ge_10mm": float(np.mean(ge10)) if ge10 else None,
        "false_positives_per_scan": float(np.mean([r["false_positives"] for r in rows])),
        "false_avid_foci_per_scan": float(np.mean([r["false_avid_foci"] for r in rows])),
        "max_false_positives": int(max(r["false_positives"] for r in rows)),
        "ct_sensitivity": [int(sum(ct)), len(ct)],
        "ct_false_positives_per_scan": float(np.mean([r["ct_false_positives"] for r in rows])),
        "ct_on_avid_lesion_per_scan": float(np.mean([r["ct_on_avid_lesion"] for r in rows])),
        "remnant_labelled": [int(sum(r["remnant_labelled"] for r in rows)), len(rows)],
    }


def run(size: str, seeds: int, noise: float, realistic: bool = True, log: bool = True) -> tuple[list[dict], dict]:
    rows = []
    for seed in range(1, seeds + 1):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ph = generate_phantom(tmp, PhantomOptions(seed=seed, size=size, noise=noise, realistic=realistic))
            result = quantify_files(ph.pet_files, ph.ct_files, QuantSettings())
            row = evaluate(ph.truth, result.lesions)
        rows.append(row)
        if log:
            missed = [n for n, ok in row["found"].items() if not ok]
            print(f"  noise {noise:.2f} seed {seed:2d}: PET {sum(row['found'].values())}/{len(row['found'])}, "
                  f"{row['false_positives']} FP ({row['false_avid_foci']} avid) {row['false_positive_sites']}; "
                  f"CT {sum(row['ct_found'].values())}/{len(row['ct_found'])}, {row['ct_false_positives']} FP"
                  + (f"; missed {missed}" if missed else "") + f" [{time.perf_counter() - started:.0f} s]",
                  flush=True)
    return rows, summarise(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--size", default="small", choices=("small", "wholebody"))
    parser.add_argument("--noise", default="0.1,0.2,0.3,0.38,0.45", help="comma-separated CoV at soft tissue")
    parser.add_argument("--classic", action="store_true", help="the classic phantom instead of the realistic one")
    args = parser.parse_args()
    curve = {}
    for noise in (float(v) for v in args.noise.split(",")):
        _, summary = run(args.size, args.seeds, noise, realistic=not args.classic)
        curve[f"{noise:g}"] = summary
    print(f"\n{'realistic' if not args.classic else 'classic'} phantom, {args.size}, {args.seeds} seeds per point")
    print("| noise CoV | sens. < 10 mm | 10-19 mm | >= 20 mm | >= 10 mm | FP / scan (max) | false avid foci / scan "
          "| CT nodules found | CT FP / scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    for noise, s in curve.items():
        cells = [f"{100 * a / b:.0f} % ({a}/{b})" if b else "-" for a, b in s["sensitivity_by_size"].values()]
        a, b = s["ct_sensitivity"]
        print(f"| {noise} | {' | '.join(cells)} | {100 * (s['sensitivity_ge_10mm'] or 0):.1f} % | "
              f"{s['false_positives_per_scan']:.2f} ({s['max_false_positives']}) | "
              f"{s['false_avid_foci_per_scan']:.2f} | "
              f"{100 * a / max(b, 1):.0f} % ({a}/{b}) | {s['ct_false_positives_per_scan']:.2f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"accuracy-{args.size}-{'classic' if args.classic else 'realistic'}-{args.noise.replace(',', '_')}.json"
    (OUT / name).write_text(json.dumps(curve, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
