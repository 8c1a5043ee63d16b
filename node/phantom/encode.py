"""Write phantom CT and PET slices as DICOM the way real scanners do, per vendor.

Attribute sources: PS3.3 A.21 (PET Image IOD: C.8.9.1 PET Series, C.8.9.2 PET Isotope, C.8.9.4
PET Image, C.8.4.6 NM/PET Patient Orientation) and A.3 (CT Image IOD: C.8.2.1 CT Image).
Vendor habits (QIBA SUV pseudo-code, docs/science.md): Siemens BQML with Series Time = scan start; GE BQML
with a post-processed Series Time and the scan start in private (0009,100D) of GEMS_PETD_01;
Philips CNTS with private scale factors (7053,1000) and (7053,1009) of "Philips PET Private Group".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage

import node
from node.phantom.render import AxialGrid
from node.uids import derive_uid

I124_HALF_LIFE_S = 360806.4  # ICRP-107: 4.176 d (docs/science.md)
I124_POSITRON_FRACTION = 0.229  # ICRP-107: 22.9 % (11.7 % + 10.8 %)
IMPLEMENTATION_CLASS_UID = derive_uid("iodine-node", "implementation")
VENDORS = ("siemens", "ge", "philips")

_MANUFACTURER = {
    "siemens": ("SIEMENS", "Biograph Vision 600"),
    "ge": ("GE MEDICAL SYSTEMS", "Discovery MI"),
    "philips": ("Philips Medical Systems", "Vereos PET/CT"),
}


def dicom_date(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def dicom_time(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def dicom_datetime(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


@dataclass(frozen=True)
class StudyInfo:
    """Everything shared by the CT and PET series of one phantom scan."""

    vendor: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age_y: int
    weight_kg: float
    height_m: float
    charset: str
    study_uid: str
    frame_of_reference_uid: str
    accession: str
    study_id: str
    study_description: str
    additional_history: str
    scan_start: datetime
    administration: datetime
    injected_activity_bq: float


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    ds = Dataset()
    ds.CodeValue = value
    ds.CodingSchemeDesignator = scheme
    ds.CodeMeaning = meaning
    return ds


def _common(info: StudyInfo, modality: str, series_uid: str, series_number: int, sop_class: str,
            sop_uid: str, content_time: datetime) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = f"IODINE_NODE_{node.__version__}"[:16]
    ds.SpecificCharacterSet = info.charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = dicom_date(content_time)
    ds.InstanceCreationTime = dicom_time(content_time)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = dicom_date(info.scan_start)
    ds.StudyTime = dicom_time(info.scan_start)
    ds.AccessionNumber = info.accession
    ds.Modality = modality
    ds.Manufacturer, ds.ManufacturerModelName = _MANUFACTURER[info.vendor]
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = info.study_description
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.IssuerOfPatientID = "IODINE_NODE_PHANTOM"
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.PatientAge = f"{info.age_y:03d}Y"
    ds.PatientSize = f"{info.height_m:.2f}"
    ds.PatientWeight = f"{info.weight_kg:.1f}"
    ds.AdditionalPatientHistory = info.additional_history
    ds.BodyPartExamined = "WHOLEBODY"
    ds.DeviceSerialNumber = "PHANTOM-0001"
    ds.SoftwareVersions = f"iodine-node phantom {node.__version__}"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = info.study_id
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _geometry(ds: Dataset, grid: AxialGrid, k: int) -> None:
    ds.ImagePositionPatient = [f"{grid.x_mm[0]:.4f}", f"{grid.y_mm[0]:.4f}", f"{grid.z_mm[k]:.4f}"]
    ds.SliceLocation = f"{grid.z_mm[k]:.4f}"
    ds.PixelSpacing = [f"{grid.pixel_mm:.6f}", f"{grid.pixel_mm:.6f}"]
    ds.Rows = grid.rows
    ds.Columns = grid.columns


def write_ct_slice(out: Path, info: StudyInfo, series_uid: str, grid: AxialGrid, k: int, hu: np.ndarray) -> str:
    sop_uid = derive_uid(series_uid, "ct", k)
    t = info.scan_start - timedelta(minutes=3)
    ds = _common(info, "CT", series_uid, 2, CTImageStorage, sop_uid, t)
    ds.SeriesDescription = "CT low dose AC/localisation"
    ds.SeriesDate, ds.SeriesTime = dicom_date(t), dicom_time(t)
    ds.AcquisitionDate, ds.AcquisitionTime = dicom_date(t), dicom_time(t)
    ds.ContentDate, ds.ContentTime = dicom_date(t), dicom_time(t)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.SliceThickness = f"{grid.slice_spacing_mm:.3f}"
    ds.KVP = "120"
    ds.XRayTubeCurrent = 40
    ds.ConvolutionKernel = "B30f"
    ds.PatientOrientation = ""
    _geometry(ds, grid, k)
    # 12-bit unsigned storage with intercept -1024, as most CT vendors write (PS3.3 C.8.2.1.1.4).
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16).tobytes()
    path = out / f"CT_{k + 1:04d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


@dataclass(frozen=True)
class BedTiming:
    """Multi-bed acquisition: each slice belongs to the bed that covered it."""

    frame_s: float
    bed_step_mm: float
    gap_s: float = 12.0  # table move between beds

    def bed_of(self, z_top: float, z: float) -> int:
        return int((z_top - z) // self.bed_step_mm)

    def bed_start(self, scan_start: datetime, bed: int) -> datetime:
        return scan_start + timedelta(seconds=bed * (self.frame_s + self.gap_s))


def decay_correction_factor(dt_s: float, frame_s: float, half_life_s: float) -> float:
    """Factor that corrects counts of a frame starting dt_s after the reference time back to it,
    including decay during the frame (PS3.3 C.8.9.4.1.5 Decay Factor)."""
    lam = math.log(2) / half_life_s
    return math.exp(lam * dt_s) * lam * frame_s / (1.0 - math.exp(-lam * frame_s))


def frame_average_time_s(frame_s: float, half_life_s: float) -> float:
    """Decay-weighted mean time within a frame (QIBA SUV pseudo-code, docs/science.md)."""
    lam = math.log(2) / half_life_s
    return math.log(lam * frame_s / (1.0 - math.exp(-lam * frame_s))) / lam


def _isotope(info: StudyInfo) -> Sequence:
    item = Dataset()
    item.Radiopharmaceutical = "Sodium iodide I-124"
    item.RadiopharmaceuticalRoute = "Oral"
    item.RadiopharmaceuticalStartTime = dicom_time(info.administration)
    item.RadiopharmaceuticalStartDateTime = dicom_datetime(info.administration)
    item.RadionuclideTotalDose = f"{info.injected_activity_bq:.1f}"
    item.RadionuclideHalfLife = f"{I124_HALF_LIFE_S}"
    item.RadionuclidePositronFraction = f"{I124_POSITRON_FRACTION}"
    # SCT codes of PS3.16 CID 4020 / CID 4021 (docs/science.md).
    item.RadionuclideCodeSequence = Sequence([_code("40937006", "SCT", "^124^Iodine")])
    item.RadiopharmaceuticalCodeSequence = Sequence([_code("422980002", "SCT", "Sodium iodide I^124^")])
    item.AdministrationRouteCodeSequence = Sequence([_code("26643006", "SCT", "Oral route")])
    return Sequence([item])


def write_pet_series(out: Path, info: StudyInfo, series_uid: str, grid: AxialGrid, conc_bq_per_ml: np.ndarray,
                     timing: BedTiming) -> list[str]:
    """One file per slice; pixel values decay-corrected to the scan start (DecayCorrection START)."""
    vendor = info.vendor
    n = len(grid.z_mm)
    n_beds = timing.bed_of(grid.z_mm[0], grid.z_mm[-1]) + 1
    scan_end = timing.bed_start(info.scan_start, n_beds - 1) + timedelta(seconds=timing.frame_s)
    # Post-processed series (GE habit): Series Time is when the series was made, after acquisition.
    series_time = scan_end + timedelta(minutes=25) if vendor == "ge" else info.scan_start
    weight_g = info.weight_kg * 1000.0
    lam = math.log(2) / I124_HALF_LIFE_S
    decayed_dose_bq = info.injected_activity_bq * math.exp(
        -lam * (info.scan_start - info.administration).total_seconds())
    # Philips CNTS: pixel (after rescale) x (7053,1009) = Bq/ml; x (7053,1000) = SUVbw.
    philips_acf = 0.0357
    uids: list[str] = []
    for k in range(n):
        bed = timing.bed_of(grid.z_mm[0], grid.z_mm[k])
        bed_start = timing.bed_start(info.scan_start, bed)
        dt_s = (bed_start - info.scan_start).total_seconds()
        sop_uid = derive_uid(series_uid, "pt", k)
        ds = _common(info, "PT", series_uid, 3, PositronEmissionTomographyImageStorage, sop_uid, series_time)
        ds.SeriesDescription = "PET I-124 WB AC"
        ds.SeriesDate, ds.SeriesTime = dicom_date(series_time), dicom_time(series_time)
        ds.AcquisitionDate, ds.AcquisitionTime = dicom_date(bed_start), dicom_time(bed_start)
        ds.ContentDate, ds.ContentTime = dicom_date(series_time), dicom_time(series_time)
        ds.AcquisitionNumber = bed + 1
        ds.InstanceNumber = k + 1
        ds.SliceThickness = f"{grid.slice_spacing_mm:.3f}"
        _geometry(ds, grid, k)
        # PET Series (C.8.9.1)
        ds.Units = "CNTS" if vendor == "philips" else "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.NumberOfSlices = n
        ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"]
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "measured, CT-based"
        ds.ScatterCorrectionMethod = "model-based"
        ds.DecayCorrection = "START"
        ds.ReconstructionMethod = "OSEM 3i21s"
        ds.ReconstructionDiameter = f"{grid.columns * grid.pixel_mm:.1f}"
        ds.ConvolutionKernel = "Gaussian 4mm"
        ds.CollimatorType = "NONE"
        ds.AxialAcceptance = "27"
        ds.AxialMash = [5, 6]
        ds.TransverseMash = 1
        ds.DetectorElementSize = ["4.0", "4.0"]
        ds.CoincidenceWindowWidth = "4.7"
        ds.SecondaryCountsType = ["DLYD", "SCAT"]
        ds.FieldOfViewShape = "CYLINDRICAL RING"
        ds.FieldOfViewDimensions = [780, 260]
        ds.GantryDetectorTilt = "0"
        ds.GantryDetectorSlew = "0"
        ds.TypeOfDetectorMotion = "NONE"
        ds.EnergyWindowRangeSequence = Sequence([Dataset()])
        ds.EnergyWindowRangeSequence[0].EnergyWindowLowerLimit = "435"
        ds.EnergyWindowRangeSequence[0].EnergyWindowUpperLimit = "585"
        # PET Isotope (C.8.9.2) and NM/PET Patient Orientation (C.8.4.6)
        ds.RadiopharmaceuticalInformationSequence = _isotope(info)
        ds.PatientOrientationCodeSequence = Sequence([_code("102538003", "SCT", "recumbent")])
        ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = Sequence(
            [_code("40199007", "SCT", "supine")])
        ds.PatientGantryRelationshipCodeSequence = Sequence([_code("102540008", "SCT", "headfirst")])
        del ds.PatientPosition  # C.8.4.6: not with the orientation code sequences (NM/PET)
        # PET Image (C.8.9.4)
        ds.ImageIndex = k + 1
        ds.FrameReferenceTime = f"{(dt_s + frame_average_time_s(timing.frame_s, I124_HALF_LIFE_S)) * 1000.0:.3f}"
        ds.ActualFrameDuration = round(timing.frame_s * 1000)
        ds.DecayFactor = f"{decay_correction_factor(dt_s, timing.frame_s, I124_HALF_LIFE_S):.8f}"
        ds.DoseCalibrationFactor = "1.0"
        ds.PrimaryPromptsCountsAccumulated = 0
        ds.SliceSensitivityFactor = "1.0"
        ds.LossyImageCompression = "00"
        # Pixel data: uint16, per-slice RescaleSlope from the slice maximum, intercept 0.
        values = conc_bq_per_ml[k].astype(np.float64)
        if vendor == "philips":
            values = values / philips_acf
            ds.add_new(0x70530010, "LO", "Philips PET Private Group")
            ds.add_new(0x70531000, "DS", f"{philips_acf * weight_g / decayed_dose_bq:.10g}")
            ds.add_new(0x70531009, "DS", f"{philips_acf:.10g}")
        if vendor == "ge":
            ds.add_new(0x00090010, "LO", "GEMS_PETD_01")
            ds.add_new(0x0009100D, "DT", dicom_datetime(info.scan_start))
        peak = float(values.max())
        slope = peak / 32767.0 if peak > 0 else 1.0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = f"{slope:.10g}"
        slope = float(ds.RescaleSlope)  # the value as written (DS keeps 16 characters)
        ds.PixelData = np.clip(np.rint(values / slope), 0, 65535).astype(np.uint16).tobytes()
        ds.save_as(out / f"PT_{k + 1:04d}.dcm", enforce_file_format=True)
        uids.append(sop_uid)
    return uids
