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
from node.logs import setup_logging

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


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.service import NodeService

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    setup_logging(args.log_level or config.logging.level, args.log_format or config.logging.format)
    service = NodeService(config)
    service.config_source = str(args.config or "built-in defaults")
    service.serve_forever()
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from node.store import DeliveryState, JobState, open_store

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    store = open_store(config)
    try:
        if args.action == "retry":
            if args.job_id is None:
                print("iodine-node jobs retry: give the job id", file=sys.stderr)
                return EXIT_USAGE
            from node.audit import append_event

            audit = config.logging.audit_file
            audit_path = audit if audit.is_absolute() else Path(config.storage.root).resolve() / audit
            append_event(audit_path, "job-retried", job=args.job_id, by="iodine-node jobs retry")
            existing = store.jobs.get(args.job_id)
            if existing is not None and existing.state == JobState.DONE:
                resent = store.outbox.resend_dead(args.job_id)
                if resent:
                    print(f"job {args.job_id}: {resent} dead-letter delivery(ies) queued again")
                    return 0
            try:
                job = store.jobs.retry(args.job_id)
            except (KeyError, ValueError) as exc:
                print(f"iodine-node jobs retry: {exc.args[0]}", file=sys.stderr)
                return 1
            print(f"job {job.id} queued again (attempts so far: {job.attempts})")
            return 0
        jobs = store.jobs.recent(limit=args.limit)
        print(f"{'id':>5}  {'kind':<9} {'state':<10} {'att':>3}  {'created':<19}  study / error")
        for j in jobs:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at))
            print(f"{j.id:>5}  {j.kind:<9} {j.state:<10} {j.attempts:>3}  {created}  {j.study_uid}")
            if j.error:
                print(f"{'':>33}error: {j.error}")
            if j.superseded_by:
                print(f"{'':>33}superseded by job {j.superseded_by}")
            per_dest: dict[str, dict[str, int]] = {}
            last_error: dict[str, str] = {}
            for row in store.outbox.rows(j.id):
                counts = per_dest.setdefault(row.destination, {})
                counts[row.state] = counts.get(row.state, 0) + 1
                if row.state != DeliveryState.DELIVERED and row.last_error:
                    last_error[row.destination] = row.last_error
            for dest, counts in per_dest.items():
                states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                print(f"{'':>33}-> {dest}: {states}" + (f"; last error: {last_error[dest]}" if dest in last_error
                                                          else ""))
        return 0
    finally:
        store.close()


def _dicom_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _cmd_suv(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from node.assemble import file_pixels, read_header
    from node.quant.study import suv_volume
    from node.quant.suv import SuvError
    from node.quant.suvtypes import UNITS, ratio_to_bw
    from node.quant.volume import VolumeError

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    files = _dicom_files(Path(args.series_dir))
    try:
        datasets = [read_header(f) for f in files]
    except Exception as exc:  # noqa: BLE001 - reported with the folder
        print(f"iodine-node suv: {args.series_dir}: cannot read DICOM: {exc}", file=sys.stderr)
        return 1
    series = {str(d.get("SeriesInstanceUID", "")) for d in datasets}
    if len(series) != 1:
        print(f"iodine-node suv: {args.series_dir} holds {len(series)} series; give the folder of one PET series",
              file=sys.stderr)
        return 1
    try:
        suv, _, calc = suv_volume(datasets, config.quantification.settings.suv, file_pixels,
                                  suv_type=args.type, label=f"series in {args.series_dir}")
        ratio = ratio_to_bw(calc.patient, args.type)
    except (VolumeError, SuvError) as exc:
        print(f"iodine-node suv: {exc}", file=sys.stderr)
        return 1
    sitk.WriteImage(suv.to_sitk(), str(args.output))
    factors = sorted(set(calc.factors))
    print(f"SUVbw factor: {factors[0]:.10g}" + (f" .. {factors[-1]:.10g} (per slice)" if len(factors) > 1 else "")
          + f" (g per {'Bq/ml' if calc.units == 'BQML' else calc.units} unit)")
    if args.type != "bw":
        print(f"SUV type {args.type} ({UNITS[args.type]}): SUVbw x {ratio:.10g}")
    for line in calc.derivation:
        print(f"  {line}")
    for line in calc.warnings:
        print(f"  warning: {line}")
    print(f"wrote {args.output} ({' x '.join(str(n) for n in suv.array.shape[::-1])}, "
          f"spacing {', '.join(f'{s:.3g}' for s in suv.spacing)} mm)")
    return 0


def _cmd_process(args: argparse.Namespace) -> int:
    from node.assemble import group_by_study, process_study
    from node.output.files import write_study_outputs
    from node.quant.study import StudyError
    from node.quant.suv import SuvError
    from node.quant.volume import VolumeError
    from node.uids import is_valid_uid

    config = _load(args)
    if config is None:
        return EXIT_USAGE
    settings = config.quantification.settings
    if args.workers is not None or args.scheduler is not None:
        return _process_batch(args, settings)
    studies, skipped = group_by_study(_dicom_files(Path(args.input_dir)))
    for line in skipped:
        print(f"skipped (not DICOM): {line}", file=sys.stderr)
    if not studies:
        print(f"iodine-node process: no DICOM studies under {args.input_dir}", file=sys.stderr)
        return 1
    failed = 0
    for study_uid, series in studies.items():
        if not is_valid_uid(study_uid):
            print(f"study {study_uid[:70]!r}: invalid StudyInstanceUID, not processed", file=sys.stderr)
            failed += 1
            continue
        try:
            results = process_study(series, settings)
        except (StudyError, SuvError, VolumeError) as exc:
            print(f"study {study_uid}: cannot be processed: {exc}", file=sys.stderr)
            failed += 1
            continue
        written = write_study_outputs(Path(args.output) / study_uid, results, settings)
        for result, doc in results:
            print(f"study {study_uid}  PET series {result.pet_series_uid}")
            print(f"  SUVbw factor {result.suv.factors[0]:.6g}, uptake {doc['uptake_time_h']} h, "
                  f"{len(doc['lesions'])} foci, {sum(1 for x in doc['lesions'] if x['iodine_avid'])} iodine-avid")
            print(f"  {'id':>3} {'label':<30} {'site':<26} {'SUVmax':>7} {'SUVpeak':>7} {'ml':>7} {'%IA':>8} "
                  f"{'LBR':>6} avid")
            for les in doc["lesions"]:
                ia = les["percent_injected_activity"]
                ia_text = f"{ia:>8.4f}" if ia is not None else f"{'-':>8}"
                print(f"  {les['id']:>3} {les['label']:<30} {les['site']:<26} {les['suv_max']:>7.2f} "
                      f"{les['suv_peak']:>7.2f} {les['volume_ml']:>7.2f} {ia_text} "
                      f"{les['lesion_to_background']:>6.1f} {'yes' if les['iodine_avid'] else 'no'}")
        for path in written:
            print(f"  wrote {path}")
    return 1 if failed else 0


def _process_batch(args: argparse.Namespace, settings: object) -> int:
    """`process` on Dask (node.batch): one study per task, a progress line, resume, failures listed."""
    from node.batch import plan_batch, progress_line, run_batch, summary_lines

    if args.workers is not None and args.scheduler is not None:
        print("iodine-node process: give --workers or --scheduler, not both", file=sys.stderr)
        return EXIT_USAGE
    if args.workers is not None and args.workers < 1:
        print("iodine-node process: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    plan = plan_batch(args.input_dir, args.output, resume=not args.force)
    for line in plan.not_dicom:
        print(f"skipped (not DICOM): {line}", file=sys.stderr)
    for uid, reason in plan.invalid:
        print(f"study {uid!r}: not processed: {reason}", file=sys.stderr)
    if plan.done:
        print(f"{len(plan.done)} study(ies) already have results in {args.output}: skipped (--force redoes them)")
    total = len(plan.tasks)
    if not plan.tasks:
        print("nothing to process" if plan.done else f"iodine-node process: no DICOM studies under {args.input_dir}",
              file=sys.stderr if not plan.done else sys.stdout)
        return 1 if plan.invalid or not plan.done else 0
    tty = sys.stderr.isatty()

    def progress(outcome, done: int, failed: int, elapsed_s: float) -> None:
        if not outcome.ok:
            print(("\n" if tty else "") + f"study {outcome.study_uid}: FAILED: {outcome.reason}", file=sys.stderr)
        print(("\r" if tty else "") + progress_line(done, total, failed, elapsed_s), end="" if tty else "\n",
              file=sys.stderr, flush=True)

    where = f"scheduler {args.scheduler}" if args.scheduler else f"{args.workers} local Dask worker(s)"
    print(f"processing {total} study(ies) on {where}", file=sys.stderr)
    outcomes = run_batch(plan.tasks, settings, args.output, workers=args.workers, scheduler=args.scheduler,
                         on_outcome=progress)
    if tty:
        print(file=sys.stderr)
    for line in summary_lines(outcomes):
        print(line)
    bad = sum(1 for o in outcomes if not o.ok)
    print(f"{total - bad} processed, {bad + len(plan.invalid)} failed, {len(plan.done)} skipped (had results)")
    return 1 if bad or plan.invalid else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    setup_logging(args.log_level or "warning", args.log_format or "text")
    try:
        return run_demo(args.workdir, pair=args.pair)
    except KeyboardInterrupt:
        print("iodine-node demo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a demo ends in one line, not a traceback (details at debug level)
        logging.getLogger("node.demo").debug("demo failed", exc_info=True)
        print(f"iodine-node demo: failed: {type(exc).__name__}: {exc} (--log-level debug shows where)",
              file=sys.stderr)
        return 1


def _cmd_phantom(args: argparse.Namespace) -> int:
    from node.phantom import PhantomOptions, generate_phantom

    options = PhantomOptions(
        seed=args.seed, size=args.size, vendor=args.vendor, timepoint=args.timepoint, uptake_h=args.uptake_h,
        activity_mbq=args.activity_mbq, tsh=args.tsh, noise=args.noise, psf_fwhm_mm=args.fwhm_mm,
        patient_name=args.patient_name, charset=args.charset,
        realistic=args.realistic, noise_model=args.noise_model, frame_s=args.frame_s,
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


def _add_global_options(parser: argparse.ArgumentParser, default: object, config: bool = True) -> None:
    """--config, --log-level, --log-format: accepted before the subcommand and after it."""
    if config:
        parser.add_argument("--config", default=default,
                            help="YAML configuration file (default: $IODINE_NODE_CONFIG)")
    parser.add_argument("--log-level", default=default, choices=("debug", "info", "warning", "error"),
                        help="default: logging.level of the configuration")
    parser.add_argument("--log-format", default=default, choices=("text", "json"),
                        help="default: logging.format of the configuration")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iodine-node", description=__doc__)
    parser.add_argument("--version", action="version", version=f"iodine-node {node.__version__}")
    _add_global_options(parser, None)
    # The same options on every subcommand, so `iodine-node serve --config x.yaml` works as well as
    # `iodine-node --config x.yaml serve`. SUPPRESS: a subcommand sets them only when they are given
    # there, otherwise the value given before the subcommand (or None) stays.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)
    no_config = argparse.ArgumentParser(add_help=False)  # demo and phantom run on built-in settings
    _add_global_options(no_config, argparse.SUPPRESS, config=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[no_config if name in ("demo", "phantom") else common], help=summary)

    p = command("check-config", "validate a configuration file and print the effective configuration")
    p.add_argument("config_file", nargs="?", help="the file (default: --config or $IODINE_NODE_CONFIG)")
    p.set_defaults(func=_cmd_check_config)

    p = command("serve", "run the node: DICOM listener, watch folder, completion, workers")
    p.set_defaults(func=_cmd_serve)

    p = command("jobs", "list jobs, or retry one: jobs retry ID")
    p.add_argument("action", nargs="?", choices=("list", "retry"), default="list")
    p.add_argument("job_id", nargs="?", type=int)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_cmd_jobs)

    p = command("suv", "write the SUV volume of one PET series (NIfTI) and explain the factor")
    p.add_argument("series_dir", type=Path)
    p.add_argument("--type", default="bw", choices=("bw", "lbm-james", "sul-janmahasatian", "bsa", "ibw"),
                   help="normalisation: body weight (default), lean body mass (James-128), SUL (Janmahasatian, "
                        "PERCIST), body surface area (Du Bois, cm2/ml), ideal body weight")
    p.add_argument("--output", type=Path, required=True, help="e.g. suv.nii.gz")
    p.set_defaults(func=_cmd_suv)

    p = command("process", "quantify every study under INPUT_DIR offline (results.json, lesions.csv)")
    p.add_argument("input_dir", type=Path)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--workers", type=int, default=None,
                   help="process the studies in parallel on a local Dask cluster of N worker processes; "
                        "studies with results already are skipped (resume)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="run on an existing Dask cluster (its workers see INPUT_DIR and --output at the same paths)")
    p.add_argument("--force", action="store_true", help="with --workers/--scheduler: redo studies that have results")
    p.set_defaults(func=_cmd_process)

    p = command("demo", "run a node, push a synthetic study to it, show the results (no PACS needed)")
    p.add_argument("--workdir", type=Path, default=None, help="where to keep everything (default: a temp folder)")
    p.add_argument("--pair", action="store_true",
                   help="then a second scan of the same patient at a higher TSH: the lesion-by-lesion comparison")
    p.set_defaults(func=_cmd_demo)

    p = command("phantom", "generate a synthetic 124I PET/CT study with ground truth (truth.json)")
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
    p.add_argument("--realistic", action="store_true",
                   help="lobulated heterogeneous lesions, neck nodes, CT-only nodules, positron-range tails, "
                        "breathing blur (docs/phantom.md)")
    p.add_argument("--noise-model", choices=("fixed", "counts"), default="fixed",
                   help="counts: --noise is the CoV of a reference scan; this scan's follows its counts")
    p.add_argument("--frame-s", type=float, default=None, help="seconds per bed position")
    p.set_defaults(func=_cmd_phantom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve" and (args.log_level or args.log_format):  # serve also reads the configuration
        setup_logging(args.log_level or "warning", args.log_format or "text")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
