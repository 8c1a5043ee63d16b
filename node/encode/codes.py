"""Coded concepts used in the result objects (PS3.16 TID 1500, TID 1410, CID 7180/7181; docs/science.md)."""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.quant.models import Site

# Private coding scheme for quantities with no standard concept (PS3.16 8.2: designators starting
# with "99" are private); declared in each SR's Coding Scheme Identification Sequence.
PRIVATE_SCHEME = "99IODINE"
PRIVATE_SCHEME_NAME = "iodine-node private concepts"
ACTIVITY_AT_SCAN = Code("ACT-SCAN", PRIVATE_SCHEME, "Lesion activity at scan reference time")
ACTIVITY_AT_ADMIN = Code("ACT-ADMIN", PRIVATE_SCHEME, "Lesion activity decay-corrected to administration")
PERCENT_IA = Code("PCT-IA", PRIVATE_SCHEME, "Percent of injected activity")
IODINE_AVID = Code("IODINE-AVID", PRIVATE_SCHEME, "Iodine-avid")
REFERENCE_SOFT_TISSUE = Code("REF-SOFT-TISSUE", PRIVATE_SCHEME, "Soft-tissue reference SUVbw")
NO_FOCI = Code("NO-FOCI", PRIVATE_SCHEME, "No focus of iodine uptake found")
FINDING = codes.DCM.Finding  # DCM 121071
COMMENT = codes.DCM.Comment  # DCM 121106

# Change since the prior time point (two administrations: the TSH comparison)
SUVMAX_PRIOR = Code("SUVMAX-PRIOR", PRIVATE_SCHEME, "SUVbw max at prior time point")
SUVMAX_CHANGE = Code("SUVMAX-CHANGE", PRIVATE_SCHEME, "Relative change of SUVbw max since prior time point")
PERCENT_IA_PRIOR = Code("PCT-IA-PRIOR", PRIVATE_SCHEME, "Percent of injected activity at prior time point")
SUVMAX_RESIDUAL = Code("SUVMAX-RESIDUAL", PRIVATE_SCHEME, "SUVbw max at the mapped site of the prior lesion")
IODINE_AVID_PRIOR = Code("IODINE-AVID-PRIOR", PRIVATE_SCHEME, "Iodine-avid at prior time point")
UPTAKE_CHANGE = Code("UPTAKE-CHANGE", PRIVATE_SCHEME, "Iodine uptake change since prior time point")
CHANGE_CATEGORIES: dict[str, Code] = {
    "gained uptake": Code("GAINED", PRIVATE_SCHEME, "Gained uptake"),
    "stable": Code("STABLE", PRIVATE_SCHEME, "Stable uptake"),
    "reduced uptake": Code("REDUCED", PRIVATE_SCHEME, "Reduced uptake"),
    "lost (refractory candidate)": Code("LOST", PRIVATE_SCHEME, "Lost uptake (radioiodine-refractory candidate)"),
    "new": Code("NEW", PRIVATE_SCHEME, "New lesion"),
    "relabelled (physiological in the other scan)": Code("RELABELLED", PRIVATE_SCHEME,
                                                          "Physiological uptake in the other scan (review)"),
    "avidity restored (avid only at higher TSH)": Code("RESTORED", PRIVATE_SCHEME,
                                                        "Avidity restored at higher TSH"),
    "avid only at lower TSH (refractory candidate)": Code("ONLY-LOWER-TSH", PRIVATE_SCHEME,
                                                           "Avid only at lower TSH (radioiodine-refractory candidate)"),
    "non-avid at both (refractory)": Code("REFRACTORY", PRIVATE_SCHEME,
                                          "Non-avid at both TSH levels (radioiodine-refractory)"),
    "lost (non-avid before)": Code("LOST-NON-AVID", PRIVATE_SCHEME, "Lost lesion, non-avid before"),
}
UPTAKE_TIME_PRIOR = Code("UPTAKE-TIME-PRIOR", PRIVATE_SCHEME, "Uptake time at prior time point")
UPTAKE_TIMES_DIFFER = Code("UPTAKE-TIMES-DIFFER", PRIVATE_SCHEME, "Uptake times of the compared scans differ")
CHANGE_BEYOND_REPEATABILITY = Code("CHANGE-BEYOND-RC", PRIVATE_SCHEME,
                                   "SUVmax change from lower to higher TSH beyond repeatability")

# 131I lesion dosimetry from serial 124I scans of one administration
DOSE_PER_ACTIVITY = Code("DOSE-PER-GBQ", PRIVATE_SCHEME, "Predicted 131I absorbed dose per administered activity")
EFFECTIVE_HALF_LIFE = Code("T-EFF-131", PRIVATE_SCHEME, "131I effective half-life in lesion")
BIOLOGICAL_HALF_LIFE = Code("T-BIO", PRIVATE_SCHEME, "Biological half-life of iodine in lesion")
TIME_INTEGRATED_ACTIVITY = Code("TIA-PER-A0", PRIVATE_SCHEME, "131I time-integrated activity per administered activity")
DOSE_PER_ACTIVITY_SD = Code("DOSE-PER-GBQ-SD", PRIVATE_SCHEME,
                            "Standard uncertainty of predicted 131I dose per activity")
TREAT_THRESHOLD_DECISION = Code("TREAT-THRESHOLD", PRIVATE_SCHEME, "Predicted dose reaches treat threshold")
DECISIONS: dict[str, Code] = {"reaches": Code("REACHES", PRIVATE_SCHEME, "Reaches (lower 95 % bound)"),
                              "uncertain": Code("UNCERTAIN", PRIVATE_SCHEME, "Uncertain (95 % interval spans it)"),
                              "below": Code("BELOW", PRIVATE_SCHEME, "Below (upper 95 % bound)")}


def predicted_dose(activity_gbq: float) -> Code:
    """One concept per planned activity, e.g. "Predicted 131I absorbed dose for 3.7 GBq"."""
    return Code(f"DOSE-{activity_gbq:g}GBQ", PRIVATE_SCHEME, f"Predicted 131I absorbed dose for {activity_gbq:g} GBq")


def predicted_dose_sd(activity_gbq: float) -> Code:
    """The standard uncertainty of the predicted dose for one planned activity."""
    return Code(f"DOSE-{activity_gbq:g}GBQ-SD", PRIVATE_SCHEME,
                f"Standard uncertainty of predicted 131I dose for {activity_gbq:g} GBq")


SUVBW = codes.DCM.Suvbw  # DCM 126401 "SUVbw"
SUV_METHOD = codes.DCM.SUVBodyWeightCalculationMethod  # DCM 126410, TID 1419 row 10 "Measurement Method"
MAXIMUM = codes.SCT.Maximum  # SCT 56851009
MEAN = codes.SCT.Mean  # SCT 373098007
PEAK = codes.DCM.PeakValueWithinROI  # DCM 126031
VOLUME = codes.SCT.Volume  # SCT 118565006
METABOLIC_VOLUME = codes.DCM.MetabolicVolume  # DCM 126032
TOTAL_LESION_UPTAKE = codes.DCM.TotalLesionGlycolysis  # DCM 126033, here SUVmean x volume of 124I
LBR = codes.DCM.LesionToBackgroundSUVRatio  # DCM 126039
LBR_BACKGROUND = codes.DCM.BackgroundForLesionToBackgroundSUVRatio  # DCM 126040
YES, NO = codes.SCT.Yes, codes.SCT.No

# UCUM units
UNIT_SUVBW = Code("g/ml{SUVbw}", "UCUM", "Standardized Uptake Value body weight")
UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_G = Code("g", "UCUM", "gram")
UNIT_RATIO = Code("1", "UCUM", "no units")
UNIT_MBQ = Code("MBq", "UCUM", "megabecquerel")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_GY = Code("Gy", "UCUM", "gray")
UNIT_GY_PER_GBQ = Code("Gy/GBq", "UCUM", "gray per gigabecquerel")
UNIT_HOUR = Code("h", "UCUM", "hour")

# Segments (SEG) and findings (SR)
MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # SCT 91723000
TISSUE = codes.SCT.Tissue  # SCT 85756007
LESION = codes.SCT.Lesion  # SCT 52988006
THYROID = codes.SCT.Thyroid  # SCT 69748006

ORGANS: dict[str, Code] = {
    "salivary gland": codes.SCT.SalivaryGland,  # 385294005
    "stomach": codes.SCT.Stomach,  # 69695003
    "bowel": codes.SCT.Colon,  # 71854001
    "kidney": codes.SCT.Kidney,  # 64033007
    "bladder": codes.SCT.UrinaryBladderStructure,  # 89837001
    "nasal mucosa": codes.SCT.Nose,  # 45206002
}

SITES: dict[str, Code] = {  # keyed by node.quant.models.Site (a str enum: its plain value finds it too)
    Site.LUNG: codes.SCT.Lung,  # 39607008
    Site.BONE: codes.SCT.Bone,  # 272673000
    Site.NECK: codes.SCT.Neck,  # 45048000
    Site.NECK_LEVEL_II: codes.SCT.Neck, Site.NECK_LEVEL_VI: codes.SCT.Neck,  # nodal levels (node.quant.measure)
    Site.MEDIASTINUM: codes.SCT.Mediastinum,  # 72410000
    Site.ABDOMEN_PELVIS: codes.SCT.AbdomenAndPelvis,  # 818982008
    Site.THYROID_BED: codes.SCT.Thyroid,  # 69748006
}

# 124I PET/CT of the whole body (SCT 702767007 PET of whole body; the radionuclide is in the SR).
PROCEDURE = codes.SCT.PositronEmissionTomographyOfWholeBody
