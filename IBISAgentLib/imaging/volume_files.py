"""What a volume file's header promises, checked before SimpleITK or Slicer reads its voxels.

Three things a header can do that reading would not notice: declare more voxels than the limits allow (a
small compressed file of zeros that becomes gigabytes), promise more bytes than the file holds (SimpleITK
fills a truncated NIfTI with zeros and says nothing), and name another file to read the voxels from (a
MetaImage ``ElementDataFile``, an NRRD ``data file``), which for an upload could be any file on the server.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .limits import DEFAULT_LIMITS, ImageLimits

_HEADER_LINES = 200  # a detached header's fields come first; its text is never read further than this


class VolumeFileError(ValueError):
    """A volume file whose header cannot be accepted; the message says why in one line (callers put the
    file's name, or path, before it)."""


def check_volume_file(path: Path, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """The header of one volume file: within ``limits``, and for NIfTI, as many voxel bytes as it declares."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeFileError(f"its header cannot be read ({last_line(exc)})") from None
    try:
        limits.check(reader.GetSize(), "the volume")
    except ValueError as exc:
        raise VolumeFileError(str(exc)) from None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_length(path)


@dataclass(frozen=True)
class Grid:
    """A volume file's voxel grid as SimpleITK reads it (LPS): what a labelmap must share with its image for
    tools such as pyradiomics or nnU-Net to accept the pair."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of_file(cls, path: Path) -> Grid:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return cls(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())

    def resample(self, labelmap: sitk.Image) -> sitk.Image:
        """``labelmap`` on this grid by nearest neighbour: exact when the grids differ by a permutation or flip of
        the axes (as Slicer's reordering of a volume's voxels does), every voxel centre landing on one."""
        return sitk.Resample(
            labelmap, self.size, sitk.Transform(), sitk.sitkNearestNeighbor, self.origin, self.spacing,
            self.direction, 0, labelmap.GetPixelID(),
        )  # fmt: skip


def data_file_named(path: Path) -> str | None:
    """The file a detached header names for its voxels (None when the voxels are in the same file)."""
    name = path.name.lower()
    if name.endswith((".mhd", ".mha")):
        key, separator, local = "elementdatafile", "=", "local"
    elif name.endswith((".nrrd", ".nhdr")):
        key, separator, local = None, ":", None
    else:
        return None
    with path.open("rb") as handle:
        for _, raw in zip(range(_HEADER_LINES), handle, strict=False):
            line = raw.decode("latin-1").strip()
            if key is None and not line:
                return None  # the blank line that ends an NRRD header: the voxels follow in the same file
            field, found, value = line.partition(separator)
            field = field.strip().lower()
            if not found:
                continue
            if (key is not None and field == key) or (key is None and field in ("data file", "datafile")):
                value = value.strip()
                return None if local is not None and value.lower() == local else value
    return None


def check_detached_data(header: Path, folder: Path) -> Path | None:
    """The data file a detached header names, if it is a plain file name of ``folder`` (an upload's own
    folder); a VolumeFileError for a path, a list or pattern of files, or a file that is not there."""
    named = data_file_named(header)
    if named is None:
        return None
    plain = Path(named).name == named and named not in ("", ".", "..") and "\\" not in named
    if not plain or " " in named.strip() or "%" in named:
        raise VolumeFileError(
            f"the header reads its voxels from {named!r}: only a data file uploaded with it, named without a "
            "folder, is accepted"
        )
    data = folder / named
    if not data.is_file():
        raise VolumeFileError(f"the header reads its voxels from {named!r}, which was not uploaded with it")
    return data


def _check_nifti_length(path: Path) -> None:
    with _open(path) as handle:
        header = handle.read(544)
        end = _nifti_data_end(header)
        if end is None:
            return  # not a header this check knows; SimpleITK read it, so leave the verdict to it
        try:
            held = len(header) + _count(handle, end - len(header))
        except (EOFError, OSError, zlib.error):
            held = -1
    if held < end:
        raise VolumeFileError(
            f"the file is truncated (its header declares {end:,} bytes of header and voxels"
            + ("; the compressed stream ends early)" if held < 0 else f", it holds {held:,})")
        )


def _open(path: Path):  # -> BinaryIO
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _count(handle, wanted: int) -> int:
    """Bytes read from ``handle``, up to ``wanted`` (1 MiB at a time, so nothing large is held)."""
    total = 0
    while total < wanted:
        chunk = handle.read(min(1 << 20, wanted - total))
        if not chunk:
            break
        total += len(chunk)
    return total


def _nifti_data_end(header: bytes) -> int | None:
    """Where the voxel bytes of a NIfTI-1 or NIfTI-2 header end (its vox_offset plus their size)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack_from(order + "i", header)[0] == 348:
            dims = struct.unpack_from(order + "8h", header, 40)
            bitpix = struct.unpack_from(order + "h", header, 72)[0]
            stated = struct.unpack_from(order + "f", header, 108)[0]
            offset = max(352, int(stated)) if math.isfinite(stated) else 352
            break
        if len(header) >= 540 and struct.unpack_from(order + "i", header)[0] == 540:
            bitpix = struct.unpack_from(order + "h", header, 14)[0]
            dims = struct.unpack_from(order + "8q", header, 16)
            offset = max(544, struct.unpack_from(order + "q", header, 168)[0])
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7 or any(d < 1 for d in dims[1 : rank + 1]) or bitpix < 1:
        return None
    return offset + math.prod(dims[1 : rank + 1]) * bitpix // 8


def last_line(exc: Exception) -> str:
    """The line of a SimpleITK/ITK error that says what went wrong (ITK puts it last)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__


def volume_files_in(folder: Path, limits: ImageLimits = DEFAULT_LIMITS) -> list[Path]:
    """The files to open as the one volume that a folder of uploaded files holds: a volume file (with the data
    file its header names, which must be among them), or the files of one DICOM series. Everything is checked
    from headers first (limits, truncation, data files); a VolumeFileError says what is wrong."""
    from .volumes import VOLUME_SUFFIXES, VolumeInputError, dicom_series_files

    files = sorted(p for p in folder.iterdir() if p.is_file())
    headers = [p for p in files if p.name.lower().endswith((*VOLUME_SUFFIXES, ".nhdr"))]
    data_files = {check_detached_data(p, folder) for p in headers} - {None}
    volumes = [p for p in headers if p not in data_files]
    if len(volumes) > 1:
        raise VolumeFileError(f"holds {len(volumes)} volumes ({', '.join(p.name for p in volumes[:4])}): open one")
    if volumes:
        check_volume_file(volumes[0], limits)
        return volumes
    try:
        return [Path(f) for f in dicom_series_files(folder, limits)]
    except VolumeInputError as exc:
        reason = str(exc).removeprefix(f"{folder}: ")
        if reason == "no DICOM series in this folder":
            reason = "no volume file and no DICOM series among the files"
        raise VolumeFileError(reason) from None
