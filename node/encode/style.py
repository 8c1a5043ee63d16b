"""How a kind of focus looks, the same on the SC page and in the SEG's recommended display colour:
red avid metastasis, orange non-avid, purple remnant, blue physiological."""

from __future__ import annotations

from node.quant.models import Lesion, LesionCategory

KIND_RGB: dict[str, tuple[int, int, int]] = {"avid": (220, 20, 20), "non-avid": (230, 140, 0),
                                             "remnant": (170, 0, 170), "physiological": (40, 90, 200)}


def lesion_kind(lesion: Lesion) -> str:
    """"avid", "non-avid", "remnant" or "physiological" (a key of KIND_RGB)."""
    category = lesion.label.category
    if category is not LesionCategory.METASTASIS:
        return category.value
    return "avid" if lesion.iodine_avid else "non-avid"


def lesion_rgb(lesion: Lesion) -> tuple[int, int, int]:
    return KIND_RGB[lesion_kind(lesion)]
