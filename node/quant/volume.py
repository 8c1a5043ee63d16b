"""Assemble image series into 3-D volumes with explicit geometry (origin, spacing, direction).

Nothing is assumed: slices are sorted along the normal of their common orientation, spacing must
be uniform, the matrix the same, no slice missing or duplicated (PS3.3 C.7.6.2). Rescale slope and
intercept are applied slice by slice (PET slopes differ per slice). Multi-frame (Enhanced PET/CT)
images are read from their functional groups (PS3.3 C.7.6.16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

SPACING_TOLERANCE = 0.02  # relative: 2 % of the slice spacing
ORIENTATION_TOLERANCE = 1e-4


class VolumeError(ValueError):
    """A series that cannot be made into a volume; the message names the series and the problem."""


@dataclass(frozen=True)
class Volume:
    """array[k, j, i]: slice k, row j, column i. Geometry as ITK: origin = centre of voxel
    (0, 0, 0) in patient LPS mm, spacing = (column, row, slice) mm, direction = 3x3 with columns
    the row direction, column direction and slice normal."""

    array: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, float).reshape(3, 3)

    def index_to_lps(self, kji: np.ndarray) -> np.ndarray:
        """Patient coordinates of (k, j, i) indices (N x 3 or 3)."""
        kji = np.asarray(kji, float)
        ijk = kji[..., ::-1]
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Continuous (k, j, i) index of patient points."""
        rel = np.asarray(lps, float) - np.asarray(self.origin)
        ijk = (rel @ self.direction_matrix) / np.asarray(self.spacing)
        return ijk[..., ::-1]

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray) -> Volume:
        return Volume(array, self.origin, self.spacing, self.direction)


def _floats(value: object, n: int, what: str, label: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.size != n:
        raise VolumeError(f"{label}: {what} must have {n} numbers, got {value!r}")
    return arr


@dataclass(frozen=True)
class _Plane:
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    slope: float
    intercept: float
    source: int  # index of the dataset
    frame: int | None  # frame number within a multi-frame dataset


def _planes_single(ds: Dataset, idx: int, label: str) -> list[_Plane]:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise VolumeError(f"{label}: image {ds.get('SOPInstanceUID', idx)} has no {keyword}")
    return [_Plane(_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", label),
                   _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", label),
                   _floats(ds.PixelSpacing, 2, "PixelSpacing", label),
                   float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0), idx, None)]


def _planes_multiframe(ds: Dataset, idx: int, label: str) -> list[_Plane]:
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(frames) != int(ds.NumberOfFrames):
        raise VolumeError(f"{label}: NumberOfFrames {ds.NumberOfFrames} but {len(frames)} per-frame groups")

    def group(frame: Dataset, keyword: str) -> Dataset | None:
        for source in (frame, shared):
            seq = source.get(keyword)
            if seq:
                return seq[0]
        return None

    planes = []
    for n, frame in enumerate(frames):
        pos, ori, meas = (group(frame, "PlanePositionSequence"), group(frame, "PlaneOrientationSequence"),
                          group(frame, "PixelMeasuresSequence"))
        if pos is None or ori is None or meas is None:
            raise VolumeError(f"{label}: frame {n + 1} lacks plane position, orientation or pixel measures")
        rescale = group(frame, "PixelValueTransformationSequence")
        slope = float(rescale.get("RescaleSlope", 1)) if rescale is not None else float(ds.get("RescaleSlope", 1))
        intercept = (float(rescale.get("RescaleIntercept", 0)) if rescale is not None
                     else float(ds.get("RescaleIntercept", 0)))
        planes.append(_Plane(_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", label),
                             _floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", label),
                             _floats(meas.PixelSpacing, 2, "PixelSpacing", label), slope, intercept, idx, n))
    return planes


def sort_planes(datasets: Sequence[Dataset], label: str) -> tuple[list[_Plane], Volume]:
    """Planes in order along the normal, and the geometry (array left empty)."""
    if not datasets:
        raise VolumeError(f"{label}: no images")
    planes: list[_Plane] = []
    for idx, ds in enumerate(datasets):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            planes += _planes_multiframe(ds, idx, label)
        else:
            planes += _planes_single(ds, idx, label)
    if len(planes) < 2:
        raise VolumeError(f"{label}: a single image is not a volume")
    ori = planes[0].orientation
    if any(np.max(np.abs(p.orientation - ori)) > ORIENTATION_TOLERANCE for p in planes):
        raise VolumeError(f"{label}: images have different ImageOrientationPatient (a localiser or a mixed series?)")
    row, col = ori[:3], ori[3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1) > 1e-3:
        raise VolumeError(f"{label}: ImageOrientationPatient {list(ori)} is not two orthonormal vectors")
    rows = {int(datasets[p.source].Rows) for p in planes}
    cols = {int(datasets[p.source].Columns) for p in planes}
    if len(rows) > 1 or len(cols) > 1:
        raise VolumeError(f"{label}: images differ in matrix size (Rows {sorted(rows)}, Columns {sorted(cols)})")
    ps = planes[0].pixel_spacing
    if any(np.max(np.abs(p.pixel_spacing - ps)) > 1e-4 * max(ps) for p in planes):
        raise VolumeError(f"{label}: images differ in PixelSpacing")
    planes.sort(key=lambda p: float(p.position @ normal))
    d = np.array([float(p.position @ normal) for p in planes])
    gaps = np.diff(d)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        a, b = planes[dup[0]], planes[dup[0] + 1]
        raise VolumeError(f"{label}: two images at the same position {d[dup[0]]:.2f} mm along the normal "
                          f"({datasets[a.source].get('SOPInstanceUID', a.source)} and "
                          f"{datasets[b.source].get('SOPInstanceUID', b.source)}): duplicate slice")
    spacing = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - spacing) > SPACING_TOLERANCE * spacing)
    if bad.size:
        k = bad[0]
        what = "missing slice(s)" if gaps[k] > spacing else "irregular spacing"
        raise VolumeError(f"{label}: gap of {gaps[k]:.3f} mm between positions {d[k]:.2f} and {d[k + 1]:.2f} mm "
                          f"where the series spacing is {spacing:.3f} mm: {what}")
    # In-plane deviation from the normal line (a shear or a mixed-stack series).
    off = [p.position - planes[0].position - (float((p.position - planes[0].position) @ normal)) * normal
           for p in planes]
    if max(np.linalg.norm(o) for o in off) > 0.5 * float(min(ps)):
        raise VolumeError(f"{label}: slice origins do not lie on a line along the normal (sheared or tilted stack)")
    direction = np.column_stack([row, col, normal])
    geometry = Volume(np.empty(0, np.float32), tuple(float(v) for v in planes[0].position),
                      (float(ps[1]), float(ps[0]), spacing), tuple(float(v) for v in direction.ravel()))
    return planes, geometry


PixelSource = Callable[[Dataset], np.ndarray]


def dataset_pixels(ds: Dataset) -> np.ndarray:
    """The pixels a dataset holds in memory (the default pixel source)."""
    if "PixelData" not in ds:
        raise VolumeError("no pixel data in the dataset (read without pixels: the caller must give a pixel source)")
    return ds.pixel_array


def assemble(datasets: Sequence[Dataset], label: str, dtype: type = np.float32,
             pixels: PixelSource = dataset_pixels) -> tuple[Volume, list[int]]:
    """A volume of rescaled values (PET: Bq/ml or the unit of Units; CT: HU); also the dataset
    index of each slice, in volume order, for per-slice factors such as SUV. `pixels` gives one
    dataset's pixel array: the datasets' own by default; the assemble stage (node.assemble) passes
    one that reads headers-only datasets' pixels from their files one at a time, so a whole-body CT
    never sits in memory twice and this module does no I/O."""
    planes, geometry = sort_planes(datasets, label)
    first = datasets[planes[0].source]
    out = np.empty((len(planes), int(first.Rows), int(first.Columns)), dtype)
    cache: dict[int, np.ndarray] = {}
    for k, plane in enumerate(planes):
        ds = datasets[plane.source]
        try:
            if plane.frame is None:
                values = pixels(ds)
            else:
                if plane.source not in cache:
                    cache.clear()
                    cache[plane.source] = pixels(ds)
                values = cache[plane.source][plane.frame]
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
            syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", "?")
            raise VolumeError(f"{label}: cannot decode pixel data of {ds.get('SOPInstanceUID', plane.source)} "
                              f"(transfer syntax {syntax}): {exc}") from None
        out[k] = values * plane.slope + plane.intercept
    return geometry.with_array(out), [p.source for p in planes]


def resample_like(moving: Volume, reference: Volume, default: float) -> Volume:
    """`moving` on the grid of `reference` (linear interpolation, float32), e.g. CT on the PET grid.
    CT stays int16 until resampled."""
    image = sitk.GetImageFromArray(moving.array)  # a copy in the array's own type (int16 for CT)
    image.SetOrigin(moving.origin)
    image.SetSpacing(moving.spacing)
    image.SetDirection(moving.direction)
    grid = sitk.Image([int(n) for n in reference.array.shape[::-1]], sitk.sitkUInt8)
    grid.SetOrigin(reference.origin)
    grid.SetSpacing(reference.spacing)
    grid.SetDirection(reference.direction)
    resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)
    return reference.with_array(sitk.GetArrayFromImage(resampled))
