"""Detection accuracy with realistic noise over several seeds: sensitivity per lesion size and
false positives per scan, plus physiological/remnant labelling. Printed and saved to bench/out.

A truth metastasis counts as found when a lesion labelled metastasis lies within 10 mm of its
centre; every other focus labelled metastasis is a false positive.
Usage: python -m bench.accuracy [--seeds 10] [--size wholebody] [--noise 0.15]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT  # noqa: E402
from node.phantom import PhantomOptions, generate_phantom  # noqa: E402
from node.quant.study import QuantSettings, quantify_files  # noqa: E402

MATCH_MM = 10.0


def evaluate(truth: dict, lesions: list) -> dict:
    mets = [r for r in truth["regions"] if r["kind"] == "metastasis"]
    found_by_region = {}
    used = set()
    for r in mets:
        c = np.array(r["center_mm"])
        cands = [les for les in lesions if les.label == "metastasis"
                 and np.linalg.norm(np.array(les.centroid_mm) - c) <= MATCH_MM]
        if cands:
            best = min(cands, key=lambda les: np.linalg.norm(np.array(les.centroid_mm) - c))
            found_by_region[r["name"]] = best
            used.add(best.id)
    fps = [les for les in lesions if les.label == "metastasis" and les.id not in used]
    remnant = next((r for r in truth["regions"] if r["kind"] == "remnant"), None)
    remnant_ok = remnant is not None and any(
        les.label == "remnant" and np.linalg.norm(np.array(les.centroid_mm) - np.array(remnant["center_mm"])) < 10
        for les in lesions)
    phys_as_met = 0
    for les in fps:
        nearest = min(truth["regions"], key=lambda r: np.linalg.norm(np.array(r["center_mm"]) - les.centroid_mm))
        if nearest["kind"] == "physiological":
            phys_as_met += 1
    return {"found": {r["name"]: r["name"] in found_by_region for r in mets},
            "diameters": {r["name"]: r["diameter_mm"] for r in mets},
            "false_positives": len(fps), "physiological_as_metastasis": phys_as_met, "remnant_labelled": remnant_ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
    parser.add_argument("--noise", type=float, default=0.15)
    args = parser.parse_args()
    rows = []
    for seed in range(1, args.seeds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            ph = generate_phantom(tmp, PhantomOptions(seed=seed, size=args.size, noise=args.noise))
            result = quantify_files(ph.pet_files, ph.ct_files, QuantSettings())
            row = evaluate(ph.truth, result.lesions)
        rows.append(row)
        missed = [n for n, ok in row["found"].items() if not ok]
        print(f"seed {seed:2d}: found {sum(row['found'].values())}/{len(row['found'])} metastases, "
              f"{row['false_positives']} false positive(s), remnant {'ok' if row['remnant_labelled'] else 'MISSED'}"
              + (f", missed {missed}" if missed else ""), flush=True)
    by_size: dict[str, list[bool]] = {}
    for row in rows:
        for name, ok in row["found"].items():
            d = row["diameters"][name]
            band = "6-9 mm" if d < 10 else ("10-19 mm" if d < 20 else ">= 20 mm")
            by_size.setdefault(band, []).append(ok)
    total = [ok for row in rows for ok in row["found"].values()]
    print(f"\n{args.size}, noise {args.noise}, {args.seeds} seeds")
    print(f"sensitivity: {100 * np.mean(total):.1f} % ({sum(total)}/{len(total)})")
    for band in ("6-9 mm", "10-19 mm", ">= 20 mm"):
        if band in by_size:
            v = by_size[band]
            print(f"  {band:<9} {100 * np.mean(v):5.1f} % ({sum(v)}/{len(v)})")
    fp = [row["false_positives"] for row in rows]
    print(f"false positives per scan: mean {np.mean(fp):.2f}, max {max(fp)}; physiological called metastasis: "
          f"{sum(row['physiological_as_metastasis'] for row in rows)}; remnant labelled in "
          f"{sum(row['remnant_labelled'] for row in rows)}/{len(rows)}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "accuracy.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
