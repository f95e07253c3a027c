"""Open from PACS and Save to PACS: search the PACS's series (patient, date, modality), retrieve the one picked
(its progress in the page) and open it; store the target segment back into its study as a DICOM SEG. The PACS
and its credentials are set on the command line (``ibisagent web --pacs ...``): the page never sees them.

An opened series stays in a temporary folder while it is the volume: its headers are what the SEG references.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from trame.widgets import html
from trame.widgets import vuetify3 as v

from IBISAgentLib.agent.trace import Trace
from IBISAgentLib.imaging.limits import ImageLimits
from IBISAgentLib.imaging.volume_files import Grid
from IBISAgentLib.imaging.volumes import dicom_series_files, read_volume
from IBISAgentLib.pacs import PacsError, PacsSettings
from IBISAgentLib.pacs.settings import is_date_filter
from IBISAgentMRML import segment_array
from IBISAgentMRML.volumes import image_from_volume

MODALITIES = ("", "CT", "MR", "PT", "US", "XA", "CR", "DX", "MG", "NM")
PACS_DEFAULTS = {
    "ia_pacs": False,  # a PACS is set: the PACS card shows
    "ia_pacs_where": "",
    "ia_pacs_patient": "",
    "ia_pacs_date": "",
    "ia_pacs_modality": "",
    "ia_pacs_rows": [],  # the last search's series: {value: "pacs:STUDY/SERIES", title}
    "ia_pacs_pick": None,
    "ia_pacs_working": "",  # what the PACS is doing now ("Retrieving 12 of 300 images…")
    "ia_pacs_said": "",  # the last search's or store's outcome
    "ia_pacs_opened": False,  # the volume came from the PACS (Save to PACS applies)
}


class PacsBrowser:
    """The page's PACS: ``notify`` shows a refusal or failure as the page's one-line message."""

    def __init__(self, state: Any, settings: PacsSettings | None, scene: Any, notify: Callable[[str], None]) -> None:
        self.state, self.scene, self.notify = state, scene, notify
        self.archive = None
        if settings is not None:
            from IBISAgentLib.pacs.archive import Pacs

            self.archive = Pacs(settings)
        self.state.update(PACS_DEFAULTS | {"ia_pacs": settings is not None,
                                           "ia_pacs_where": settings.where if settings else ""})  # fmt: skip
        self._found: dict[str, Any] = {}  # the last search's SeriesEntry by its pacs: name
        self._opened: tempfile.TemporaryDirectory | None = None  # the opened series' folder

    def forget(self) -> None:
        """Another volume replaced the PACS series: its folder goes."""
        if self._opened is not None:
            self._opened.cleanup()
            self._opened = None
        self.state.ia_pacs_opened = False

    async def search(self) -> None:
        patient = " ".join(str(self.state.ia_pacs_patient or "").split())
        date = str(self.state.ia_pacs_date or "").strip()
        modality = str(self.state.ia_pacs_modality or "")
        if len(patient) > 64 or not patient.isprintable():
            self.notify("Patient ID: one line of at most 64 characters.")
            return
        if date and not is_date_filter(date):
            self.notify("Date: YYYYMMDD, or a range YYYYMMDD-YYYYMMDD.")
            return
        if modality not in MODALITIES:
            self.notify(f"Modality: one of {', '.join(m for m in MODALITIES if m)}, or any.")
            return
        found = await self._talk("Searching…", self.archive.series, patient or None, modality or None, date or None)
        if found is None:
            return
        self._found = {str(entry.ref): entry for entry in found}
        with self.state:
            self.state.ia_pacs_rows = [{"value": str(e.ref), "title": _title(e)} for e in found]
            self.state.ia_pacs_pick = str(found[0].ref) if found else None
            self.state.ia_pacs_said = f"{len(found)} series found." if found else "No series match."

    async def open(self, busy: Callable[[], bool]) -> str | None:
        """Retrieve the picked series and open it (unless ``busy()`` by then: the agent started meanwhile);
        None, or the message the page shows."""
        entry = self._found.get(str(self.state.ia_pacs_pick or ""))
        if entry is None:
            return "Search the PACS and pick a series first."
        folder = tempfile.TemporaryDirectory(prefix="ibisagent-pacs-")
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(self._working, f"Retrieving {done} of {total} images…")

        self._working("Retrieving…")
        try:
            await asyncio.to_thread(self.archive.download, entry, Path(folder.name), self.scene.limits, progress)
        except (PacsError, ValueError) as exc:
            folder.cleanup()
            return str(exc)
        finally:
            self._working("")
        if busy():
            folder.cleanup()
            return "The agent started while the series was retrieved: press Open again once it has stopped."
        message = self.scene.open_path(folder.name)  # the scene's replace hook forgets the previous series
        if message is not None:
            folder.cleanup()
            return message.replace(Path(folder.name).name, str(entry.ref))
        self.scene.volume.SetName(_title(entry))
        self._opened = folder
        self.state.ia_pacs_opened = True
        return None

    async def store(self, segmentation: Any, segment_id: str, trace_json: str | None, hand_edited: bool) -> None:
        """The segment as a DICOM SEG over the opened series, stored into its study; the page says where. It is
        coded from the session's instruction, or from the segment's name when it was drawn by hand."""
        if self._opened is None:
            self.notify("Save to PACS stores a segment of a series opened from the PACS: open one with Open.")
            return
        folder = self._opened
        mask = segment_array(segmentation, segment_id, self.scene.volume)
        if not mask.any():
            self.notify("The segment is empty: nothing to store.")
            return
        labelmap = sitk.GetImageFromArray(mask.astype(np.uint8))
        labelmap.CopyInformation(image_from_volume(self.scene.volume))
        trace = Trace.from_dict(json.loads(trace_json)) if trace_json else None
        target = trace.instruction if trace else segmentation.GetSegmentation().GetSegment(segment_id).GetName()
        seg = (target, trace, hand_edited)
        where = await self._talk("Storing the SEG…", _store, self.archive, Path(folder.name), self.scene.limits,
                                 labelmap, seg)  # fmt: skip
        if where is not None:
            with self.state:
                self.state.ia_pacs_said = f"Stored the SEG of {target!r} in {where}."

    def _working(self, text: str) -> None:
        with self.state:
            self.state.ia_pacs_working = text

    async def _talk(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` off the page's thread, the page saying ``what`` meanwhile; None (said) on failure."""
        self._working(what)
        try:
            return await asyncio.to_thread(call, *args)
        except (PacsError, ValueError) as exc:
            self.notify(str(exc))
            return None
        finally:
            self._working("")


def _store(archive: Any, folder: Path, limits: ImageLimits, labelmap: sitk.Image, seg: tuple) -> str:
    """Build the SEG on the series' own grid (Slicer may order a volume's voxels differently) and store it;
    ``seg`` is (the target's name, the trace or None, hand-edited). A ValueError says why it cannot be built."""
    from IBISAgentLib.pacs.segmentation import check_seg_sources, dicom_seg, source_headers

    target, trace, hand_edited = seg
    series = read_volume(folder, limits)
    grid = Grid(series.GetSize(), series.GetSpacing(), series.GetOrigin(), series.GetDirection())
    mask = sitk.GetArrayFromImage(grid.resample(labelmap)).astype(bool)
    sources = source_headers([Path(f) for f in dicom_series_files(folder, limits)])
    try:
        check_seg_sources(sources, series.GetDepth())
        dataset = dicom_seg(sources, mask, target, trace, hand_edited)
    except Exception as exc:  # highdicom reports what it cannot build in several types; the segment stays
        raise ValueError(f"Could not build the DICOM SEG: {exc}") from None
    return archive.store(dataset)


def _title(entry: Any) -> str:
    parts = (entry.patient_id, entry.study_date, entry.modality, entry.series_description or entry.study_description)
    return " · ".join(p for p in parts if p) + f" ({entry.instances or '?'} images)"


def build_pacs(app: Any) -> None:
    """The PACS card (shown only when a PACS is set): search, pick, open; Save to PACS sits with Save."""
    with v.VCard(v_if="ia_pacs", variant="outlined", classes="pa-2 d-flex flex-column", style="gap: 6px"):
        html.Div("Open from PACS ({{ ia_pacs_where }})", classes="text-subtitle-2")
        with html.Div(classes="d-flex", style="gap: 6px"):
            v.VTextField(label="Patient ID", v_model=("ia_pacs_patient",), density="compact", hide_details=True)
            v.VTextField(label="Study date", v_model=("ia_pacs_date",), placeholder="YYYYMMDD[-YYYYMMDD]",
                         density="compact", hide_details=True)  # fmt: skip
            v.VSelect(
                label="Modality",
                items=("ia_pacs_modalities", [{"title": m or "any", "value": m} for m in MODALITIES]),
                v_model=("ia_pacs_modality",),
                item_title="title",
                item_value="value",
                density="compact",
                hide_details=True,
                style="max-width: 90px",
            )
        with html.Div(classes="d-flex align-center", style="gap: 6px"):
            v.VBtn("Search", click=app.on_pacs_search, disabled=("ia_busy || !!ia_pacs_working",))
            v.VSelect(
                label="Series",
                items=("ia_pacs_rows",),
                v_model=("ia_pacs_pick",),
                item_title="title",
                item_value="value",
                density="compact",
                hide_details=True,
                disabled=("!ia_pacs_rows.length",),
            )
            v.VBtn("Open", click=app.on_pacs_open, disabled=("ia_busy || !!ia_pacs_working || !ia_pacs_pick",))
        v.VProgressLinear(indeterminate=True, v_if="ia_pacs_working", height=3)
        html.Div("{{ ia_pacs_working || ia_pacs_said }}", v_if="ia_pacs_working || ia_pacs_said",
                 classes="text-caption ia-pacs-said")  # fmt: skip
