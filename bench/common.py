"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

from node.phantom import PhantomOptions, PhantomResult, generate_phantom

OUT = Path(__file__).resolve().parent / "out"


def phantom(size: str = "wholebody", seed: int = 42) -> PhantomResult:
    """A phantom study under bench/out, generated once and reused while its options match."""
    options = PhantomOptions(seed=seed, size=size)
    target = OUT / f"phantom-{size}-{seed}"
    truth_path = target / "truth.json"
    if truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth["generator"]["options"] == {**options.__dict__}:
            result = PhantomResult(target, truth)
            result.ct_files = sorted((target / "CT").glob("*.dcm"))
            result.pet_files = sorted((target / "PT").glob("*.dcm"))
            if len(result.ct_files) == truth["series"]["ct"]["instances"]:
                return result
    return generate_phantom(target, options)


def rss_peak_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
