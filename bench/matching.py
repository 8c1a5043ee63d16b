"""Lesion matching and change categories between two withdrawal scans (TSH 30 -> 120) over several
seeds, against the generator's truth, with independent noise per scan.

Scenarios (--scenario, repeatable):
  phantom  the generator's own changes (gained x1.5-2.0, stable x0.92-1.08, reduced x0.45-0.65), 24 h / 24 h
  near     true changes of +-10-20 % (gained x1.10-1.20, reduced x0.80-0.90, stable x1.0), 24 h / 24 h:
           near or inside the limits, so mostly "stable" is the honest answer
  uptake   no true change (every factor 1.0), scan 1 at 24 h and scan 2 at 48 h: washout alone lowers
           SUVmax; nothing may be called gained or reduced

Per scenario: matches, then for metastases matched at both scans, by size band: true change class,
the node's verdict, false calls (a change called where there is none), opposite calls, and the SD of
ln(SUVmax2/SUVmax1) of truly unchanged lesions next to the node's predicted SD.

Usage: python -m bench.matching [--seeds 10] [--noise 0.15] [--scenario phantom --scenario near ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.assemble import quantify_files  # noqa: E402
from node.compare.matching import LOST, ONLY_LOWER  # noqa: E402
from node.compare.study import (  # noqa: E402
    ComparisonSettings,
    ScanView,
    compare_scans,
    ct_on_coarse_grid,
    pair_scans,
)
from node.output.document import results_document  # noqa: E402
from node.phantom import PhantomOptions, generate_phantom  # noqa: E402
from node.phantom.anatomy import Kinetics  # noqa: E402
from node.quant.study import QuantSettings  # noqa: E402

SCENARIOS: dict[str, dict[str, Any]] = {
    "phantom": {"uptake_h": (24.0, 24.0), "factors": None},
    "near": {"uptake_h": (24.0, 24.0), "factors": (("gained", 1.10, 1.20), ("stable", 1.0, 1.0),
                                                   ("reduced", 0.80, 0.90))},
    "uptake": {"uptake_h": (24.0, 48.0), "factors": (("gained", 1.0, 1.0), ("stable", 1.0, 1.0),
                                                     ("reduced", 1.0, 1.0))},
}
EXPECTED = {"gained": "gained uptake", "reduced": "reduced uptake", "stable": "stable"}
BANDS = ((0, 10, "< 10 mm"), (10, 20, "10-19 mm"), (20, 99, ">= 20 mm"))


def nearest(regions: list[dict], centre: list[float]) -> dict:
    return min(regions, key=lambda r: np.linalg.norm(np.subtract(r["center_mm"], centre)))


def true_factor(t1: dict, t2: dict, uptake_h: tuple[float, float]) -> float:
    """The change of avidity the generator applied: SUV ratio at matched uptake times (its kinetics
    between the two uptake times divided out)."""
    kin = Kinetics(uptake_half_time_h=t1.get("uptake_half_time_h", 4.0),
                   biological_half_life_h=t1["biological_half_life_h"])
    washout = kin.relative_retention(uptake_h[1]) / kin.relative_retention(uptake_h[0])
    return t2["suv"] / t1["suv"] / washout


def score_pair(seed: int, noise: float, scenario: str = "phantom") -> tuple[list[dict], dict]:
    """Per-lesion records of one TSH pair of small phantoms, and the comparison section."""
    spec = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory() as tmp:
        one = generate_phantom(Path(tmp) / "1", PhantomOptions(seed=seed, noise=noise, uptake_h=spec["uptake_h"][0]))
        two = generate_phantom(Path(tmp) / "2", PhantomOptions(seed=seed, noise=noise, timepoint=2,
                                                               uptake_h=spec["uptake_h"][1], noise_realisation=1,
                                                               change_factors=spec["factors"]))
        s = QuantSettings()
        r1 = quantify_files(one.pet_files, one.ct_files, s)
        r2 = quantify_files(two.pet_files, two.ct_files, s)
        d1, d2 = results_document(r1, s), results_document(r2, s)
        prior = ScanView(d1, r1.pet_headers[0], ct_on_coarse_grid(one.ct_files), suv=r1.suv_volume)
        current = ScanView(d2, r2.pet_headers[0], ct_on_coarse_grid(two.ct_files), suv=r2.suv_volume)
        settings = ComparisonSettings()
        pairing = pair_scans(prior, current, settings.thresholds.match_gate_mm)
        section = compare_scans(r2.suv_volume, current, prior, pairing, settings)
    by1 = {les["id"]: les for les in d1["lesions"]}
    by2 = {les["id"]: les for les in d2["lesions"]}
    records = []
    for row in section["lesions"]:
        if row["prior_id"] is None:
            continue
        t1 = nearest(one.truth["regions"], by1[row["prior_id"]]["centroid_mm"])
        if t1["kind"] != "metastasis":
            continue
        t2 = next(r for r in two.truth["regions"] if r["name"] == t1["name"])
        rec = {"seed": seed, "name": t1["name"], "diameter_mm": t1["diameter_mm"],
               "change": t2["change_from_timepoint_1"], "category": row["category"],
               "matched": row["current_id"] is not None}
        if rec["matched"]:
            found = nearest(two.truth["regions"], by2[row["current_id"]]["centroid_mm"])
            rec["correct_match"] = found["name"] == t1["name"]
        if row["tsh_change"] is not None and t2["change_from_timepoint_1"] != "lost":
            tc = row["tsh_change"]
            factor = true_factor(t1, t2, spec["uptake_h"])
            noise_sd = [n["statistical"] ** 2 + n["sampling"] ** 2 for n in tc["noise"]]
            rec.update({"true_factor": factor, "ln_ratio": math.log1p(tc["relative_change"]),
                        "expected_ln_ratio": math.log(t2["suv"] / t1["suv"]),  # washout included
                        "limits": tc["limits"], "verdict": tc["verdict"],
                        "predicted_sd": math.sqrt(2 * settings.limits.biological_wcv**2 + sum(noise_sd)),
                        "predicted_noise_sd": math.sqrt(sum(noise_sd))})
        records.append(rec)
    return records, section


def score_seed(seed: int, noise: float) -> tuple[int, int, int, int, int, int]:
    """(matched, correctly matched, unchanged lesions >= 10 mm, of them called stable, changed lesions
    >= 20 mm (x1.5-2 / x0.45-0.65), of them called in the right direction) for the generator's own
    changes: false calls and missed large changes, the two ways a category can be wrong."""
    records, _ = score_pair(seed, noise, "phantom")
    matched = [r for r in records if r["matched"]]
    stable = [r for r in records if r.get("verdict") and r["change"] == "stable" and r["diameter_mm"] >= 10]
    changed = [r for r in records if r.get("verdict") and r["change"] in ("gained", "reduced")
               and r["diameter_mm"] >= 20]
    return (len(matched), sum(r["correct_match"] for r in matched), len(stable),
            sum(r["category"] == "stable" for r in stable), len(changed),
            sum(r["category"] == EXPECTED[r["change"]] for r in changed))


def truth_class(factor: float) -> str:
    """The true change as a class: beyond x1.09 gained, below x0.91 reduced (the generator's stable
    range is 0.92-1.08, the near scenario's changes 0.80-0.90 and 1.10-1.20)."""
    return "gained" if factor > 1.09 else ("reduced" if factor < 0.91 else "stable")


def report(scenario: str, records: list[dict]) -> None:
    matched = [r for r in records if r["matched"]]
    print(f"\n== {scenario}: {SCENARIOS[scenario]}")
    print(f"correct matches: {sum(r['correct_match'] for r in matched)}/{len(matched)}")
    lost = [r for r in records if r["change"] == "lost"]
    print(f"truly lost lesions called lost / avid only at lower TSH: "
          f"{sum(r['category'] in (LOST, ONLY_LOWER) for r in lost)}/{len(lost)}")
    judged = [r for r in records if "verdict" in r]
    print(f"{'size':9s} {'n':>3s} {'truth':8s} {'stable':>7s} {'gained':>7s} {'reduced':>7s} {'opposite':>8s}  "
          "median limits")
    for lo, hi, band in BANDS:
        for truth in ("stable", "gained", "reduced"):
            rows = [r for r in judged if lo <= r["diameter_mm"] < hi and truth_class(r["true_factor"]) == truth]
            if not rows:
                continue
            calls = defaultdict(int)
            for r in rows:
                calls[r["verdict"]] += 1
            opposite = sum(r["verdict"] == {"gained": "reduced", "reduced": "gained"}.get(truth) for r in rows)
            lim = (statistics.median(r["limits"][0] for r in rows), statistics.median(r["limits"][1] for r in rows))
            print(f"{band:9s} {len(rows):3d} {truth:8s} {calls['stable']:7d} {calls['gained']:7d} "
                  f"{calls['reduced']:7d} {opposite:8d}  {100 * lim[0]:+.0f} % / {100 * lim[1]:+.0f} %")
    print("truly unchanged (true factor 1 +- 0.08): SD of ln ratio about its true value (washout included), "
          "measured vs predicted (noise part; total)")
    for lo, hi, band in BANDS:
        rows = [r for r in judged if lo <= r["diameter_mm"] < hi and abs(r["true_factor"] - 1) <= 0.08]
        if len(rows) < 3:
            continue
        resid = [r["ln_ratio"] - r["expected_ln_ratio"] for r in rows]
        print(f"  {band:9s} n={len(rows):3d}  measured SD {statistics.stdev(resid):.3f} "
              f"(mean {statistics.mean(resid):+.3f})"
              f"  predicted {statistics.median(r['predicted_noise_sd'] for r in rows):.3f}; "
              f"{statistics.median(r['predicted_sd'] for r in rows):.3f}")
    false = [r for r in judged if truth_class(r["true_factor"]) == "stable"]
    wrong = sum(r["verdict"] != "stable" for r in false)
    print(f"false calls (true change within x0.91-1.09 called gained/reduced): {wrong}/{len(false)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    for scenario in args.scenario or list(SCENARIOS):
        records: list[dict] = []
        for seed in range(1, args.seeds + 1):
            recs, _ = score_pair(seed, args.noise, scenario)
            records += recs
            print(f"{scenario} seed {seed:2d}: {len(recs)} metastases", flush=True)
        report(scenario, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
