"""Dataset manifests: one JSON object a line naming an image, its ground-truth mask, and what to segment.

Fields: ``image`` and ``mask`` (paths, relative to the manifest; a 2D image with a mask PNG, or a volume
with a labelmap on its grid), ``instruction`` or ``target`` (a target name the instruction is built
from), ``modality`` (e.g. CT, MR), optional ``slice`` (``AXIS:INDEX`` for volumes), ``label`` (the label
value of the target in a multi-label mask; default any non-zero) and ``id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..imaging.images import ImageInputError, read_mask, read_rgb_image
from ..imaging.volume_case import VolumeCase
from ..imaging.volumes import VolumeInputError, is_volume_path, read_labelmap


class ManifestError(ValueError):
    pass


@dataclass
class Sample:
    id: str
    image: np.ndarray  # (H, W, 3) uint8, as the agent sees it (a windowed slice for volumes)
    ground_truth: np.ndarray  # (H, W) bool
    target: str
    instruction: str | None
    modality: str
    case: VolumeCase | None = None  # for a volume: the volume, windowed, and its key slice
    volume_truth: np.ndarray | None = None  # for a volume: (k, j, i) bool on its grid

    @property
    def task(self) -> str:
        """What the agent is asked: the instruction, or one made from the target's name."""
        return self.instruction or f"Segment the {self.target}."


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from exc
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or "image" not in record or "mask" not in record:
            raise ManifestError(f"{path}:{number}: needs at least 'image' and 'mask'")
        if not (record.get("instruction") or record.get("target")):
            raise ManifestError(f"{path}:{number}: needs an 'instruction' or a 'target'")
        record.setdefault("id", f"{number:06d}")
        record["_base"] = str(path.parent)
        records.append(record)
    if not records:
        raise ManifestError(f"{path}: the manifest is empty")
    return records


def load_sample(record: dict, keep_volume: bool = False) -> Sample:
    """The sample of one manifest record; ``keep_volume`` keeps a volume's case and 3D label on it (for
    volume-level evaluation; otherwise only the key slice is kept, since synthesis holds every sample)."""
    base = Path(record["_base"])
    image_path, mask_path = base / record["image"], base / record["mask"]
    label = record.get("label")
    case = labels = None
    try:
        if is_volume_path(image_path):
            case = VolumeCase.load(image_path, record.get("slice"), record.get("window"))
            labels = read_labelmap(mask_path, case.image, label)
            image, truth = case.slice_rgb(), np.ascontiguousarray(case.geometry.extract(labels))
        else:
            image = read_rgb_image(image_path)
            truth = read_mask(mask_path, image.shape[:2], label)
    except (ImageInputError, VolumeInputError, ValueError) as exc:
        raise ManifestError(f"sample {record['id']}: {exc}") from exc
    return Sample(
        id=str(record["id"]),
        image=image,
        ground_truth=truth,
        target=record.get("target") or record["instruction"],
        instruction=record.get("instruction"),
        modality=str(record.get("modality", "unknown")),
        case=case if keep_volume else None,
        volume_truth=labels if keep_volume else None,
    )
