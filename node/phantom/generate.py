"""Synthetic 124I PET/CT studies with ground truth (`iodine-node phantom`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

import node
from node.compare.dosimetry import I131_HALF_LIFE_H, LOCAL_DEPOSITION_GY_G_PER_MBQ_H
from node.phantom.anatomy import (
    METASTASIS,
    NON_AVID,
    REMNANT,
    Kinetics,
    PatientModel,
    Region,
    build_patient,
    patient_position,
)
from node.phantom.encode import (
    I124_HALF_LIFE_S,
    VENDORS,
    BedTiming,
    StudyInfo,
    dicom_datetime,
    write_ct_slice,
    write_pet_series,
)
from node.phantom.realism import make_realistic
from node.phantom.render import (
    DEFAULT_PSF_FWHM_MM,
    AxialGrid,
    axial_positions,
    render_ct_slices,
    render_pet_volume,
)
from node.uids import derive_uid

SIZES = ("small", "wholebody")

# The reference acquisition of the counts noise model: 100 MBq, scanned 24 h later, 70 kg, 600 s per
# bed (the 124I frame of Preylowski et al., PLoS One 2013;8:e71729). Counts per voxel ~ activity
# concentration at scan time x frame duration x sensitivity (the positron fraction is the same for
# every 124I scan), and image CoV ~ 1/sqrt(counts).
REFERENCE_ACTIVITY_BQ = 100e6
REFERENCE_UPTAKE_H = 24.0
REFERENCE_WEIGHT_KG = 70.0
REFERENCE_FRAME_S = 600.0
TRUTH_SCHEMA = "iodine-node/phantom-truth/v1"

# First administration of every phantom patient; later time points (separate administrations)
# follow at 14-day intervals, as the two withdrawal scans of NCT04880798.
BASE_ADMINISTRATION = datetime(2026, 3, 2, 9, 12, 0)
DAYS_BETWEEN_TIMEPOINTS = 14


@dataclass(frozen=True)
class SizeSpec:
    z_top: float  # body coordinates (mm), vertex = 0
    z_bottom: float
    ct_matrix: int
    ct_pixel_mm: float
    ct_slice_mm: float
    pet_matrix: int
    pet_pixel_mm: float
    pet_slice_mm: float
    frame_s: float
    bed_step_mm: float


SIZE_SPECS = {
    # Salivary glands to stomach: every lesion kind but the pelvic ones, a few MB of PET.
    "small": SizeSpec(-95.0, -575.0, 256, 500.0 / 256, 5.0, 128, 4.0, 4.0, 180.0, 110.0),
    # Vertex to upper thigh as a clinical whole-body scan: 501 CT and 306 PET slices.
    "wholebody": SizeSpec(-20.0, -1020.0, 512, 500.0 / 512, 2.0, 192, 3.65, 3.27, 240.0, 110.0),
}


@dataclass(frozen=True)
class PhantomOptions:
    seed: int = 1
    size: str = "small"
    vendor: str = "siemens"
    timepoint: int = 1
    uptake_h: float = 24.0
    activity_mbq: float | None = None  # None: drawn from 37..185 MBq by seed
    tsh: float | None = None  # None: 30 at time point 1, 120 later (uIU/mL)
    noise: float = 0.15  # coefficient of variation at soft-tissue level; 0 = exact
    psf_fwhm_mm: float = DEFAULT_PSF_FWHM_MM
    patient_name: str = "PHANTOM^IODINE"
    charset: str = "ISO_IR 192"
    # The realistic variant (node.phantom.realism): lobulated heterogeneous lesions, level II/VI nodes,
    # CT-only lung nodules and vessels, salivary glands after 131I, textured liver, great vessels,
    # bowel loops, positron-range tails and respiratory blur. Off: the classic phantom, unchanged.
    realistic: bool = False
    # fixed: `noise` is this scan's CoV at soft tissue. counts: `noise` is the CoV of the reference
    # acquisition (REFERENCE_COUNTS) and this scan's follows its counts: activity at scan time,
    # frame duration and relative sensitivity (CoV ~ 1/sqrt(counts)).
    noise_model: str = "fixed"
    frame_s: float | None = None  # per bed position; None: the size's default (180 / 240 s)
    sensitivity: float = 1.0  # relative to the reference scanner (counts model only)
    positron_range_mm: float | None = None  # mean 3D range; None: 3.0 if realistic else 0 (pure Gaussian)
    respiratory_mm: float | None = None  # cranio-caudal blur at the lung bases; None: 12 if realistic else 0
    # Benchmarks of the comparison: another noise realisation of the same scan (0: the seed's own),
    # and the uptake factors drawn for changed lesions at a later time point ((change, low, high), e.g.
    # ("gained", 1.1, 1.2)) instead of the built-in ranges.
    noise_realisation: int = 0
    change_factors: tuple[tuple[str, float, float], ...] | None = None

    def check(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.vendor not in VENDORS:
            raise ValueError(f"vendor must be one of {', '.join(VENDORS)}, got {self.vendor!r}")
        if self.timepoint < 1:
            raise ValueError(f"timepoint must be >= 1, got {self.timepoint}")
        if not 0 < self.uptake_h <= 24 * 14:
            raise ValueError(f"uptake_h must be in (0, 336] hours, got {self.uptake_h}")
        if self.activity_mbq is not None and not 1 <= self.activity_mbq <= 1000:
            raise ValueError(f"activity_mbq must be 1..1000 MBq, got {self.activity_mbq}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.psf_fwhm_mm < 0:
            raise ValueError(f"psf_fwhm_mm must be >= 0, got {self.psf_fwhm_mm}")
        if self.noise_model not in ("fixed", "counts"):
            raise ValueError(f"noise_model must be fixed or counts, got {self.noise_model!r}")
        if self.frame_s is not None and not 10 <= self.frame_s <= 3600:
            raise ValueError(f"frame_s must be 10..3600 s, got {self.frame_s}")
        if not 0.01 <= self.sensitivity <= 100:
            raise ValueError(f"sensitivity must be 0.01..100, got {self.sensitivity}")
        for name in ("positron_range_mm", "respiratory_mm"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 30:
                raise ValueError(f"{name} must be 0..30 mm, got {value}")

    @property
    def extra_key(self) -> tuple[object, ...]:
        """Options beyond the classic ones, for the UIDs (empty for a classic phantom: its UIDs stay)."""
        extra = (self.realistic, self.noise_model, self.frame_s, self.sensitivity, self.positron_range_mm,
                 self.respiratory_mm)
        return () if extra == (False, "fixed", None, 1.0, None, None) else extra


@dataclass
class PhantomResult:
    out_dir: Path
    truth: dict[str, Any]
    ct_files: list[Path] = field(default_factory=list)
    pet_files: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return self.ct_files + self.pet_files


def _patient(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 99])
    sex = "F" if rng.random() < 0.7 else "M"  # DTC is about 3x more common in women
    height_m = float(np.round(rng.uniform(1.55, 1.72) if sex == "F" else rng.uniform(1.65, 1.90), 2))
    bmi = float(rng.uniform(19.0, 31.0))
    age = int(rng.integers(25, 78))
    return {
        "id": f"PH{int(rng.integers(0, 10**6)):06d}",
        "sex": sex,
        "height_m": height_m,
        "weight_kg": float(np.round(bmi * height_m**2, 1)),
        "age_y": age,
        "birth_date": f"{BASE_ADMINISTRATION.year - age}0{int(rng.integers(1, 10))}15",
    }


def _center_of(region: Region) -> np.ndarray:
    if region.center is not None:
        return np.asarray(region.center, float)
    lo, hi = region.shape.bbox()
    return (lo + hi) / 2.0


def _host_suv(model: PatientModel, region: Region) -> float | None:
    """SUV of the tissue a lesion sits in: the last earlier region containing its centre."""
    c = _center_of(region)
    host = None
    for other in model.regions:
        if other is region:
            break
        if other.suv is not None and bool(other.shape.contains(*(np.array([v]) for v in c))[0]):
            host = other
    return host.suv if host else None


def analytic_131i(kin: Kinetics, conc_bq_per_ml: float, diameter_mm: float, uptake_h: float,
                  injected_bq: float) -> dict[str, float]:
    """The lesion's true 131I-equivalent dose per GBq from the generator's kinetics (uptake + washout,
    Jentzen et al. 2008, docs/science.md): r(t) = n (1 - exp(-k_u t)) exp(-k_b t), a~ = n (1/(k_b+l131) -
    1/(k_u+k_b+l131)), D/A0 = 0.11066 a~ / m (local deposition, 1 g/ml)."""
    volume_ml = math.pi / 6 * diameter_mm**3 / 1000.0
    r_now = conc_bq_per_ml * volume_ml * math.exp(math.log(2) * uptake_h * 3600.0 / I124_HALF_LIFE_S) / injected_bq
    k_u, k_b = math.log(2) / kin.uptake_half_time_h, math.log(2) / kin.biological_half_life_h
    n = r_now / ((1 - math.exp(-k_u * uptake_h)) * math.exp(-k_b * uptake_h))
    lam_131 = math.log(2) / I131_HALF_LIFE_H
    tia_h = n * (1 / (k_b + lam_131) - 1 / (k_u + k_b + lam_131))
    return {"retention_percent": round(100 * r_now, 8), "mass_g": round(volume_ml, 6), "tia_h": tia_h,
            "gy_per_gbq": LOCAL_DEPOSITION_GY_G_PER_MBQ_H * tia_h * 1000.0 / volume_ml}


LUNG_BASE_BODY_Z = -525.0  # the lungs' lowest point in body coordinates (node.phantom.anatomy)


def scan_noise_cov(opts: PhantomOptions, suv_to_bq_per_ml: float, frame_s: float) -> float:
    """The CoV at soft tissue of this scan (see PhantomOptions.noise_model)."""
    if opts.noise_model == "fixed" or opts.noise == 0:
        return opts.noise
    lam = math.log(2) / I124_HALF_LIFE_S
    ref_conc = REFERENCE_ACTIVITY_BQ * math.exp(-lam * REFERENCE_UPTAKE_H * 3600) / (REFERENCE_WEIGHT_KG * 1000)
    return opts.noise * math.sqrt(ref_conc * REFERENCE_FRAME_S / (suv_to_bq_per_ml * frame_s * opts.sensitivity))


def generate_phantom(out_dir: str | Path, options: PhantomOptions | None = None) -> PhantomResult:
    """Write CT/ and PT/ series and truth.json under `out_dir`; deterministic for given options."""
    opts = options or PhantomOptions()
    opts.check()
    spec = SIZE_SPECS[opts.size]
    out = Path(out_dir)
    (out / "CT").mkdir(parents=True, exist_ok=True)
    (out / "PT").mkdir(parents=True, exist_ok=True)

    patient = _patient(opts.seed)
    rng = np.random.default_rng([opts.seed, 5])
    activity_mbq = opts.activity_mbq if opts.activity_mbq is not None else float(np.round(rng.uniform(37, 185), 1))
    tsh = opts.tsh if opts.tsh is not None else (30.0 if opts.timepoint == 1 else 120.0)
    administration = BASE_ADMINISTRATION + timedelta(days=DAYS_BETWEEN_TIMEPOINTS * (opts.timepoint - 1))
    scan_start = administration + timedelta(hours=opts.uptake_h)

    key = (opts.seed, opts.size, opts.vendor, opts.timepoint, opts.uptake_h, activity_mbq, opts.noise,
           opts.psf_fwhm_mm, *opts.extra_key) + ((opts.noise_realisation, str(opts.change_factors))
                                                  if opts.noise_realisation or opts.change_factors else ())
    study_uid = derive_uid("phantom-study", *key)
    info = StudyInfo(
        vendor=opts.vendor,
        patient_name=opts.patient_name,
        patient_id=patient["id"],
        birth_date=patient["birth_date"],
        sex=patient["sex"],
        age_y=patient["age_y"],
        weight_kg=patient["weight_kg"],
        height_m=patient["height_m"],
        charset=opts.charset,
        study_uid=study_uid,
        frame_of_reference_uid=derive_uid("phantom-for", *key),
        accession=f"A{int(study_uid[5:]) % 10**8:08d}",
        study_id=str(opts.timepoint),
        study_description="PET/CT I-124 whole body",
        additional_history=f"TSH={tsh:g} uIU/mL",
        scan_start=scan_start,
        administration=administration,
        injected_activity_bq=activity_mbq * 1e6,
    )
    ct_series_uid = derive_uid("phantom-ct", *key)
    pet_series_uid = derive_uid("phantom-pt", *key)

    model = build_patient(opts.seed, opts.timepoint, opts.uptake_h, wholebody=opts.size == "wholebody",
                          change_factors={c: (lo, hi) for c, lo, hi in opts.change_factors or ()})
    if opts.realistic:
        model = make_realistic(model, opts.seed, opts.timepoint, opts.uptake_h)
    positron_mm = opts.positron_range_mm if opts.positron_range_mm is not None else (3.0 if opts.realistic else 0.0)
    respiratory_mm = opts.respiratory_mm if opts.respiratory_mm is not None else (12.0 if opts.realistic else 0.0)
    frame_s = opts.frame_s or spec.frame_s
    pose = patient_position(opts.seed, opts.timepoint)
    tz = pose.translation[2]
    ct_grid = AxialGrid(spec.ct_matrix, spec.ct_matrix, spec.ct_pixel_mm,
                        axial_positions(spec.z_top + tz, spec.z_bottom + tz, spec.ct_slice_mm))
    # PET slices start 1.3 mm below the CT's, so no PET slice position coincides with a CT one.
    pet_grid = AxialGrid(spec.pet_matrix, spec.pet_matrix, spec.pet_pixel_mm,
                         axial_positions(spec.z_top + tz - 1.3, spec.z_bottom + tz, spec.pet_slice_mm))

    # SUVbw = C / (D_decayed / W): C [Bq/ml] = SUV x D_decayed [Bq] / W [g] (tissue 1 g/ml).
    lam = math.log(2) / I124_HALF_LIFE_S
    decayed_bq = info.injected_activity_bq * math.exp(-lam * opts.uptake_h * 3600.0)
    suv_to_bq_per_ml = decayed_bq / (patient["weight_kg"] * 1000.0)

    result = PhantomResult(out, {})
    ct_noise_hu = 60.0 * opts.noise
    ct_uids = []
    for k, hu in enumerate(render_ct_slices(model, pose, ct_grid, ct_noise_hu, opts.seed,
                                                         z_subsamples=3 if opts.realistic else 1)):
        ct_uids.append(write_ct_slice(out / "CT", info, ct_series_uid, ct_grid, k, hu))
        result.ct_files.append(out / "CT" / f"CT_{k + 1:04d}.dcm")

    noise_cov = scan_noise_cov(opts, suv_to_bq_per_ml, frame_s)
    lung_base = pose.to_scanner(np.array([0.0, 0.0, LUNG_BASE_BODY_Z]))[2]
    noise_seed = opts.seed + 7919 * opts.noise_realisation  # 0: the seed's own realisation, as before
    conc = render_pet_volume(model, pose, pet_grid, suv_to_bq_per_ml, opts.psf_fwhm_mm, noise_cov, noise_seed,
                             positron_range_mm=positron_mm, respiratory_mm=respiratory_mm, lung_base_z=lung_base)
    timing = BedTiming(frame_s=frame_s, bed_step_mm=spec.bed_step_mm)
    pet_uids = write_pet_series(out / "PT", info, pet_series_uid, pet_grid, conc, timing)
    result.pet_files = [out / "PT" / f"PT_{k + 1:04d}.dcm" for k in range(len(pet_uids))]

    z_lo, z_hi = min(pet_grid.z_mm), max(pet_grid.z_mm)
    regions = []
    for region in model.regions:
        if region.suv is None or not region.report:
            continue
        center = pose.to_scanner(_center_of(region))
        if not z_lo <= center[2] <= z_hi:
            continue
        lo, hi = region.shape.bbox()
        entry: dict[str, Any] = {
            "name": region.name,
            "kind": region.kind,
            "site": region.site,
            "center_mm": [round(float(v), 3) for v in center],
            "diameter_mm": region.diameter_mm if region.diameter_mm else round(float(np.cbrt(np.prod(hi - lo))), 1),
            "suv": region.suv,
            "conc_bq_per_ml": round(region.suv * suv_to_bq_per_ml, 3),
            "hu": region.hu,
            "expected_avid": True if region.kind in (METASTASIS, REMNANT) else (False if region.kind == NON_AVID
                                                                                else None),
        }
        if region.kind in (METASTASIS, NON_AVID, REMNANT):
            host = _host_suv(model, region)
            entry["background_suv"] = host
            entry["lesion_to_background"] = round(region.suv / host, 3) if host else None
            entry["biological_half_life_h"] = region.biological_half_life_h
            kin = model.kinetics.get(region.name)
            if kin is not None and region.diameter_mm and region.kind != NON_AVID:
                entry["uptake_half_time_h"] = kin.uptake_half_time_h
                entry["analytic_131i"] = analytic_131i(kin, region.suv * suv_to_bq_per_ml, region.diameter_mm,
                                                       opts.uptake_h, info.injected_activity_bq)
            entry["change_from_timepoint_1"] = region.change
        regions.append(entry)

    result.truth = {
        "schema": TRUTH_SCHEMA,
        "generator": {"name": "iodine-node phantom", "version": node.__version__, "options": asdict(opts)},
        "patient": {"id": patient["id"], "name": opts.patient_name, "sex": patient["sex"],
                    "weight_kg": patient["weight_kg"], "height_m": patient["height_m"],
                    "birth_date": patient["birth_date"]},
        "vendor": opts.vendor,
        "timepoint": opts.timepoint,
        "tsh_uiu_per_ml": tsh,
        "study_instance_uid": study_uid,
        "frame_of_reference_uid": info.frame_of_reference_uid,
        "accession_number": info.accession,
        "administration_datetime": dicom_datetime(administration),
        "scan_start_datetime": dicom_datetime(scan_start),
        "uptake_time_h": opts.uptake_h,
        "injected_activity_bq": info.injected_activity_bq,
        "half_life_s": I124_HALF_LIFE_S,
        "decayed_activity_at_scan_start_bq": decayed_bq,
        "suvbw_factor_g_per_bq": patient["weight_kg"] * 1000.0 / decayed_bq,
        "psf_fwhm_mm": opts.psf_fwhm_mm,
        "noise": opts.noise,
        "noise_cov_soft_tissue": round(noise_cov, 6),
        "noise_model": opts.noise_model,
        "frame_s": frame_s,
        "positron_range_mm": positron_mm,
        "respiratory_mm": respiratory_mm,
        "realistic": opts.realistic,
        "pose": {"rot_z_deg": pose.rot_z_deg, "rot_x_deg": pose.rot_x_deg, "translation_mm": list(pose.translation)},
        "series": {
            "ct": {"series_instance_uid": ct_series_uid, "instances": len(ct_uids),
                   "sop_instance_uids": ct_uids, "pixel_mm": ct_grid.pixel_mm,
                   "slice_mm": ct_grid.slice_spacing_mm, "matrix": ct_grid.columns},
            "pet": {"series_instance_uid": pet_series_uid, "instances": len(pet_uids),
                    "sop_instance_uids": pet_uids, "pixel_mm": pet_grid.pixel_mm,
                    "slice_mm": pet_grid.slice_spacing_mm, "matrix": pet_grid.columns,
                    "units": "CNTS" if opts.vendor == "philips" else "BQML"},
        },
        "regions": regions,
    }
    (out / "truth.json").write_text(json.dumps(result.truth, indent=1, ensure_ascii=False), encoding="utf-8")
    return result
