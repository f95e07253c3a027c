"""A result as a DICOM Segmentation (highdicom): every source instance referenced, the segment coded from the
instruction, IBISAgent named as the algorithm with its models, and the trace attached.

The trace travels inside the SEG as one private element (creator ``IBISAgent``, element (0071,xx01), UT: JSON),
so the audit trail cannot be separated from the result it explains; ContentDescription says where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..agent.trace import Trace
from .terms import lo_text, term_for

TRACE_GROUP, TRACE_CREATOR, TRACE_ELEMENT = 0x0071, "IBISAgent", 0x01
SEG_SERIES_OFFSET = 1000  # the SEG's series number: its source's plus this (1000 when the source has none)


def source_headers(files: Sequence[Path]) -> list[Any]:
    """The headers of a series' files (no pixels), in the order given: the order SimpleITK stacked them."""
    import pydicom

    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]


def check_seg_sources(sources: Sequence[Any], depth: int) -> None:
    """ValueError saying why a SEG cannot reference this series slice by slice: one image per slice of the
    volume (not one multi-frame instance), each at its own position, all in one frame of reference."""
    if len(sources) != depth:
        raise ValueError(
            f"the volume has {depth} slices in {len(sources)} DICOM instance(s); a DICOM SEG is written here for "
            "series of one image per slice: write the mask as .nii.gz instead"
        )
    positions = [tuple(round(float(v), 4) for v in getattr(s, "ImagePositionPatient", ()) or ()) for s in sources]
    if len(set(positions)) != len(positions):
        raise ValueError("several images share a position (echoes or phases in one series): write .nii.gz instead")
    if len({str(getattr(s, "FrameOfReferenceUID", "")) for s in sources} - {""}) != 1:
        raise ValueError("the images do not share one frame of reference (FrameOfReferenceUID)")


def dicom_seg(
    sources: Sequence[Any], mask: np.ndarray, target: str, trace: Trace | None, hand_edited: bool = False
) -> Any:
    """A DICOM SEG (a pydicom Dataset) of the (k, j, i) ``mask`` over ``sources`` (slice k is ``sources[k]``), its
    segment labelled and coded from ``target`` (the instruction, or a segment's name). With no ``trace`` (a
    segment drawn by hand) the segment is MANUAL and no algorithm is named; the agent's result is AUTOMATIC, or
    SEMIAUTOMATIC once a clinician clicked (the trace's user steps) or edited it by hand (``hand_edited``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if mask.shape != (len(sources), rows, columns):
        raise ValueError(f"the mask {mask.shape} does not match the {len(sources)} source images of {rows}x{columns}")
    term = term_for(target)
    kinds = hd.seg.SegmentAlgorithmTypeValues
    kind, algorithm = kinds.MANUAL, None
    if trace is not None:
        corrected = hand_edited or any(step.source == "user" for step in trace.steps)
        kind = kinds.SEMIAUTOMATIC if corrected else kinds.AUTOMATIC
        algorithm = hd.AlgorithmIdentificationSequence(
            name="IBISAgent",
            family=codes.cid7162.ArtificialIntelligence,
            version=__version__,
            parameters={name: lo_text(str(model)) for name, model in sorted(trace.models.items())} or None,
        )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=term.label,
        segmented_property_category=term.category,
        segmented_property_type=term.type,
        algorithm_type=kind,
        algorithm_identification=algorithm,
    )
    number = str(getattr(sources[0], "SeriesNumber", "") or "")
    seg = hd.seg.Segmentation(
        source_images=[_with_thickness(s) for s in sources],
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=(int(number) if number.isdigit() else 0) + SEG_SERIES_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="IBISAgent",
        manufacturer_model_name="IBISAgent",
        software_versions=__version__,
        device_serial_number="0",
        series_description=lo_text(f"IBISAgent: {term.label}"),
        content_label="IBISAGENT",
        content_description=lo_text(
            f"IBISAgent; trace in private tag ({TRACE_GROUP:04X},xx{TRACE_ELEMENT:02X})" if trace else "IBISAgent"
        ),
    )
    seg.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the label and the trace may hold any character
    if trace is not None:
        block = seg.private_block(TRACE_GROUP, TRACE_CREATOR, create=True)
        block.add_new(TRACE_ELEMENT, "UT", trace.to_json())
    return seg


def attached_trace(seg: Any) -> Trace | None:
    """The trace a SEG written here carries (None for a SEG from elsewhere)."""
    import json

    try:
        block = seg.private_block(TRACE_GROUP, TRACE_CREATOR)
        return Trace.from_dict(json.loads(block[TRACE_ELEMENT].value))
    except KeyError:
        return None


def write_seg(path: Path, seg: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)


def _with_thickness(source: Any) -> Any:
    """highdicom needs SliceThickness, which some series leave out: a copy with it from the spacing between
    slices where given, else 0 (unknown)."""
    if "SliceThickness" in source and source.SliceThickness not in (None, ""):
        return source
    copy = source.copy()
    copy.SliceThickness = getattr(source, "SpacingBetweenSlices", None) or 0
    return copy
