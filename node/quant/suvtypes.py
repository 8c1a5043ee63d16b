"""SUV normalisations other than body weight, and the DICOM SUV Type of GML series.

SUV_x = C [Bq/ml] x N_x / D [Bq], with N_x the body-size normaliser in g (or cm² for BSA), so every
type is SUVbw x N_x / W_g. Formulas (W kg, H cm unless stated):
- body weight (bw): N = W.
- lean body mass, James 1976 "James-128" form (lbm-james): M 1.10 W - 128 (W/H)², F 1.07 W - 148 (W/H)²
  (James WPT, Research on Obesity, HMSO 1976; as used for SUVlbm by Sugawara et al., Radiology
  1999;213:521).
- SUL, lean body mass after Janmahasatian (sul-janmahasatian): M 9270 W / (6680 + 216 BMI),
  F 9270 W / (8780 + 244 BMI), BMI = W / H_m² (Janmahasatian et al., Clin Pharmacokinet
  2005;44:1051); the PERCIST normalisation (Wahl et al., J Nucl Med 2009;50:122S).
- body surface area (bsa), Du Bois: 0.007184 W^0.425 H^0.725 m² (Du Bois & Du Bois, Arch Intern Med
  1916;17:863), N in cm², so SUVbsa is in cm²/ml.
- ideal body weight (ibw): M 48.0 + 1.06 (H - 152), F 45.5 + 0.91 (H - 152) kg (Sugawara et al. 1999).

DICOM SUV Type (0054,1006), PS3.3 C.8.9.1.1.x (defined terms BSA, BW, IBW, LBM, LBMJAMES128,
LBMJANMA) says which of these a GML series holds.
"""

from __future__ import annotations

from node.quant.suv import Patient, SuvError, bsa_dubois_m2, lbm_james128_kg, lbm_janmahasatian_kg

SUV_TYPES = ("bw", "lbm-james", "sul-janmahasatian", "bsa", "ibw")
UNITS = {"bw": "g/ml", "lbm-james": "g/ml", "sul-janmahasatian": "g/ml", "bsa": "cm2/ml", "ibw": "g/ml"}

# SUV Type (0054,1006) -> our name. Plain "LBM" does not say which formula: James-128 is what the
# QIBA pseudo-code and most vendors use for it, so it is read as such (with a warning).
DICOM_SUV_TYPE = {"": "bw", "BW": "bw", "LBMJAMES128": "lbm-james", "LBM": "lbm-james",
                  "LBMJANMA": "sul-janmahasatian", "BSA": "bsa", "IBW": "ibw"}


def ibw_kg(height_cm: float, sex: str) -> float:
    if sex == "M":
        return 48.0 + 1.06 * (height_cm - 152.0)
    return 45.5 + 0.91 * (height_cm - 152.0)


def normaliser(patient: Patient, suv_type: str) -> float:
    """N_x in g (cm² for bsa); SuvError naming the missing attribute when the headers lack it."""
    if suv_type not in SUV_TYPES:
        raise SuvError(f"SUV type {suv_type!r} unknown; expected one of {', '.join(SUV_TYPES)}")
    w = patient.weight_kg
    if suv_type == "bw":
        return w * 1000.0
    if not patient.height_m:
        raise SuvError(f"SUV type {suv_type} needs PatientSize (0010,1020), which is missing or zero")
    h_cm = patient.height_m * 100.0
    if suv_type == "bsa":
        return bsa_dubois_m2(w, h_cm) * 1e4
    if patient.sex not in ("M", "F"):
        raise SuvError(f"SUV type {suv_type} needs PatientSex (0010,0040) M or F")
    kg = {"lbm-james": lambda: lbm_james128_kg(w, h_cm, patient.sex),
          "sul-janmahasatian": lambda: lbm_janmahasatian_kg(w, patient.height_m, patient.sex),
          "ibw": lambda: ibw_kg(h_cm, patient.sex)}[suv_type]()
    if kg <= 0:
        raise SuvError(f"SUV type {suv_type}: the formula gives {kg:.1f} kg for weight {w:g} kg, height "
                       f"{h_cm:g} cm (outside its range)")
    return kg * 1000.0


def ratio_to_bw(patient: Patient, suv_type: str) -> float:
    """SUV_type / SUVbw for this patient."""
    return normaliser(patient, suv_type) / (patient.weight_kg * 1000.0)


def gml_factor(patient: Patient, dicom_suv_type: str, derivation: list[str], warnings: list[str]) -> float:
    """Factor turning the values of a GML series of the declared SUV Type into SUVbw."""
    key = dicom_suv_type.strip().upper()
    if key not in DICOM_SUV_TYPE:
        raise SuvError(f"Units GML with SUVType (0054,1006) {dicom_suv_type!r}: expected one of "
                       f"{', '.join(k for k in DICOM_SUV_TYPE if k)} (PS3.3 C.8.9.1.1)")
    suv_type = DICOM_SUV_TYPE[key]
    if key == "LBM":
        warnings.append("SUVType LBM does not name its formula: read as James-128 (LBMJAMES128)")
    if suv_type == "bw":
        derivation.append("Units GML: pixel values are SUVbw already")
        return 1.0
    factor = 1.0 / ratio_to_bw(patient, suv_type)
    derivation.append(f"Units GML, SUVType {key or 'BW'}: SUVbw = value x weight / {suv_type} normaliser "
                      f"= value x {factor:.6g}")
    return factor
