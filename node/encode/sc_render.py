"""The summary pages' pixels (PIL): an anterior SUV MIP with numbered lesion outlines and the lesion
table, the change since a prior scan, predicted doses. node.encode.sc wraps them in Secondary Capture
images for viewers that show neither SEG nor SR.

Display conventions: nuclear-medicine inverse grey (white = 0), fixed SUVbw window 0-10 so pages of
different studies compare at a glance; patient's right on the viewer's left (anterior view).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from node.encode.style import lesion_rgb
from node.quant.models import Lesion, LesionCategory, LesionLabel, SeriesResult
from node.quant.volume import Volume

PAGE_WIDTH = 1024
PAGE_HEIGHT = 1024
SUV_WINDOW = (0.0, 10.0)
MIP_BOX = (16, 96, 400, PAGE_HEIGHT - 56)  # left, top, right, bottom
TABLE_LEFT = 420
ROW_HEIGHT = 24
ROWS_PER_PAGE = (PAGE_HEIGHT - 56 - 130) // ROW_HEIGHT


@dataclass(frozen=True)
class PriorView:
    """The earlier scan of a comparison, for the side-by-side page: its results and SUV volume."""

    doc: dict[str, Any]
    suv: Volume


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no system fonts needed


def _label_and_site(lesion: Lesion) -> tuple[str, str]:
    """The table's label and site columns: physiological uptake by its organ."""
    organ = lesion.label.organ
    if organ is not None:
        return LesionCategory.PHYSIOLOGICAL.value, organ
    return lesion.shown_label, lesion.site.value


def _mip(vol: Volume, box: tuple[int, int, int, int] = MIP_BOX) -> tuple[Image.Image, tuple[int, int]]:
    """Anterior MIP as RGB at true aspect ratio, and its offset on the page."""
    mip = vol.array.max(axis=1)[::-1]  # max over rows (AP); head (largest z) on top
    lo, hi = SUV_WINDOW
    grey = (255 * (1 - np.clip((mip - lo) / (hi - lo), 0, 1))).astype(np.uint8)
    dx, dz = vol.spacing[0], vol.spacing[2]
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    width_mm, height_mm = grey.shape[1] * dx, grey.shape[0] * dz
    scale_mm = min(box_w / width_mm, box_h / height_mm)
    size = (max(1, round(width_mm * scale_mm)), max(1, round(height_mm * scale_mm)))
    image = Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    return image, (box[0] + (box_w - size[0]) // 2, box[1])


def _project(vol: Volume, image: Image.Image, point_mm: list[float]) -> tuple[int, int]:
    """Where a patient-space point falls on the anterior MIP image of `vol`."""
    k, _, i = vol.lps_to_index(np.asarray(point_mm, float))
    nz, _, nx = vol.array.shape
    return round(float((i + 0.5) / nx * image.size[0])), round(float((nz - 1 - k + 0.5) / nz * image.size[1]))


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
        arr[ring] = lesion_rgb(lesion)
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
        metastases = [x for x in lesions if x.label == LesionLabel.METASTASIS]
        avid = sum(1 for x in metastases if x.iodine_avid)
        draw.text((16, 70), f"{len(metastases)} suspected metastases ({avid} iodine-avid), "
                            f"{sum(1 for x in lesions if x.label == LesionLabel.REMNANT)} remnant, "
                            f"{sum(1 for x in lesions if x.label.is_physiological)} physiological",
                  fill="black", font=text)
        if n == 0:
            mip, offset = _mip(result.suv_volume)
            places = _outline(result, mip)
            page.paste(mip, offset)
            draw = ImageDraw.Draw(page)
            for lesion, (x, y) in places:
                draw.text((offset[0] + x, offset[1] + max(y, 0)), str(lesion.id), fill=lesion_rgb(lesion), font=text)
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
                _cell(draw, text, x0 + x, y, right, value, lesion_rgb(lesion) if name == "#" else "black")
            y += ROW_HEIGHT
        draw.text((16, PAGE_HEIGHT - 22), "Automated quantification by iodine-node: verify on the images before "
                                          "clinical use. SUVbw; %IA decay-corrected to administration.",
                  fill="black", font=small)
        pages.append(np.asarray(page))
    return pages


CATEGORY_COLOURS = {"gained uptake": (0, 140, 0), "stable": (60, 60, 60), "reduced uptake": (230, 140, 0),
                    "lost (refractory candidate)": (220, 20, 20), "new": (40, 90, 200),
                    "relabelled (physiological in the other scan)": (150, 60, 200),
                    "avidity restored (avid only at higher TSH)": (0, 150, 150),
                    "avid only at lower TSH (refractory candidate)": (220, 20, 20),
                    "non-avid at both (refractory)": (120, 0, 0), "lost (non-avid before)": (110, 110, 110)}
SIDE_BOXES = ((16, 120, 500, 640), (524, 120, 1008, 640))
CHANGE_COLUMNS = [("now", 30, True), ("prior", 80, True), ("site", 100, False), ("SUVmax", 350, True),
                  ("SUVmax", 440, True), ("change", 520, True), ("%IA", 600, True), ("%IA", 680, True),
                  ("category", 700, False)]


def _mark(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, xy: tuple[int, int],
          label: str, colour: tuple[int, int, int]) -> None:
    x, y = xy
    draw.ellipse((x - 7, y - 7, x + 7, y + 7), outline=colour, width=2)
    draw.text((x + 9, y - 9), label, fill=colour, font=font)


def _time_label(point: dict[str, Any]) -> str:
    tsh = point.get("tsh_uiu_per_ml")
    when = (point.get("reference_datetime") or "")[:10]
    uptake = point.get("uptake_time_h")
    return (f"{when}  {uptake:.0f} h" if uptake is not None else when) + \
        (f"  TSH {tsh:g}" if tsh is not None else "  TSH unknown")


def _fmt(v: object, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


DOSE_COLUMNS = [("#", 24, True), ("site", 36, False), ("model", 200, False), ("g", 380, True),
                ("Teff h", 440, True), ("Gy/GBq", 470, False)]


def _range(ci: list[float] | None) -> str:
    return f" ({ci[0]:.0f}-{ci[1]:.0f})" if ci else ""


def render_dosimetry_page(doc: dict[str, Any]) -> np.ndarray:
    """Predicted 131I lesion doses from serial scans of one administration, as a table."""
    title, text, small = _font(24), _font(15), _font(13)
    dosimetry = doc["dosimetry"]
    thresholds = dosimetry["thresholds_gy"]
    rows = [r for r in dosimetry["lesions"] if "gy_per_gbq" in r]
    activities = list(rows[0]["predicted_dose_gy"]) if rows else []
    page = Image.new("RGB", (PAGE_WIDTH, PAGE_HEIGHT), "white")
    draw = ImageDraw.Draw(page)
    draw.text((16, 12), "124I PET/CT - predicted 131I lesion doses (iodine-node)", fill="black", font=title)
    draw.text((16, 46), f"Patient ID {doc.get('patient_id', '')}   Acc {doc.get('accession_number', '')}   "
                        "time points: " + ", ".join(_time_label(p) for p in dosimetry["time_points"]),
              fill="black", font=text)
    draw.text((16, 70), f"treat if >= {thresholds['treat']:g} Gy, nodal response >= {thresholds['nodal_response']:g}"
                        f" Gy (at {thresholds['at_activity_gbq']:g} GBq); * mass uncertain (lesion < 2 x FWHM)",
              fill="black", font=text)
    draw.text((16, 90), "Gy/GBq ± 1 SD; predicted Gy (95 % interval); treat: reaches only when the lower bound does",
              fill="black", font=small)
    columns = DOSE_COLUMNS + [(f"Gy @{a.removesuffix('_gbq')} GBq", 610 + 130 * n, False)
                              for n, a in enumerate(activities)] + [("treat", 620 + 130 * len(activities), False)]
    y = 110
    for name, x, right in columns:
        _cell(draw, text, 16 + x, y, right, name, "black")
    draw.line((16, y + 22, PAGE_WIDTH - 12, y + 22), fill="black", width=1)
    y += ROW_HEIGHT + 4
    if not rows:
        draw.text((16, y), "No lesion was matched at two time points.", fill="black", font=text)
    for row in rows:
        if y > PAGE_HEIGHT - 50:
            draw.text((16, y), "... more lesions in the SR and results.json", fill="black", font=small)
            break
        colour = "black" if row["mass_reliable"] else (110, 110, 110)
        values = [f"{row['current_id']}{'' if row['mass_reliable'] else '*'}", str(row["site"])[:26],
                  row["model"].split(":")[0][:20], _fmt(row["mass_g"], 2), _fmt(row["effective_half_life_131_h"], 0),
                  _fmt(row["gy_per_gbq"], 1) + (f" ±{row['gy_per_gbq_sd']:.1f}" if row.get("gy_per_gbq_sd") else ""),
                  *[_fmt(row["predicted_dose_gy"][a], 0) + _range((row.get("predicted_dose_gy_ci95") or {}).get(a))
                    for a in activities],
                  row.get("treat_threshold") or ("yes" if row["reaches_treat_threshold"] else "no")]
        for (_, x, right), value in zip(columns, values, strict=True):
            _cell(draw, text, 16 + x, y, right, value, colour)
        y += ROW_HEIGHT
    for n, line in enumerate(reversed(textwrap.wrap("Dose model: " + dosimetry["method"], 150))):
        draw.text((16, PAGE_HEIGHT - 22 - 18 * n), line, fill="black", font=small)
    return np.asarray(page)


def render_comparison_page(result: SeriesResult, doc: dict[str, Any], prior: PriorView) -> np.ndarray:
    """Scan 1 | scan 2 anterior MIPs with matched lesion numbers (the current scan's numbers; a lesion
    gone since keeps its prior number in brackets), and the table of changes."""
    title, text, small = _font(24), _font(15), _font(13)
    comparison = doc["comparison"]
    rows = comparison["lesions"]
    page = Image.new("RGB", (PAGE_WIDTH, PAGE_HEIGHT), "white")
    draw = ImageDraw.Draw(page)
    draw.text((16, 12), "124I PET/CT - change since the prior scan (iodine-node)", fill="black", font=title)
    counts = comparison["summary"]["categories"]
    draw.text((16, 46), f"Patient ID {doc.get('patient_id', '')}   Acc {doc.get('accession_number', '')}   "
                        + "   ".join(f"{k}: {v}" for k, v in counts.items()), fill="black", font=text)
    draw.text((16, 70), f"Lesions avid at the higher TSH ({comparison['summary']['higher_tsh_scan'][:7]} scan): "
                        f"{comparison['summary']['avid_at_higher_tsh']}   "
                        f"refractory candidates: {len(comparison['refractory_candidates'])}", fill="black", font=text)
    points = comparison["time_points"]
    for n, (vol, box, point) in enumerate(((prior.suv, SIDE_BOXES[0], points[0]),
                                           (result.suv_volume, SIDE_BOXES[1], points[1]))):
        mip, offset = _mip(vol, box)
        page.paste(mip, offset)
        draw = ImageDraw.Draw(page)
        draw.text((box[0], box[1] - 22), f"{'Prior' if n == 0 else 'Current'}: {_time_label(point)}",
                  fill="black", font=small)
        for row in rows:
            colour = CATEGORY_COLOURS[row["category"]]
            if n == 0 and row["prior_id"] is not None:
                centre = next(les["centroid_mm"] for les in prior.doc["lesions"] if les["id"] == row["prior_id"])
                label = str(row["current_id"]) if row["current_id"] is not None else f"({row['prior_id']})"
            elif n == 1 and row["current_id"] is not None:
                centre = next(les["centroid_mm"] for les in doc["lesions"] if les["id"] == row["current_id"])
                label = str(row["current_id"])
            elif n == 1 and row["prior_centroid_mapped_mm"] is not None:
                centre, label = row["prior_centroid_mapped_mm"], f"({row['prior_id']})"
            else:
                continue
            x, y = _project(vol, mip, centre)
            _mark(draw, small, (offset[0] + x, offset[1] + y), label, colour)
    draw.text((16, SIDE_BOXES[0][3] + 6), f"anterior MIPs, SUVbw {SUV_WINDOW[0]:g}-{SUV_WINDOW[1]:g}; "
                                          "R on the left", fill="black", font=small)
    if comparison.get("warnings"):  # e.g. uptake times differ, TSH unknown
        draw.text((300, SIDE_BOXES[0][3] + 6), "WARNING: " + "; ".join(comparison["warnings"])[:100] + " ...",
                  fill=(200, 0, 0), font=small)
    y = SIDE_BOXES[0][3] + 30
    x0 = 16
    headers = ["now", "prior", "site", "SUVmax 1", "SUVmax 2", "change", "%IA 1", "%IA 2", "category"]
    for (_, x, right), name in zip(CHANGE_COLUMNS, headers, strict=True):
        _cell(draw, text, x0 + x, y, right, name, "black")
    draw.line((x0, y + 22, PAGE_WIDTH - 12, y + 22), fill="black", width=1)
    y += ROW_HEIGHT + 4
    shown = 0
    for row in rows:
        if y > PAGE_HEIGHT - 50:
            break

        change = row.get("relative_change_suv_max")
        values = [str(row["current_id"] or "-"), str(row["prior_id"] or "-"), str(row.get("site") or "")[:24],
                  _fmt(row["suv_max"][0], 1), _fmt(row["suv_max"][1], 1),
                  f"{100 * change:+.0f} %" if change is not None else "-",
                  _fmt(row["percent_injected_activity"][0], 3), _fmt(row["percent_injected_activity"][1], 3),
                  row["category"].replace(" in the other scan", "")]
        for (name, x, right), value in zip(CHANGE_COLUMNS, values, strict=True):
            fill = CATEGORY_COLOURS[row["category"]] if name in ("now", "category") else "black"
            _cell(draw, text, x0 + x, y, right, value, fill)
        y += ROW_HEIGHT
        shown += 1
    if shown < len(rows):
        draw.text((x0, y), f"... {len(rows) - shown} more lesions in the SR and results.json", fill="black",
                  font=small)
    draw.text((16, PAGE_HEIGHT - 22), "Automated comparison by iodine-node (rigid CT registration, matched "
                                      "lesions): verify on the images before clinical use.", fill="black", font=small)
    return np.asarray(page)


def render_summary(result: SeriesResult, doc: dict[str, Any], prior: PriorView | None = None) -> list[np.ndarray]:
    """Every page of the summary, in order: MIP and lesion table (more pages when the table is long),
    the side-by-side comparison with the prior scan (when given and compared), predicted doses."""
    pages = render_pages(result, doc)
    if prior is not None and isinstance(doc.get("comparison"), dict) and "lesions" in doc["comparison"]:
        pages.append(render_comparison_page(result, doc, prior))
    if isinstance(doc.get("dosimetry"), dict):
        pages.append(render_dosimetry_page(doc))
    return pages
