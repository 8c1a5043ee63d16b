"""DICOM SEG: one binary segment per focus, on the PET series' geometry (highdicom)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

import node
from node.encode import codes as c
from node.encode.identity import (
    DEVICE_SERIAL,
    MANUFACTURER,
    MODEL,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    ResultIdentity,
)
from node.encode.style import lesion_rgb
from node.quant.models import CT_DISPLAY, Lesion, LesionLabel, SeriesResult


def segment_label(lesion: Lesion) -> str:
    """`Lesion 3 (lung, avid)`: what a viewer shows in its segment list (LO: 64 characters)."""
    if lesion.label.is_physiological:
        return f"Physiological {lesion.id} ({lesion.label.organ})"[:64]
    kind = "Remnant" if lesion.label == LesionLabel.REMNANT else "Lesion"
    if lesion.found_on_ct:  # found on CT, no PET focus (node.quant.ctlesions)
        return f"Lesion {lesion.id} ({lesion.site.value}, {CT_DISPLAY})"[:64]
    return f"{kind} {lesion.id} ({lesion.site.value}, {'avid' if lesion.iodine_avid else 'not avid'})"[:64]


def segment_codes(lesion: Lesion) -> tuple[object, object]:
    """(category, type) for the segment (PS3.16 CID 7150 / 7151)."""
    if lesion.label.organ is not None:
        return c.ANATOMICAL_STRUCTURE, c.ORGANS.get(lesion.label.organ, c.TISSUE)
    if lesion.label == LesionLabel.REMNANT:
        return c.TISSUE, c.THYROID
    return c.MORPHOLOGICALLY_ABNORMAL, c.LESION


def segment_colour(lesion: Lesion) -> hd.color.CIELabColor:
    """Recommended display colour (PS3.3 C.8.20.2: CIELab): the SC page's, so a lesion looks the same in
    both (node.encode.style)."""
    return hd.color.CIELabColor.from_rgb(*lesion_rgb(lesion))


def algorithm() -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name="iodine-node", family=codes.cid7162.NeighborhoodAnalysis,
                                              version=node.__version__)


def build_seg(result: SeriesResult, identity: ResultIdentity, tracking: dict[int, tuple[str, str]],
              charset: str | None) -> hd.seg.Segmentation | None:
    """None when there is nothing to segment (an empty SEG is not valid)."""
    if not result.lesions:
        return None
    lut = np.zeros(int(result.labels.max()) + 1, np.uint16)
    for lesion in result.lesions:
        lut[lesion.mask_label] = lesion.id
    label_map = lut[result.labels]  # frames in volume order = result.pet_headers order
    dtype = np.uint8 if len(result.lesions) < 256 else np.uint16
    descriptions = []
    for lesion in result.lesions:
        category, kind = segment_codes(lesion)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=lesion.id, segment_label=segment_label(lesion), segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm(), tracking_uid=tracking[lesion.id][0],
            tracking_id=tracking[lesion.id][1], display_color=segment_colour(lesion)))
    return hd.seg.Segmentation(
        source_images=result.pet_headers, pixel_array=label_map.astype(dtype),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=identity.series_uid("seg"), series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=identity.instance_uid("seg"), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL, software_versions=node.__version__, device_serial_number=DEVICE_SERIAL,
        series_description=SERIES_DESCRIPTIONS["seg"], omit_empty_frames=True,
        content_description="124I lesions", content_label="IODINE_LESIONS",
        specific_character_set=charset,
    )
