"""The coded meaning of a target named in an instruction: a DICOM segmented property category and type
(SNOMED CT, CID 7150 categories), so OHIF, Slicer and the PACS show "Liver", not just a free-text label.

A small table of common targets; anything else is coded as generic Tissue and keeps its free-text label.
Abnormal structures come first, so "the liver tumor" is coded as a tumor (the label keeps "liver").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_ABNORMAL, _ANATOMY, _TISSUE = "MorphologicallyAbnormalStructure", "AnatomicalStructure", "Tissue"
# (category, type as pydicom's codes.SCT name, the words that name it in an instruction)
_TABLE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (_ABNORMAL, "Nodule", ("nodule", "nodules")),
    (_ABNORMAL, "Metastasis", ("metastasis", "metastases", "metastatic lesion")),
    (_ABNORMAL, "Tumor", ("tumor", "tumors", "tumour", "tumours", "neoplasm", "cancer", "carcinoma")),
    (_ABNORMAL, "Mass", ("mass",)),
    (_ABNORMAL, "Cyst", ("cyst", "cysts")),
    (_ABNORMAL, "Lesion", ("lesion", "lesions")),
    (_ABNORMAL, "Hemorrhage", ("hemorrhage", "haemorrhage", "bleed")),
    (_ABNORMAL, "Edema", ("edema", "oedema")),
    (_ANATOMY, "Liver", ("liver",)),
    (_ANATOMY, "Spleen", ("spleen",)),
    (_ANATOMY, "Kidney", ("kidney", "kidneys")),
    (_ANATOMY, "Lung", ("lung", "lungs")),
    (_ANATOMY, "Pancreas", ("pancreas",)),
    (_ANATOMY, "Gallbladder", ("gallbladder", "gall bladder")),
    (_ANATOMY, "Stomach", ("stomach",)),
    (_ANATOMY, "AdrenalGland", ("adrenal gland", "adrenal")),
    (_ANATOMY, "Aorta", ("aorta",)),
    (_ANATOMY, "Heart", ("heart",)),
    (_ANATOMY, "Esophagus", ("esophagus", "oesophagus")),
    (_ANATOMY, "Trachea", ("trachea",)),
    (_ANATOMY, "Bladder", ("bladder",)),
    (_ANATOMY, "Prostate", ("prostate",)),
    (_ANATOMY, "Colon", ("colon",)),
    (_ANATOMY, "Rectum", ("rectum",)),
    (_ANATOMY, "Duodenum", ("duodenum",)),
    (_ANATOMY, "Thyroid", ("thyroid",)),
    (_ANATOMY, "Vertebra", ("vertebra", "vertebrae")),
    (_ANATOMY, "Brain", ("brain",)),
    (_ANATOMY, "BrainStem", ("brain stem", "brainstem")),
    (_ANATOMY, "Cerebellum", ("cerebellum",)),
    (_ANATOMY, "Hippocampus", ("hippocampus",)),
    (_ANATOMY, "WhiteMatter", ("white matter",)),
    (_ANATOMY, "GrayMatter", ("gray matter", "grey matter")),
    (_TISSUE, "Bone", ("bone", "bones")),
    (_TISSUE, "Muscle", ("muscle",)),
    (_TISSUE, "Fat", ("fat",)),
)
_VERBS = re.compile(
    r"^(?:please\s+)?(?:segment|delineate|outline|contour|mark|find|show|label)\s+(?:the\s+|a\s+|an\s+)?", re.IGNORECASE
)
_LABEL_LIMIT = 64  # a DICOM LO value
# 3D Slicer keeps a segment's coded meaning in its "TerminologyEntry" tag: context~category~type~type modifier~
# anatomic context~anatomic region~region modifier, each code as SCHEME^VALUE^MEANING. Its DICOM SEG export writes
# the category and type from it.
_SLICER_CONTEXT = "Segmentation category and type - DICOM master list"
_SLICER_ANATOMY = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Term:
    """A segment's label (free text) and its coded category and type (pydicom Codes)."""

    label: str
    category: Any
    type: Any


def term_for(instruction: str) -> Term:
    """The label and coded meaning of the target ``instruction`` names (generic Tissue when the table lacks it)."""
    from pydicom.sr.codedict import codes

    text = " ".join(instruction.lower().split())
    category, kind = _TISSUE, _TISSUE
    for table_category, table_type, words in _TABLE:
        if any(re.search(rf"\b{re.escape(word)}\b", text) for word in words):
            category, kind = table_category, table_type
            break
    return Term(segment_label(instruction), getattr(codes.SCT, category), getattr(codes.SCT, kind))


def slicer_terminology(instruction: str) -> str:
    """The target ``instruction`` names as 3D Slicer's terminology tag value (the codes of ``term_for``)."""
    term = term_for(instruction)

    def coded(code: Any) -> str:
        return f"{code.scheme_designator}^{code.value}^{code.meaning}"

    return f"{_SLICER_CONTEXT}~{coded(term.category)}~{coded(term.type)}~^^~{_SLICER_ANATOMY}~^^~^^"


def segment_label(instruction: str) -> str:
    """The target as a segment label: the instruction without its leading verb, as one DICOM LO value."""
    text = _one_line(instruction)
    verb = _VERBS.match(text)
    label = text[verb.end() if verb else 0 :].rstrip(" .!?") or text or "Segment"
    return lo_text(label[:1].upper() + label[1:])


def lo_text(text: str) -> str:
    """``text`` as one DICOM LO value: one printable line, no backslash (DICOM's value separator), at most 64
    characters."""
    return _one_line(text)[:_LABEL_LIMIT].rstrip()


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split()).replace("\\", "/")
