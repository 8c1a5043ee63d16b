"""The lesion label, site and detection enums: their values are the strings results.json carries."""

from __future__ import annotations

import json

from node.quant.models import CT_DISPLAY, Detection, LesionCategory, LesionLabel, Site


def test_labels_keep_their_document_strings_and_say_what_they_are() -> None:
    assert json.dumps([LesionLabel.METASTASIS, LesionLabel.KIDNEY, Site.NECK_LEVEL_II, Detection.CT]) == \
        '["metastasis", "physiological:kidney", "neck (level II)", "ct"]'
    assert LesionLabel("physiological:salivary gland") is LesionLabel.SALIVARY_GLAND
    assert LesionLabel.SALIVARY_GLAND.category is LesionCategory.PHYSIOLOGICAL
    assert LesionLabel.SALIVARY_GLAND.organ == "salivary gland" and not LesionLabel.SALIVARY_GLAND.followed
    assert LesionLabel.REMNANT.category is LesionCategory.REMNANT and LesionLabel.REMNANT.organ is None
    assert LesionLabel.METASTASIS.followed and LesionLabel.REMNANT.followed
    assert [label for label in LesionLabel if label.is_physiological] == [
        LesionLabel.SALIVARY_GLAND, LesionLabel.NASAL_MUCOSA, LesionLabel.BLADDER, LesionLabel.KIDNEY,
        LesionLabel.STOMACH, LesionLabel.BOWEL]
    assert CT_DISPLAY == "non-avid (CT)"
