"""Secondary Capture summary pages as DICOM images (highdicom SCImage): one image per rendered page.

The pixels are node.encode.sc_render's; this module only builds the IOD around them.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.encode.identity import MANUFACTURER, SERIES_DESCRIPTIONS, SERIES_NUMBERS, ResultIdentity
from node.encode.sc_render import PriorView, render_summary
from node.quant.models import SeriesResult

__all__ = ["PriorView", "build_sc"]  # PriorView: what callers hand in for the side-by-side page


def build_sc(result: SeriesResult, doc: dict[str, Any], identity: ResultIdentity, charset: str | None,
             prior: PriorView | None = None) -> list[Dataset]:
    """One Secondary Capture image per summary page (node.encode.sc_render draws them), in one series."""
    out = []
    for n, page in enumerate(render_summary(result, doc, prior), start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=result.pet_headers[0], pixel_array=page, photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=identity.series_uid("sc"),
            sop_instance_uid=identity.instance_uid("sc", n), series_number=SERIES_NUMBERS["sc"], instance_number=n,
            manufacturer=MANUFACTURER, patient_orientation=("L", "F"), series_description=SERIES_DESCRIPTIONS["sc"],
            specific_character_set=charset, transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        sc.BurnedInAnnotation = "YES"  # the page carries identifying text (PS3.3 C.7.6.1.1.3)
        sc.Laterality = ""  # General Series, Type 2C: the page shows the whole body, no side
        out.append(sc)
    return out
