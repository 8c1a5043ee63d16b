"""Vendor-neutral SUV from DICOM PET headers.

Rules after the QIBA vendor-neutral SUV pseudo-code (D. Clunie, 2012/2018), the OncoRay/IBSI
"Comprehensive Manual for SUV Computation" (Vácha et al.) and PS3.3 C.8.9.1 / C.8.9.4, as summarised
in docs/science.md. Each decision is recorded in `derivation` or `warnings`, so a
physician (or a physicist auditing a result) can see how a number was obtained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, ClassVar, Literal

from annotated_types import Interval
from pydicom.dataset import Dataset

from node.quant.header import combine, parse_dt, parse_tm, private_value, to_float

# Half-lives (s) of the nuclides whose codes we check, ICRP Publication 107 (docs/science.md).
# Keys: code values of CID 4020 in SCT and the legacy SRT/SNM3 schemes.
NUCLIDE_HALF_LIFE_S: dict[str, tuple[str, float]] = {
    "40937006": ("124I", 360806.4), "C-114A5": ("124I", 360806.4),
    "1368003": ("131I", 692988.5), "C-114B3": ("131I", 692988.5),
    "77004003": ("18F", 6586.2), "C-111A1": ("18F", 6586.2),
}
HALF_LIFE_TOLERANCE = 0.02  # Philips writes 6588 s for 18F; a wrong nuclide is off by far more
LONG_LIVED_HALF_LIFE_S = 12 * 3600.0  # a guessed administration date is off by whole half-life fractions

PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"


class SuvError(ValueError):
    """The headers do not allow an SUV: says which attribute and what was expected."""


@dataclass(frozen=True)
class SuvSettings:
    """`quantification.suv` in the configuration."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    # An administration time given without a date (RadiopharmaceuticalStartTime only): for
    # long-lived nuclides (124I) an error unless this states how many days before the series
    # date it was given (0 = same day, QIBA's roll-back over midnight applies).
    time_only_administration_days_before: Annotated[int, Interval(ge=0, le=30)] | None = None
    # The normalisation results.json reports beside SUVbw (`suv_type`; node.quant.suvtypes.SUV_TYPES).
    # Detection and the stored lesion SUVs stay SUVbw.
    report_type: Literal["bw", "lbm-james", "sul-janmahasatian", "bsa", "ibw"] = "bw"


@dataclass(frozen=True)
class Patient:
    weight_kg: float
    height_m: float | None
    sex: str | None


@dataclass(frozen=True)
class SuvCalculation:
    """How to turn rescaled pixel values into SUVbw: suv = value x factors[slice]."""

    units: str
    factors: tuple[float, ...]
    patient: Patient
    injected_activity_bq: float
    half_life_s: float
    administration: datetime | None
    reference: datetime | None
    decay_correction: str
    derivation: tuple[str, ...]
    warnings: tuple[str, ...]
    nuclide: str | None = None
    # Ratios to SUVbw: SUVlbm = SUVbw x ratio (LBM / W); SUVbsa = SUVbw x BSA_cm2 / W_g (cm2/ml)
    other_normalisations: dict[str, float] = field(default_factory=dict)

    @property
    def uptake_time_s(self) -> float | None:
        """Administration to scan, in every decay-correction mode: `reference` is the scan's own time
        (START: the decay-correction reference; ADMIN and NONE: the scan start from the series and
        acquisition times), never the administration, so serial scans keep their order and spacing."""
        if self.administration is None or self.reference is None:
            return None
        return (self.reference - self.administration).total_seconds()

    @property
    def decayed_activity_bq(self) -> float:
        """The administered activity decayed to `reference`: SUV x this / weight = Bq/ml at the scan."""
        if self.uptake_time_s is None:
            return self.injected_activity_bq
        return self.injected_activity_bq * math.exp(-math.log(2) / self.half_life_s * self.uptake_time_s)


def lbm_james128_kg(weight_kg: float, height_cm: float, sex: str) -> float:
    # James (1976) as used for SUVlbm ("James128" form), docs/science.md
    if sex == "M":
        return 1.10 * weight_kg - 128.0 * (weight_kg / height_cm) ** 2
    return 1.07 * weight_kg - 148.0 * (weight_kg / height_cm) ** 2


def lbm_janmahasatian_kg(weight_kg: float, height_m: float, sex: str) -> float:
    # Janmahasatian et al., Clin Pharmacokinet 2005
    bmi = weight_kg / height_m**2
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)


def bsa_dubois_m2(weight_kg: float, height_cm: float) -> float:
    # Du Bois & Du Bois 1916
    return 0.007184 * weight_kg**0.425 * height_cm**0.725


# -- the computation --------------------------------------------------------------------------


def _patient(first: Dataset, derivation: list[str], warnings: list[str]) -> Patient:
    weight = to_float(first.get("PatientWeight"))
    if not weight or weight <= 0:
        raise SuvError("PatientWeight (0010,1030) is missing or zero: SUVbw needs the patient's weight in kg")
    if weight > 1000:
        warnings.append(f"PatientWeight {weight:g} looks like grams; used {weight / 1000:g} kg")
        weight /= 1000.0
    derivation.append(f"weight {weight:g} kg from PatientWeight")
    height = to_float(first.get("PatientSize"))
    if height is not None and height > 3:  # cm written where metres belong
        warnings.append(f"PatientSize {height:g} looks like cm; used {height / 100:g} m")
        height /= 100.0
    if height is not None and height <= 0:
        height = None
    sex = str(first.get("PatientSex", "") or "").strip().upper() or None
    return Patient(weight, height, sex if sex in ("M", "F") else None)


def _radiopharmaceutical(first: Dataset) -> Dataset:
    seq = first.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SuvError("RadiopharmaceuticalInformationSequence (0054,0016) is missing or empty")
    return seq[0]


def _nuclide(rp: Dataset) -> tuple[str | None, float | None]:
    codes = rp.get("RadionuclideCodeSequence") or []
    for code in codes:
        known = NUCLIDE_HALF_LIFE_S.get(str(code.get("CodeValue", "")).strip())
        if known:
            return known
    return None, None


def _administration(first: Dataset, rp: Dataset, half_life_s: float, series_dt: datetime | None,
                    settings: SuvSettings, derivation: list[str], warnings: list[str]) -> datetime:
    start_dt = rp.get("RadiopharmaceuticalStartDateTime")
    if start_dt and str(start_dt).strip():
        derivation.append("administration from RadiopharmaceuticalStartDateTime")
        return parse_dt(start_dt)
    start_t = rp.get("RadiopharmaceuticalStartTime")
    if not start_t:
        raise SuvError("neither RadiopharmaceuticalStartDateTime (0018,1078) nor RadiopharmaceuticalStartTime "
                       "(0018,1072) is present: the administration time is unknown")
    if series_dt is None:
        raise SuvError("RadiopharmaceuticalStartTime without a date, and no SeriesDate/SeriesTime to date it")
    t = parse_tm(start_t)
    days = settings.time_only_administration_days_before
    if days is None:
        if half_life_s >= LONG_LIVED_HALF_LIFE_S:
            raise SuvError(
                f"RadiopharmaceuticalStartTime (0018,1072) {start_t} has no date and the nuclide's half-life is "
                f"{half_life_s / 86400:.2f} d: a guessed date would be off by whole days (about "
                f"{100 * (1 - 2 ** (-86400 / half_life_s)):.0f} % per day). Set "
                "quantification.suv.time_only_administration_days_before, or have the scanner write "
                "RadiopharmaceuticalStartDateTime (0018,1078)")
        # QIBA: assume the series date, rolled back a day if that would put it after the series.
        admin = datetime.combine(series_dt.date(), t)
        if admin > series_dt:
            admin -= timedelta(days=1)
            warnings.append("administration time has no date: assumed the day before the series (crosses midnight)")
        else:
            warnings.append("administration time has no date: assumed the series date (QIBA)")
        derivation.append("administration from RadiopharmaceuticalStartTime + series date")
        return admin
    admin = datetime.combine(series_dt.date() - timedelta(days=days), t)
    if days == 0 and admin > series_dt:
        admin -= timedelta(days=1)
    derivation.append(f"administration from RadiopharmaceuticalStartTime, dated {days} day(s) before the series "
                      "by quantification.suv.time_only_administration_days_before")
    return admin


def _reference_time(slices: Sequence[Dataset], half_life_s: float, derivation: list[str],
                    warnings: list[str]) -> datetime:
    """The time the pixel values are decay-corrected to (DecayCorrection START)."""
    first = slices[0]
    series_dt = combine(first, "SeriesDate", "SeriesTime")
    acquisitions = [(a, s) for s in slices if (a := combine(s, "AcquisitionDate", "AcquisitionTime")) is not None]
    if series_dt is None and not acquisitions:
        raise SuvError("no SeriesDate/SeriesTime nor AcquisitionDate/AcquisitionTime: the scan time is unknown")
    earliest = min(acquisitions, key=lambda x: x[0]) if acquisitions else None
    if series_dt is not None and (earliest is None or series_dt <= earliest[0]):
        derivation.append("reference time = Series DateTime (not after the earliest acquisition)")
        return series_dt
    # Post-processed series: Series Time is when the series was made.
    scan, creator_found = private_value(first, 0x0009, GE_CREATOR, 0x0D)
    if scan and creator_found:
        derivation.append("reference time = GE private scan DateTime (0009,100D): series was post-processed")
        return parse_dt(str(scan))
    assert earliest is not None
    acq_dt, acq_slice = earliest
    frame_ms = to_float(acq_slice.get("ActualFrameDuration"))
    frame_ref_ms = to_float(acq_slice.get("FrameReferenceTime"))
    # FrameReferenceTime is the offset from the series reference to the frame's decay-weighted
    # mid-time (PS3.3 C.8.9.4.1.5), so it is > 0 for any real frame; 0 means "not filled in".
    if frame_ms and frame_ref_ms:
        lam = math.log(2) / half_life_s
        t_frame = frame_ms / 1000.0
        t_ave = math.log(lam * t_frame / (1.0 - math.exp(-lam * t_frame))) / lam
        derivation.append("reference time back-computed from the earliest acquisition: AcquisitionDateTime - "
                          "FrameReferenceTime + decay-weighted mid-frame time (series post-processed)")
        return acq_dt - timedelta(seconds=frame_ref_ms / 1000.0) + timedelta(seconds=t_ave)
    warnings.append("series post-processed and no frame timing (FrameReferenceTime 0 or absent): used the "
                    "earliest acquisition time")
    derivation.append("reference time = earliest AcquisitionDateTime")
    return acq_dt


def _scan_time(slices: Sequence[Dataset], half_life_s: float, admin: datetime | None, derivation: list[str],
               warnings: list[str]) -> datetime | None:
    """The scan's own time for series whose values do not refer to it (DecayCorrection ADMIN or NONE,
    GML, CM2ML): found as for START (Series DateTime, else the GE scan time, else back-computed from
    the frame timing; PS3.3 C.8.9.1.1.3), so uptake time, comparison and dosimetry see when the scan
    was made. None (with a warning) when the headers do not say."""
    try:
        scan = _reference_time(slices, half_life_s, derivation, warnings)
    except SuvError as exc:
        warnings.append(f"scan time unknown ({exc}); uptake time not reported")
        return None
    if admin is not None and scan < admin:
        warnings.append(f"scan time {scan:%Y-%m-%d %H:%M:%S} precedes the administration: uptake time not reported")
        return None
    return scan


def compute_suv(slices: Sequence[Dataset], settings: SuvSettings | None = None) -> SuvCalculation:
    """SUVbw scale factors for the slices of one PET series (in their given order)."""
    if not slices:
        raise SuvError("no PET images")
    settings = settings or SuvSettings()
    derivation: list[str] = []
    warnings: list[str] = []
    first = slices[0]
    units = str(first.get("Units", "") or "").strip().upper()
    if units not in ("BQML", "CNTS", "GML", "CM2ML"):
        raise SuvError(f"Units (0054,1001) is {units or 'missing'!r}; expected BQML, CNTS, GML or CM2ML")
    decay_correction = str(first.get("DecayCorrection", "") or "").strip().upper()
    if decay_correction not in ("START", "ADMIN", "NONE"):
        raise SuvError(f"DecayCorrection (0054,1102) is {decay_correction or 'missing'!r}; "
                       "expected START, ADMIN or NONE")
    corrected_value = first.get("CorrectedImage") or []
    if isinstance(corrected_value, str):  # a single value is not a list in pydicom
        corrected_value = [corrected_value]
    corrected = {str(c).strip().upper() for c in corrected_value}
    needed = {"ATTN"} if decay_correction == "NONE" else {"ATTN", "DECY"}
    if units in ("BQML", "CNTS") and not needed <= corrected:
        raise SuvError(f"CorrectedImage (0028,0051) lacks {', '.join(sorted(needed - corrected))}: images that are "
                       "not attenuation- and decay-corrected give no SUV")
    patient = _patient(first, derivation, warnings)
    weight_g = patient.weight_kg * 1000.0
    rp = _radiopharmaceutical(first)
    dose = to_float(rp.get("RadionuclideTotalDose"))
    if not dose or dose <= 0:
        raise SuvError("RadionuclideTotalDose (0018,1074) is missing or zero: the injected activity is unknown")
    if dose < 1e5:
        warnings.append(f"RadionuclideTotalDose {dose:g} looks like MBq; used {dose:g} MBq = {dose * 1e6:g} Bq")
        dose *= 1e6
    half_life = to_float(rp.get("RadionuclideHalfLife"))
    if not half_life or half_life <= 0:
        raise SuvError("RadionuclideHalfLife (0018,1075) is missing or zero")
    nuclide, expected_half_life = _nuclide(rp)
    if expected_half_life and abs(half_life / expected_half_life - 1) > HALF_LIFE_TOLERANCE:
        raise SuvError(f"RadionuclideHalfLife (0018,1075) {half_life:g} s contradicts the nuclide code ({nuclide}, "
                       f"{expected_half_life:g} s): a protocol copied from another tracer? Fix the header")
    series_dt = combine(first, "SeriesDate", "SeriesTime")
    admin: datetime | None = None
    reference: datetime | None = None
    factors: list[float]

    if units == "GML":
        from node.quant.suvtypes import gml_factor  # it builds on this module's formulas

        factors = [gml_factor(patient, str(first.get("SUVType", "") or ""), derivation, warnings)] * len(slices)
        # The values need no times, but uptake time, comparison and dosimetry do: kept when stated.
        try:
            admin = _administration(first, rp, half_life, series_dt, settings, derivation, warnings)
        except SuvError as exc:
            warnings.append(f"administration time unknown ({exc}); uptake time not reported")
        reference = _scan_time(slices, half_life, admin, derivation, warnings)
    elif units == "CNTS" and (suv_factor := _philips_suv_factor(first, warnings)) is not None:
        derivation.append("Units CNTS: Philips private SUV Scale Factor (7053,1000)")
        factors = [_philips_suv_factor(s, []) or suv_factor for s in slices]
        admin = _administration(first, rp, half_life, series_dt, settings, derivation, warnings)
        reference = _reference_time(slices, half_life, derivation, warnings)
    else:
        admin = _administration(first, rp, half_life, series_dt, settings, derivation, warnings)
        scale = 1.0
        if units == "CNTS":
            acf, creator_found = private_value(first, 0x7053, PHILIPS_CREATOR, 0x09)
            acf_f = to_float(acf)
            if not acf_f:
                raise SuvError("Units CNTS without a usable Philips SUV Scale Factor (7053,1000) or Activity "
                               "Concentration Scale Factor (7053,1009): counts cannot be converted")
            if not creator_found:
                warnings.append(f"Philips private elements used without their creator '{PHILIPS_CREATOR}'")
            scale = acf_f
            derivation.append("Units CNTS: Bq/ml = counts x Activity Concentration Scale Factor (7053,1009)")
        elif units == "CM2ML":
            if not patient.height_m:
                raise SuvError("Units CM2ML (SUVbsa) needs PatientSize (0010,1020) to convert to SUVbw")
            bsa_cm2 = bsa_dubois_m2(patient.weight_kg, patient.height_m * 100) * 1e4
            derivation.append("Units CM2ML: SUVbw = SUVbsa x weight / BSA (Du Bois)")
            factors = [weight_g / bsa_cm2] * len(slices)
            reference = _scan_time(slices, half_life, admin, derivation, warnings)
        if units != "CM2ML":
            lam = math.log(2) / half_life
            if decay_correction == "ADMIN":
                derivation.append("DecayCorrection ADMIN: values already decay-corrected to administration")
                reference = _scan_time(slices, half_life, admin, derivation, warnings)
                factors = [scale * weight_g / dose] * len(slices)
            elif decay_correction == "START":
                reference = _reference_time(slices, half_life, derivation, warnings)
                elapsed = (reference - admin).total_seconds()
                if elapsed < 0:
                    raise SuvError(f"administration {admin:%Y-%m-%d %H:%M:%S} is after the scan reference time "
                                   f"{reference:%Y-%m-%d %H:%M:%S}: check the administration date")
                decayed = dose * math.exp(-lam * elapsed)
                derivation.append(f"injected {dose / 1e6:.3f} MBq decayed over {elapsed / 3600:.3f} h "
                                  f"(half-life {half_life:g} s) to {decayed / 1e6:.3f} MBq")
                factors = [scale * weight_g / decayed] * len(slices)
            else:  # NONE: each slice carries its own decay
                derivation.append("DecayCorrection NONE: per-slice decay from administration and frame duration")
                factors = []
                for s in slices:
                    acq = combine(s, "AcquisitionDate", "AcquisitionTime")
                    frame_ms = to_float(s.get("ActualFrameDuration"))
                    if acq is None or not frame_ms:
                        raise SuvError("DecayCorrection NONE needs AcquisitionDate/Time and ActualFrameDuration "
                                       "(0018,1242) on every image")
                    t_frame = frame_ms / 1000.0
                    during = lam * t_frame / (1.0 - math.exp(-lam * t_frame))
                    factors.append(scale * weight_g / dose * during * math.exp(lam * (acq - admin).total_seconds()))
                reference = _scan_time(slices, half_life, admin, derivation, warnings)

    others: dict[str, float] = {}
    if patient.height_m and patient.sex:
        h_cm = patient.height_m * 100
        others["LBM_JAMES128"] = lbm_james128_kg(patient.weight_kg, h_cm, patient.sex) / patient.weight_kg
        others["LBM_JANMAHASATIAN"] = lbm_janmahasatian_kg(patient.weight_kg, patient.height_m,
                                                           patient.sex) / patient.weight_kg
    if patient.height_m:
        others["BSA_CM2_PER_G"] = bsa_dubois_m2(patient.weight_kg, patient.height_m * 100) * 1e4 / weight_g
    return SuvCalculation(units, tuple(factors), patient, dose, half_life, admin, reference, decay_correction,
                          tuple(derivation), tuple(warnings), nuclide, others)


def _philips_suv_factor(ds: Dataset, warnings: list[str]) -> float | None:
    value, creator_found = private_value(ds, 0x7053, PHILIPS_CREATOR, 0x00)
    factor = to_float(value)
    if factor is None or factor <= 0:
        return None
    if not creator_found:
        warnings.append(f"Philips private elements used without their creator '{PHILIPS_CREATOR}'")
    return factor
