"""Which storage SOP classes and transfer syntaxes the node accepts (PS3.4 B.5, PS3.5 A/10)."""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import sop_class as sc

# Images the node quantifies.
PROCESSED_SOP_CLASSES: frozenset[str] = frozenset({
    sc.PositronEmissionTomographyImageStorage,
    sc.EnhancedPETImageStorage,
    sc.LegacyConvertedEnhancedPETImageStorage,
    sc.CTImageStorage,
    sc.EnhancedCTImageStorage,
    sc.LegacyConvertedEnhancedCTImageStorage,
})

# Objects that arrive with a PET/CT study: stored with it, not processed.
STORED_ONLY_SOP_CLASSES: frozenset[str] = frozenset({
    sc.RTStructureSetStorage,
    sc.RTDoseStorage,
    sc.RTPlanStorage,
    sc.SpatialRegistrationStorage,
    sc.DeformableSpatialRegistrationStorage,
    sc.BasicTextSRStorage,
    sc.EnhancedSRStorage,
    sc.ComprehensiveSRStorage,
    sc.Comprehensive3DSRStorage,
    sc.ExtensibleSRStorage,
    sc.KeyObjectSelectionDocumentStorage,
    sc.RadiopharmaceuticalRadiationDoseSRStorage,
    sc.XRayRadiationDoseSRStorage,
    sc.SegmentationStorage,
    sc.SecondaryCaptureImageStorage,
    sc.MultiFrameSingleBitSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
    sc.EncapsulatedPDFStorage,
    sc.GrayscaleSoftcopyPresentationStateStorage,
})

ACCEPTED_SOP_CLASSES = PROCESSED_SOP_CLASSES | STORED_ONLY_SOP_CLASSES

# Uncompressed, deflated, and the common compressed syntaxes scanners and PACS send; decoding
# happens later (pylibjpeg + plugins), the received bytes are stored as they came.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)


def all_storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows: negotiated so that a class the node does not take
    gets a per-instance 0x0122 status instead of a silently rejected presentation context."""
    # pynetdicom exposes the storage classes one name at a time; its table is the complete list.
    return sorted(set(sc._STORAGE_CLASSES.values()))  # noqa: SLF001
