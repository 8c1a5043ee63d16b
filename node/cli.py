"""The `iodine-node` command line: a thin shell over the node's modules."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import node
from node.config import ConfigError, NodeConfig, dump_config, load_config

EXIT_USAGE = 2


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config_file or args.config)
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(dump_config(config), end="")
    return 0


def _load(args: argparse.Namespace) -> NodeConfig | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.service import NodeService

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    _setup_logging(args.log_level)
    NodeService(config).serve_forever()
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from node.index import Index

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    index = Index(Path(config.storage.root).resolve())
    try:
        if args.action == "retry":
            if args.job_id is None:
                print("iodine-node jobs retry: give the job id", file=sys.stderr)
                return EXIT_USAGE
            try:
                job = index.retry_job(args.job_id)
            except (KeyError, ValueError) as exc:
                print(f"iodine-node jobs retry: {exc.args[0]}", file=sys.stderr)
                return 1
            print(f"job {job.id} queued again (attempts so far: {job.attempts})")
            return 0
        jobs = index.jobs(limit=args.limit)
        print(f"{'id':>5}  {'kind':<9} {'state':<10} {'att':>3}  {'created':<19}  study / error")
        for j in jobs:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at))
            print(f"{j.id:>5}  {j.kind:<9} {j.state:<10} {j.attempts:>3}  {created}  {j.study_uid}")
            if j.error:
                print(f"{'':>33}error: {j.error}")
            if j.superseded_by:
                print(f"{'':>33}superseded by job {j.superseded_by}")
        return 0
    finally:
        index.close()


def _cmd_phantom(args: argparse.Namespace) -> int:
    from node.phantom import PhantomOptions, generate_phantom

    options = PhantomOptions(
        seed=args.seed, size=args.size, vendor=args.vendor, timepoint=args.timepoint, uptake_h=args.uptake_h,
        activity_mbq=args.activity_mbq, tsh=args.tsh, noise=args.noise, psf_fwhm_mm=args.fwhm_mm,
        patient_name=args.patient_name, charset=args.charset,
    )
    try:
        options.check()
    except ValueError as exc:
        print(f"iodine-node phantom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    result = generate_phantom(args.out_dir, options)
    seconds = time.perf_counter() - started
    size_mb = sum(p.stat().st_size for p in result.files) / 1e6
    truth = result.truth
    print(f"wrote {len(result.ct_files)} CT + {len(result.pet_files)} PET files ({size_mb:.1f} MB) "
          f"to {result.out_dir} in {seconds:.1f} s")
    print(f"study {truth['study_instance_uid']}  patient {truth['patient']['id']}  vendor {options.vendor}  "
          f"uptake {options.uptake_h:g} h  TSH {truth['tsh_uiu_per_ml']:g}")
    print(f"truth: {result.out_dir / 'truth.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iodine-node", description=__doc__)
    parser.add_argument("--version", action="version", version=f"iodine-node {node.__version__}")
    parser.add_argument("--config", help="YAML configuration file (default: $IODINE_NODE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate a configuration file and print the effective configuration")
    p.add_argument("config_file", nargs="?", help="the file (default: --config or $IODINE_NODE_CONFIG)")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("serve", help="run the node: DICOM listener, watch folder, completion, workers")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("jobs", help="list jobs, or retry one: jobs retry ID")
    p.add_argument("action", nargs="?", choices=("list", "retry"), default="list")
    p.add_argument("job_id", nargs="?", type=int)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("phantom", help="generate a synthetic 124I PET/CT study with ground truth (truth.json)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", choices=("small", "wholebody"), default="small")
    p.add_argument("--vendor", choices=("siemens", "ge", "philips"), default="siemens")
    p.add_argument("--timepoint", type=int, default=1, help="scan number of a serial study (new administration)")
    p.add_argument("--uptake-h", type=float, default=24.0, help="hours from administration to scan start")
    p.add_argument("--activity-mbq", type=float, default=None, help="administered 124I (default: 37-185 by seed)")
    p.add_argument("--tsh", type=float, default=None, help="TSH in uIU/mL (default 30 at scan 1, 120 later)")
    p.add_argument("--noise", type=float, default=0.15, help="noise CoV at soft-tissue level (0 = exact)")
    p.add_argument("--fwhm-mm", type=float, default=7.0, help="PET point-spread FWHM")
    p.add_argument("--patient-name", default="PHANTOM^IODINE")
    p.add_argument("--charset", default="ISO_IR 192", help="SpecificCharacterSet, e.g. 'GB18030'")
    p.set_defaults(func=_cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
