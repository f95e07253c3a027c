"""Reading and writing 3D volumes and labelmaps with SimpleITK, keeping their geometry exactly.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, Slicer's .seg.nrrd labelmaps), MetaImage (.mha, .mhd)
and DICOM series folders. A volume must be one 3D scalar, non-complex image; anything else gets a
one-line reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .limits import DEFAULT_LIMITS, ImageLimits
from .volume_files import VolumeFileError, check_volume_file, last_line

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


class VolumeInputError(ValueError):
    """A volume or labelmap that cannot be used; the message says why in one line."""


def is_volume_path(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES)


def read_volume(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> sitk.Image:
    """A 3D scalar image (a 2D file becomes a one-slice volume) with its spacing, origin and direction;
    refused before its voxels are read when its header goes over ``limits`` or promises more than it holds."""
    path = Path(path)
    if path.is_dir():
        image = _read_dicom_series(path, limits)
    elif not path.is_file():
        raise VolumeInputError(f"{path}: no such volume file or DICOM folder")
    else:
        try:
            check_volume_file(path, limits)
            image = sitk.ReadImage(str(path))
        except VolumeFileError as exc:
            raise VolumeInputError(f"{path}: cannot read as a volume: {exc}") from None
        except RuntimeError as exc:
            raise VolumeInputError(f"{path}: cannot read as a volume ({last_line(exc)})") from exc
    return _checked(image, path)


def read_labelmap(path: str | Path, reference: sitk.Image, label: int | None = None) -> np.ndarray:
    """A labelmap on exactly the reference grid, as a (z, y, x) bool array: voxels equal to ``label``, or
    any non-zero voxel when no label is given."""
    labels = read_volume(path)
    if labels.GetSize() != reference.GetSize():
        raise VolumeInputError(
            f"{path}: labelmap size {labels.GetSize()} differs from the volume's {reference.GetSize()}"
        )
    for name, ours, theirs in (
        ("spacing", labels.GetSpacing(), reference.GetSpacing()),
        ("origin", labels.GetOrigin(), reference.GetOrigin()),
        ("direction", labels.GetDirection(), reference.GetDirection()),
    ):
        if not np.allclose(ours, theirs, atol=1e-4):
            raise VolumeInputError(f"{path}: labelmap {name} {ours} differs from the volume's {theirs}")
    values = sitk.GetArrayViewFromImage(labels)
    return values != 0 if label is None else values == label


def write_labelmap(path: str | Path, mask: np.ndarray, reference: sitk.Image) -> None:
    """Write a (z, y, x) mask as a uint8 labelmap (0 / 1) on exactly the reference grid."""
    path = Path(path)
    if not path.name.lower().endswith(VOLUME_SUFFIXES):
        raise VolumeInputError(f"{path}: write the mask as .nii.gz, .nii, .nrrd, .seg.nrrd, .mha or .mhd")
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def volume_array(image: sitk.Image) -> np.ndarray:
    """The voxels as a (z, y, x) = (k, j, i) array (a view where SimpleITK allows)."""
    return sitk.GetArrayViewFromImage(image)


def dicom_series_files(folder: Path, limits: ImageLimits = DEFAULT_LIMITS) -> list[str]:
    """The files of the one DICOM series in ``folder``, within ``limits``; VolumeInputError for none, for
    several (which one was meant cannot be guessed), or for too many voxels."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeInputError(f"{folder}: no DICOM series in this folder")
    if len(series) > 1:
        raise VolumeInputError(f"{folder}: holds {len(series)} DICOM series; point to a folder with one series")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
        columns, rows = first.GetSize()[:2]
        limits.check((columns, rows, len(files)), "the DICOM series")
    except (RuntimeError, ValueError) as exc:
        raise VolumeInputError(f"{folder}: {last_line(exc)}") from None
    return files


def _read_dicom_series(folder: Path, limits: ImageLimits) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder, limits))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise VolumeInputError(f"{folder}: cannot read the DICOM series ({last_line(exc)})") from exc


def _checked(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetPixelID() in _COMPLEX:
        raise VolumeInputError(f"{path}: complex-valued images are not supported")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeInputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; give a scalar volume "
            "(for a multi-layer .seg.nrrd, export one segment as a labelmap)"
        )
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise VolumeInputError(f"{path}: is {image.GetDimension()}D; give one 3D volume")
    if 0 in image.GetSize():
        raise VolumeInputError(f"{path}: the volume is empty (size {image.GetSize()})")
    return image
