"""Real medical volumes that ship inside registry packages, and small phantoms built from them.

- nilearn's MNI ICBM152 2009 template: a real T1 MR brain (197 x 233 x 189, 1 mm) with grey- and
  white-matter probability maps on the same grid (installed with --no-deps by scripts/install.sh).
- pydicom's CT_small.dcm: one real axial CT slice (128 x 128) as a DICOM file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test data package {name} is not installed: run scripts/install.sh")
    return Path(spec.submodule_search_locations[0])


def mni_path(kind: str = "t1") -> Path:
    return _package_dir("nilearn") / "datasets" / "data" / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"


def ct_small_path() -> Path:
    return _package_dir("pydicom") / "data" / "test_files" / "CT_small.dcm"


def mni_crop(size: tuple[int, int, int] = (48, 56, 10), start: tuple[int, int, int] = (74, 90, 85)) -> sitk.Image:
    """A small block of the real T1 (its geometry follows the crop, as SimpleITK computes it)."""
    return sitk.RegionOfInterest(sitk.ReadImage(str(mni_path("t1"))), size, start)


def write_dicom_series(image: sitk.Image, folder: Path, tags: dict[str, str] | None = None) -> list[Path]:
    """Write a 3D image as a CT DICOM series, one file per k slice, with its true geometry (and ``tags``, DICOM
    "gggg|eeee" keys, on every file); the files in k order."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1." + str(abs(hash(folder)) % 10**12)
    files = []
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_tags = {
            "0008|0060": "CT",
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".0",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3])),
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}",
        } | (tags or {})
        for tag, value in slice_tags.items():
            plane.SetMetaData(tag, value)
        files.append(folder / f"slice_{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(plane)
    return files


def ct_phantom(shape: tuple[int, int, int] = (6, 40, 48)) -> np.ndarray:
    """Hounsfield units: air around a soft-tissue body with a bone core (k, j, i)."""
    volume = np.full(shape, -1000, dtype=np.int16)
    j, i = np.ogrid[: shape[1], : shape[2]]
    body = ((j - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((i - shape[2] / 2) / (shape[2] * 0.4)) ** 2 <= 1
    bone = ((j - shape[1] / 2) / (shape[1] * 0.1)) ** 2 + ((i - shape[2] / 2) / (shape[2] * 0.1)) ** 2 <= 1
    volume[np.broadcast_to(body, shape)] = 40
    volume[np.broadcast_to(bone, shape)] = 900
    return volume


def mni_tissue_dataset(folder: Path) -> Path:
    """A manifest over the real MNI T1 with grey/white-matter labelmaps (the template's own tissue
    probability maps above 0.5), three slices in two orientations."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.ReadImage(str(mni_path("t1"))), str(folder / "t1.nii.gz"))
    for kind in ("wm", "gm"):
        probability = sitk.ReadImage(str(mni_path(kind)))
        sitk.WriteImage(sitk.BinaryThreshold(probability, 129, 255, 1, 0), str(folder / f"{kind}.nii.gz"))
    base = {"image": "t1.nii.gz", "modality": "MR"}
    rows = [
        base | {"id": "wm-axial", "mask": "wm.nii.gz", "target": "cerebral white matter", "slice": "axial:100"},
        base | {"id": "gm-axial", "mask": "gm.nii.gz", "target": "cortical grey matter", "slice": "axial:100"},
        base
        | {"id": "wm-coronal", "mask": "wm.nii.gz", "instruction": "Segment the white matter.", "slice": "coronal:120"},
    ]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


class LeakyPropagator:
    """A test double for drift: the real weight-free propagator, plus a neighbouring organ (``neighbour``, a
    (k, j, i) mask) on every slice from ``start`` on, up to the first key slice at or past ``start`` (a key
    slice there re-anchors the propagation and stops the leak)."""

    def __init__(self, neighbour: np.ndarray, start: int) -> None:
        from IBISAgentLib.tools.classical import ClassicalPropagator

        self.inner, self.neighbour, self.start = ClassicalPropagator(), neighbour, start

    def propagate(self, volume, key, key_mask, options, *, extra_keys=None, **kwargs):
        result = self.inner.propagate(volume, key, key_mask, options, extra_keys=extra_keys, **kwargs)
        stop = min([k for k in (extra_keys or {}) if k >= self.start], default=volume.shape[0])
        for index in range(self.start, stop):
            result.mask[index] |= self.neighbour[index]
            result.slices[index].area = int(result.mask[index].sum())
        return result
