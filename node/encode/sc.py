"""Secondary Capture summary: an anterior SUV MIP with numbered lesion outlines and the lesion
table, rendered for people, for viewers that show neither SEG nor SR.

Display conventions: nuclear-medicine inverse grey (white = 0), fixed SUVbw window 0-10 so pages of
different studies compare at a glance; patient's right on the viewer's left (anterior view).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.encode.identity import MANUFACTURER, SERIES_DESCRIPTIONS, SERIES_NUMBERS, ResultIdentity
from node.quant.measure import Lesion
from node.quant.study import SeriesResult

PAGE_WIDTH = 1024
PAGE_HEIGHT = 1024
SUV_WINDOW = (0.0, 10.0)
MIP_BOX = (16, 96, 400, PAGE_HEIGHT - 56)  # left, top, right, bottom
TABLE_LEFT = 420
ROW_HEIGHT = 24
ROWS_PER_PAGE = (PAGE_HEIGHT - 56 - 130) // ROW_HEIGHT
COLOURS = {"avid": (220, 20, 20), "metastasis": (230, 140, 0), "remnant": (170, 0, 170),
           "physiological": (40, 90, 200)}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no system fonts needed


def _colour(lesion: Lesion) -> tuple[int, int, int]:
    if lesion.label.startswith("physiological"):
        return COLOURS["physiological"]
    if lesion.label == "remnant":
        return COLOURS["remnant"]
    return COLOURS["avid"] if lesion.iodine_avid else COLOURS["metastasis"]


def _label_and_site(lesion: Lesion) -> tuple[str, str]:
    if lesion.label.startswith("physiological:"):
        return "physiological", lesion.label.split(":", 1)[1]
    return lesion.label, lesion.site


def _mip(result: SeriesResult) -> tuple[Image.Image, tuple[int, int]]:
    """Anterior MIP as RGB at true aspect ratio, and its offset on the page."""
    vol = result.suv_volume
    mip = result.suv_volume.array.max(axis=1)[::-1]  # max over rows (AP); head (largest z) on top
    lo, hi = SUV_WINDOW
    grey = (255 * (1 - np.clip((mip - lo) / (hi - lo), 0, 1))).astype(np.uint8)
    dx, dz = vol.spacing[0], vol.spacing[2]
    box_w, box_h = MIP_BOX[2] - MIP_BOX[0], MIP_BOX[3] - MIP_BOX[1]
    width_mm, height_mm = grey.shape[1] * dx, grey.shape[0] * dz
    scale_mm = min(box_w / width_mm, box_h / height_mm)
    size = (max(1, round(width_mm * scale_mm)), max(1, round(height_mm * scale_mm)))
    image = Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    return image, (MIP_BOX[0] + (box_w - size[0]) // 2, MIP_BOX[1])


def _outline(result: SeriesResult, image: Image.Image) -> list[tuple[Lesion, tuple[int, int]]]:
    """Draw each focus' projected outline; returns where each number goes (image coordinates)."""
    arr = np.asarray(image).copy()
    places = []
    for lesion in result.lesions:
        proj = (result.labels == lesion.mask_label).any(axis=1)[::-1]
        mask = np.asarray(Image.fromarray(proj.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST))
        mask = mask > 0
        if not mask.any():
            continue
        # Outline two pixels wide, outside the focus so the uptake itself stays visible.
        grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
        ring = grown & ~mask
        arr[ring] = _colour(lesion)
        ys, xs = np.nonzero(mask)
        places.append((lesion, (int(xs.max()) + 4, int(ys.min()) - 4)))
    image.paste(Image.fromarray(arr))
    return places


def _cell(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, x: float, y: float,
          right: bool, value: str, fill: object) -> None:
    """Text at x (its left edge, or its right edge for right-aligned numbers)."""
    draw.text((x - (draw.textlength(value, font=font) if right else 0), y), value, fill=fill, font=font)


def render_pages(result: SeriesResult, doc: dict) -> list[np.ndarray]:
    """RGB pages (PAGE_HEIGHT x PAGE_WIDTH x 3, uint8): page 1 MIP + table, further pages the rest of the table."""
    title, text, small = _font(24), _font(15), _font(13)
    lesions = result.lesions
    chunks = [lesions[i:i + ROWS_PER_PAGE] for i in range(0, len(lesions), ROWS_PER_PAGE)] or [[]]
    pages = []
    for n, chunk in enumerate(chunks):
        page = Image.new("RGB", (PAGE_WIDTH, PAGE_HEIGHT), "white")
        draw = ImageDraw.Draw(page)
        draw.text((16, 12), "124I PET/CT - iodine-node lesion summary", fill="black", font=title)
        uptake = doc.get("uptake_time_h")
        inj = doc.get("injected_activity_bq")
        sub = (f"Patient ID {doc.get('patient_id', '')}   Acc {doc.get('accession_number', '')}   "
               f"uptake {uptake:.1f} h" if uptake is not None else "uptake ?")
        sub += f"   injected {inj / 1e6:.1f} MBq" if inj else ""
        sub += f"   page {n + 1}/{len(chunks)}"
        draw.text((16, 46), sub, fill="black", font=text)
        metastases = [x for x in lesions if x.label == "metastasis"]
        avid = sum(1 for x in metastases if x.iodine_avid)
        draw.text((16, 70), f"{len(metastases)} suspected metastases ({avid} iodine-avid), "
                            f"{sum(1 for x in lesions if x.label == 'remnant')} remnant, "
                            f"{sum(1 for x in lesions if x.label.startswith('physiological'))} physiological",
                  fill="black", font=text)
        if n == 0:
            mip, offset = _mip(result)
            places = _outline(result, mip)
            page.paste(mip, offset)
            draw = ImageDraw.Draw(page)
            for lesion, (x, y) in places:
                draw.text((offset[0] + x, offset[1] + max(y, 0)), str(lesion.id), fill=_colour(lesion), font=text)
            bottom = offset[1] + mip.size[1]
            draw.text((offset[0], bottom + 4), "R", fill="black", font=text)
            draw.text((offset[0] + mip.size[0] - 10, bottom + 4), "L", fill="black", font=text)
            draw.text((offset[0] + 18, bottom + 6), f"anterior MIP, SUVbw {SUV_WINDOW[0]:g}-{SUV_WINDOW[1]:g}",
                      fill="black", font=small)
        x0 = TABLE_LEFT if n == 0 else 16
        # (header, x of the column's left edge or, for numbers, its right edge, right-aligned?)
        columns = [("#", 18, True), ("label", 28, False), ("site", 160, False), ("SUVmax", 348, True),
                   ("SUVpeak", 412, True), ("ml", 464, True), ("%IA", 522, True), ("LBR", 566, True),
                   ("avid", 574, False)]

        y = 110
        for name, x, right in columns:
            _cell(draw, text, x0 + x, y, right, name, "black")
        draw.line((x0, y + 22, PAGE_WIDTH - 12, y + 22), fill="black", width=1)
        y += ROW_HEIGHT + 4
        if not chunk:
            draw.text((x0, y), "No foci found.", fill="black", font=text)
        for lesion in chunk:
            ia = f"{lesion.percent_injected_activity:.3f}" if lesion.percent_injected_activity is not None else "-"
            label, site = _label_and_site(lesion)
            values = [str(lesion.id), label[:16], site[:21], f"{lesion.suv_max:.1f}",
                      f"{lesion.suv_peak:.1f}", f"{lesion.volume_ml:.1f}", ia, f"{lesion.lesion_to_background:.0f}",
                      "yes" if lesion.iodine_avid else "no"]
            for (name, x, right), value in zip(columns, values, strict=True):
                _cell(draw, text, x0 + x, y, right, value, _colour(lesion) if name == "#" else "black")
            y += ROW_HEIGHT
        draw.text((16, PAGE_HEIGHT - 22), "Automated quantification by iodine-node: verify on the images before "
                                          "clinical use. SUVbw; %IA decay-corrected to administration.",
                  fill="black", font=small)
        pages.append(np.asarray(page))
    return pages


def build_sc(result: SeriesResult, doc: dict, identity: ResultIdentity, charset: str | None) -> list[Dataset]:
    out = []
    for n, page in enumerate(render_pages(result, doc), start=1):
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
