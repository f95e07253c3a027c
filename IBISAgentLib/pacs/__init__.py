"""The hospital's PACS over DICOMweb (dicomweb-client) and DICOM Segmentation objects (highdicom).

``settings`` holds where the PACS is and how to log in; ``archive`` lists, retrieves and stores over
QIDO-RS, WADO-RS and STOW-RS; ``segmentation`` turns a result into a DICOM SEG that references its source
instances; ``terms`` codes a target named in an instruction. dicomweb-client and highdicom are imported
inside these modules (the ``pacs`` extra), never by ``import IBISAgentLib``.
"""

from .settings import (
    PacsError,
    PacsLoginRefused,
    PacsNotFound,
    PacsRefused,
    PacsSettings,
    PacsUnavailable,
    SeriesRef,
    pacs_source,
)

__all__ = [
    "PacsError",
    "PacsLoginRefused",
    "PacsNotFound",
    "PacsRefused",
    "PacsSettings",
    "PacsUnavailable",
    "SeriesRef",
    "pacs_source",
]
