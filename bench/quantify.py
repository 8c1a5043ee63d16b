"""Quantification on a whole-body phantom: seconds per stage (load, SUV, detect, measure) and peak RSS.

Usage: python -m bench.quantify [--size wholebody] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, phantom  # noqa: E402
from node.assemble import quantify_files  # noqa: E402
from node.output.document import results_document  # noqa: E402
from node.quant.study import QuantSettings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    study = phantom(args.size, args.seed)
    start = time.perf_counter()
    result = quantify_files(study.pet_files, study.ct_files, QuantSettings())
    total = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = results_document(result, QuantSettings())
    print(f"{args.size} phantom seed {args.seed}: {len(study.ct_files)} CT + {len(study.pet_files)} PET images")
    for stage, seconds in result.seconds.items():
        print(f"  {stage:<8} {seconds:6.2f} s")
    print(f"  total    {total:6.2f} s   (target <= 10 s)")
    print(f"  peak RSS {peak_mb:6.0f} MB  (target <= 1500 MB)")
    import tempfile

    from node.encode.objects import build_objects
    from node.output.files import write_objects

    t = time.perf_counter()
    objects = build_objects(result, doc, QuantSettings()).datasets
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_objects(Path(tmp), objects)
        encode_s = time.perf_counter() - t
        sizes = {p.name: p.stat().st_size / 1e6 for p in paths}
    print(f"  encode   {encode_s:6.2f} s   (target <= 3 s): " + ", ".join(f"{k} {v:.2f} MB" for k, v in sizes.items())
          + "  (SEG target <= 2 MB)")
    labels: dict[str, int] = {}
    for les in doc["lesions"]:
        labels[les["label"]] = labels.get(les["label"], 0) + 1
    print(f"  foci: {len(doc['lesions'])} {labels}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quantify.json").write_text(json.dumps({"seconds": result.seconds, "total_s": total,
                                                   "peak_rss_mb": peak_mb, "labels": labels, "encode_s": encode_s,
                                                   "sizes_mb": sizes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
