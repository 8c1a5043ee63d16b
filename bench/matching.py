"""Lesion matching between two withdrawal scans over several seeds: share of correct matches and
of correct change categories (against the generator's truth). Usage: python -m bench.matching [--seeds 10]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.compare.study import (  # noqa: E402
    ComparisonSettings,
    ScanView,
    compare_scans,
    ct_on_coarse_grid,
    pair_scans,
)
from node.phantom import PhantomOptions, generate_phantom  # noqa: E402
from node.quant.study import QuantSettings, quantify_files, results_document  # noqa: E402

EXPECTED = {"gained": "gained uptake", "reduced": "reduced uptake", "stable": "stable",
            "lost": "lost (refractory candidate)"}


def nearest(regions: list[dict], centre: list[float]) -> dict:
    return min(regions, key=lambda r: np.linalg.norm(np.subtract(r["center_mm"], centre)))


def score_seed(seed: int, noise: float) -> tuple[int, int, int, int]:
    """(matched lesions, correctly matched, categories judged, categories right) for one TSH pair of
    small phantoms (metastases; categories for lesions >= 10 mm, as the generator changed them)."""
    matches = correct = cats = cats_ok = 0
    with tempfile.TemporaryDirectory() as tmp:
        one = generate_phantom(Path(tmp) / "1", PhantomOptions(seed=seed, noise=noise))
        two = generate_phantom(Path(tmp) / "2", PhantomOptions(seed=seed, noise=noise, timepoint=2))
        s = QuantSettings()
        r1 = quantify_files(one.pet_files, one.ct_files, s)
        r2 = quantify_files(two.pet_files, two.ct_files, s)
        d1, d2 = results_document(r1, s), results_document(r2, s)
        prior = ScanView(d1, r1.pet_headers[0], ct_on_coarse_grid(one.ct_files))
        current = ScanView(d2, r2.pet_headers[0], ct_on_coarse_grid(two.ct_files))
        settings = ComparisonSettings()
        pairing = pair_scans(prior, current, settings.thresholds.match_gate_mm)
        section = compare_scans(r2.suv_volume, current, prior, pairing, settings)
    by1 = {les["id"]: les for les in d1["lesions"]}
    by2 = {les["id"]: les for les in d2["lesions"]}
    for row in section["lesions"]:
        if row["prior_id"] is None:
            continue
        t1 = nearest(one.truth["regions"], by1[row["prior_id"]]["centroid_mm"])
        if t1["kind"] != "metastasis":
            continue
        change = next(r for r in two.truth["regions"] if r["name"] == t1["name"]).get("change_from_timepoint_1")
        if row["current_id"] is not None:
            t2 = nearest(two.truth["regions"], by2[row["current_id"]]["centroid_mm"])
            matches += 1
            correct += t2["name"] == t1["name"]
        if change in EXPECTED and t1["diameter_mm"] >= 10:
            cats += 1
            cats_ok += row["category"] == EXPECTED[change]
    return matches, correct, cats, cats_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.15)
    args = parser.parse_args()
    matches = correct = cats = cats_ok = 0
    for seed in range(1, args.seeds + 1):
        n, ok, c, c_ok = score_seed(seed, args.noise)
        matches, correct, cats, cats_ok = matches + n, correct + ok, cats + c, cats_ok + c_ok
        print(f"seed {seed:2d}: {ok}/{n} matches correct; categories so far {cats_ok}/{cats}", flush=True)
    print(f"\ncorrect matches: {100 * correct / max(matches, 1):.1f} % ({correct}/{matches}); "
          f"correct categories (lesions >= 10 mm): {100 * cats_ok / max(cats, 1):.1f} % ({cats_ok}/{cats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
