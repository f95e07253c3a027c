"""Save: the segmentation (.seg.nrrd), the target segment as a NIfTI labelmap on the opened file's own grid
(Slicer may reorder a volume's voxels: a flipped axis comes back unflipped), the trace (JSON) and the whole
scene (.mrb) into the output folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from IBISAgentLib.imaging.volume_files import Grid
from IBISAgentMRML import save_mrb, segment_array
from IBISAgentMRML.volumes import image_from_volume


def stem_of(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem[:60] or "segment"


def save_outputs(
    out_dir: Path,
    scene: Any,
    volume: Any,
    segmentation: Any,
    segment_id: str,
    trace_json: str | None,
    grid: Grid | None = None,
) -> tuple[list[Path], int]:
    """Write the four files; return their paths and the segment's voxel count. The NIfTI labelmap is on ``grid``
    (the opened file's; None: the volume's grid in the scene, as for a DICOM series)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem_of(segmentation.GetSegmentation().GetSegment(segment_id).GetName())
    written: list[Path] = []

    seg_path = out_dir / f"{stem}.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(seg_path))
    if not storage.WriteData(segmentation):
        raise RuntimeError(f"Could not write {seg_path}.")
    written.append(seg_path)

    mask = segment_array(segmentation, segment_id, volume)
    labelmap = sitk.GetImageFromArray(mask.astype(np.uint8))
    labelmap.CopyInformation(image_from_volume(volume))  # the volume's grid in world LPS, as NIfTI wants
    if grid is not None:
        labelmap = grid.resample(labelmap)
    nii_path = out_dir / f"{stem}.nii.gz"
    sitk.WriteImage(labelmap, str(nii_path))
    written.append(nii_path)

    if trace_json is not None:
        trace_path = out_dir / f"{stem}_trace.json"
        trace_path.write_text(trace_json, encoding="utf-8")
        written.append(trace_path)

    mrb_path = out_dir / f"{stem}_scene.mrb"
    save_mrb(scene, mrb_path)
    written.append(mrb_path)
    return written, int(mask.sum())
