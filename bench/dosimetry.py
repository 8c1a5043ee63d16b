"""131I lesion dosimetry from serial 124I phantom scans over several seeds: the node's Gy/GBq against
(a) the same method applied to the phantom's true retention and mass ("reference method") and
(b) the phantom's true kinetics with its uptake phase ("full kinetics"), for rows the node calls
reliable (mass_reliable) and the flagged rest.

Usage: python -m bench.dosimetry [--seeds 5] [--noise 0.15] [--times 24,96]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.compare.dosimetry import lesion_dose  # noqa: E402
from node.compare.study import ScanView, ct_on_coarse_grid, relate_scans  # noqa: E402
from node.phantom import PhantomOptions, generate_phantom  # noqa: E402
from node.quant.study import QuantSettings, quantify_files, results_document  # noqa: E402


def nearest(regions: list[dict], centre: list[float]) -> dict:
    return min(regions, key=lambda r: np.linalg.norm(np.subtract(r["center_mm"], centre)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--times", default="24,96")
    args = parser.parse_args()
    times = [float(t) for t in args.times.split(",")]
    ratios: dict[str, list[tuple[float, float]]] = {"flagged": [], "reliable": []}
    worst: list[tuple[float, str]] = []
    missing = 0
    for seed in range(1, args.seeds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            views, truths = [], []
            settings = QuantSettings()
            for t in times:
                ph = generate_phantom(Path(tmp) / f"{t}", PhantomOptions(seed=seed, noise=args.noise, uptake_h=t))
                result = quantify_files(ph.pet_files, ph.ct_files, settings)
                views.append(ScanView(results_document(result, settings), result.pet_headers[0],
                                      ct_on_coarse_grid(ph.ct_files)))
                truths.append(ph.truth)
            sections, _, _ = relate_scans(result.suv_volume, views[-1], views[:-1])
        doc = views[-1].doc
        seen = set()
        for row in sections["dosimetry"]["lesions"]:
            centre = next(les["centroid_mm"] for les in doc["lesions"] if les["id"] == row["current_id"])
            region = nearest(truths[-1]["regions"], centre)
            if "analytic_131i" not in region or region["name"] in seen:
                continue
            if "gy_per_gbq" not in row:
                missing += 1
                continue
            seen.add(region["name"])
            retention = [next(r for r in t["regions"] if r["name"] == region["name"])["analytic_131i"]
                         ["retention_percent"] for t in truths]
            reference = lesion_dose(times, retention, region["analytic_131i"]["mass_g"]).gy_per_gbq
            full = region["analytic_131i"]["gy_per_gbq"]
            size = "reliable" if row["mass_reliable"] else "flagged"
            ratios[size].append((row["gy_per_gbq"] / reference, row["gy_per_gbq"] / full))
            if size == "reliable":
                worst.append((abs(row["gy_per_gbq"] / reference - 1), (
                    f"seed {seed} {region['name']} ({region['diameter_mm']:g} mm): "
                    f"dose {row['gy_per_gbq'] / reference:.3f}"
                    f", mass {row['mass_g'] / region['analytic_131i']['mass_g']:.3f}, retention "
                    + " ".join(f"{m / t:.3f}" for m, t in zip(row["percent_injected_activity"], retention,
                                                              strict=True)))))
        print(f"seed {seed}: {len(seen)} lesions dosed", flush=True)
    print(f"\ntimes {times} h, noise {args.noise}, seeds 1-{args.seeds}; ratio node / analytic (median, min-max)")
    for size, values in ratios.items():
        if not values:
            continue
        ref = [a for a, _ in values]
        full = [b for _, b in values]
        within = sum(abs(a - 1) <= 0.05 for a in ref)
        print(f"{size:9s} n={len(values):3d}  vs reference method {statistics.median(ref):.3f} "
              f"({min(ref):.3f}-{max(ref):.3f}), within 5 %: {within}/{len(values)}   "
              f"vs full kinetics {statistics.median(full):.3f} ({min(full):.3f}-{max(full):.3f})")
    print(f"lesions matched at every time point but without a dose: {missing}")
    print("largest deviations of reliable rows (node / truth):")
    for _, line in sorted(worst, reverse=True)[:5]:
        print("  " + line)


if __name__ == "__main__":
    main()
