"""Rigid CT-to-CT registration between two scans of one patient (SimpleITK).

Euler 3-D transform, Mattes mutual information (robust to different CT protocols between visits),
two resolution levels on the PET-grid CT, initialised by aligning the centres of mass. CT numbers
are clipped to -1000..1500 HU so metal or contrast does not dominate, and only the body is kept.
The result maps scan-1 points into scan 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from node.quant.landmarks import find_landmarks
from node.quant.volume import Volume


@dataclass(frozen=True)
class RigidRegistration:
    transform: sitk.Transform  # fixed (scan 2) point -> moving (scan 1) point, as ITK defines it
    metric: float
    iterations: int

    def scan1_to_scan2(self, points_mm: np.ndarray) -> np.ndarray:
        inverse = self.transform.GetInverse()
        return np.array([inverse.TransformPoint(tuple(float(v) for v in p)) for p in np.atleast_2d(points_mm)])


def _image(vol: Volume) -> sitk.Image:
    """CT clipped to -1000..1500 HU with everything outside the body (the table, which stays put in
    scanner space while the patient moves) set to air."""
    body = find_landmarks(vol).body
    image = sitk.GetImageFromArray(np.where(body, np.clip(vol.array, -1000, 1500), -1000).astype(np.float32))
    image.SetOrigin(vol.origin)
    image.SetSpacing(vol.spacing)
    image.SetDirection(vol.direction)
    return image


def _pet_image(vol: Volume) -> sitk.Image:
    """SUV on a log-like scale (clipped at 10) so the body outline and the many moderate structures,
    not a few hot foci (which change between scans), drive the metric."""
    image = sitk.GetImageFromArray(np.log1p(np.clip(vol.array, 0, 10)).astype(np.float32))
    image.SetOrigin(vol.origin)
    image.SetSpacing(vol.spacing)
    image.SetDirection(vol.direction)
    return image


def coarse(vol: Volume, spacing_mm: float = 4.0) -> Volume:
    """`vol` resampled to `spacing_mm` voxels over its own extent (for registration)."""
    from node.quant.volume import resample_like

    extent = np.array(vol.array.shape[::-1]) * np.array(vol.spacing)
    shape = tuple(int(max(2, round(e / spacing_mm))) for e in extent[::-1])
    grid = Volume(np.empty(shape, np.uint8), vol.origin, (spacing_mm,) * 3, vol.direction)
    return resample_like(vol, grid, 0.0)


def _method(seed: int, learning_rate: float, iterations: int) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=1e-3,
                                                 numberOfIterations=iterations, relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])  # the input is already on the ~4 mm PET grid
    reg.SetSmoothingSigmasPerLevel([4.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def register_rigid(scan2_ct: Volume, scan1_ct: Volume, seed: int = 124, modality: str = "CT",
                   affine: bool = False) -> RigidRegistration:
    """Scan 1 onto scan 2 by their CTs, or (modality "PT", a scan without CT) by their SUV volumes;
    with `affine`, a 12-parameter stage follows the rigid one (posture, breathing, weight change)."""
    to_image = _image if modality == "CT" else _pet_image
    fixed, moving = to_image(scan2_ct), to_image(scan1_ct)
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = _method(seed, 2.0, 150)
    reg.SetInitialTransform(initial, inPlace=False)
    transform = reg.Execute(fixed, moving)
    if affine:
        rigid = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0)) \
            if transform.GetName() == "CompositeTransform" else sitk.Euler3DTransform(transform)
        start = sitk.AffineTransform(3)
        start.SetCenter(rigid.GetCenter())
        start.SetMatrix(rigid.GetMatrix())
        start.SetTranslation(rigid.GetTranslation())
        reg = _method(seed, 1.0, 100)
        reg.SetInitialTransform(start, inPlace=False)
        transform = reg.Execute(fixed, moving)
    return RigidRegistration(transform, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()))
