"""Talking to the PACS: list series (QIDO-RS), retrieve one into a folder (WADO-RS), store a SEG (STOW-RS).

Every failure becomes a PacsRefused (the user's input: refused credentials, an unknown UID, a series that is
not a volume) or a PacsUnavailable (down, unreachable, failing), each one line naming the PACS by its URL.
The retrieved files are named by their position in the download, never by anything the PACS sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .. import __version__
from ..imaging.limits import DEFAULT_LIMITS, ImageLimits
from .settings import PacsLoginRefused, PacsNotFound, PacsRefused, PacsSettings, PacsUnavailable, SeriesRef

# Modalities of series that hold no image to segment (results, reports, presentation states, documents).
NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "OT_DOC", "FID", "PLAN"}
_ATTEMPTS = 3  # tries a request gets where the PACS is unreachable or busy (503, 429, 504, 408)
_SERIES_FIELDS = (
    "PatientID", "PatientName", "StudyDate", "StudyDescription", "StudyInstanceUID", "SeriesInstanceUID",
    "SeriesDescription", "SeriesNumber", "Modality", "NumberOfSeriesRelatedInstances",
)  # fmt: skip


@dataclass(frozen=True)
class SeriesEntry:
    """One series as QIDO-RS describes it: enough to choose it and to retrieve it."""

    study_uid: str
    series_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: str = ""
    instances: int | None = None

    @property
    def ref(self) -> SeriesRef:
        return SeriesRef(self.series_uid, self.study_uid)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}

    @classmethod
    def of_json(cls, item: dict[str, Any]) -> SeriesEntry:
        def text(tag: str) -> str:
            values = item.get(tag, {}).get("Value") or [""]
            value = values[0]
            return str(value.get("Alphabetic", "") if isinstance(value, dict) else value)

        count = text("00201209")
        return cls(
            study_uid=text("0020000D"), series_uid=text("0020000E"), patient_id=text("00100020"),
            patient_name=text("00100010"), study_date=text("00080020"), study_description=text("00081030"),
            modality=text("00080060"), series_description=text("0008103E"), series_number=text("00200011"),
            instances=int(count) if count.isdigit() else None,
        )  # fmt: skip


class Pacs:
    """A DICOMweb PACS, through dicomweb-client over one requests session (its login, TLS and retries)."""

    def __init__(self, settings: PacsSettings, timeout: float = 60.0) -> None:
        from dicomweb_client import DICOMwebClient

        self.settings = settings
        http = requests.Session()
        http.headers["User-Agent"] = f"ibisagent/{__version__}"
        if settings.token:
            http.headers["Authorization"] = f"Bearer {settings.token}"
        elif settings.user:
            http.auth = (settings.user, settings.password or "")
        http.verify = settings.ca_bundle or True
        # Refused connections are retried here (urllib3); busy answers by dicomweb-client's own retry below.
        retry = Retry(total=_ATTEMPTS - 1, connect=_ATTEMPTS - 1, read=0, status=0, other=0, backoff_factor=0.25)
        for scheme in ("http://", "https://"):
            http.mount(scheme, HTTPAdapter(max_retries=retry))
        self.client = DICOMwebClient(settings.url, session=http, timeout=(10.0, timeout))
        self.client.set_http_retry_params(max_attempts=_ATTEMPTS, wait_exponential_multiplier=250)

    def series(
        self, patient: str | None = None, modality: str | None = None, date: str | None = None, limit: int = 200
    ) -> list[SeriesEntry]:
        """The series matching the filters (QIDO-RS; a date is YYYYMMDD or a range YYYYMMDD-YYYYMMDD)."""
        filters = {key: value for key, value in
                   (("PatientID", patient), ("Modality", modality), ("StudyDate", date)) if value}  # fmt: skip
        with self._talking("the series search"):
            found = self.client.search_for_series(fields=_SERIES_FIELDS, search_filters=filters, limit=limit)
        return [SeriesEntry.of_json(item) for item in found]

    def find(self, ref: SeriesRef) -> SeriesEntry:
        """The series ``ref`` names; PacsRefused when the PACS does not hold it."""
        filters = {"SeriesInstanceUID": ref.series_uid}
        if ref.study_uid:
            filters["StudyInstanceUID"] = ref.study_uid
        with self._talking(f"the series {ref}"):
            found = self.client.search_for_series(fields=_SERIES_FIELDS, search_filters=filters)
        entries = [SeriesEntry.of_json(item) for item in found]
        entries = [e for e in entries if e.series_uid == ref.series_uid]  # a PACS may ignore a filter it lacks
        if not entries:
            raise PacsNotFound(f"{ref}: no such series on the PACS at {self.settings.where}")
        return entries[0]

    def download(
        self,
        entry: SeriesEntry,
        folder: Path,
        limits: ImageLimits = DEFAULT_LIMITS,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Path]:
        """Retrieve the series into ``folder`` (one file an instance), refused from its metadata first when it
        is not one volume within ``limits``; ``on_progress(done, total)`` from (0, total) once it is accepted."""
        with self._talking(f"the metadata of {entry.ref}"):
            metadata = self.client.retrieve_series_metadata(entry.study_uid, entry.series_uid)
        total = check_volume_metadata(metadata, limits, str(entry.ref))
        folder.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        if on_progress is not None:
            on_progress(0, total)
        with self._talking(f"the instances of {entry.ref}"):
            for dataset in self.client.iter_series(entry.study_uid, entry.series_uid):
                path = folder / f"{len(files):05d}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                files.append(path)
                if on_progress is not None:
                    on_progress(len(files), total)
        if len(files) != total:
            raise PacsUnavailable(f"{entry.ref}: the PACS sent {len(files)} of the series' {total} instances")
        return files

    def store(self, dataset: Any) -> str:
        """Store one instance (STOW-RS) into its study; where it went, as a line for the user."""
        study = str(dataset.StudyInstanceUID)
        with self._talking("the stored SEG"):
            answer = self.client.store_instances([dataset], study_instance_uid=study)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "no reason given")
            raise PacsUnavailable(f"the PACS at {self.settings.where} did not store the SEG (failure reason {reason})")
        return f"study {study} on {self.settings.where}"

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        where = self.settings.where
        try:
            yield
        except requests.exceptions.SSLError as exc:
            raise PacsUnavailable(f"the TLS certificate of the PACS at {where} failed the check: {exc}") from None
        except (requests.ConnectionError, requests.exceptions.RetryError) as exc:
            raise PacsUnavailable(
                f"cannot reach the PACS at {where} ({exc.__class__.__name__}, tried {_ATTEMPTS} times): is it "
                "running and reachable?"
            ) from None
        except requests.Timeout:
            raise PacsUnavailable(f"the PACS at {where} did not answer in time ({what})") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsLoginRefused(
                    f"the PACS at {where} refused the credentials (HTTP {status}): check --pacs-user and "
                    "--pacs-password-file, or --pacs-token-file"
                ) from None
            if status == 404:
                raise PacsNotFound(f"{what}: not found on the PACS at {where}") from None
            if 400 <= status < 500:
                raise PacsRefused(f"the PACS at {where} refused {what} (HTTP {status})") from None
            raise PacsUnavailable(f"the PACS at {where} failed on {what} (HTTP {status})") from None


def check_volume_metadata(metadata: list[dict[str, Any]], limits: ImageLimits, name: str) -> int:
    """The number of instances of a series that is one volume; PacsRefused naming why it is not one (no
    images, a localizer, mixed sizes or orientations, no positions, too many voxels)."""

    def values(item: dict[str, Any], tag: str) -> list[Any]:
        return item.get(tag, {}).get("Value") or []

    if not metadata:
        raise PacsRefused(f"{name}: the series holds no instances")
    modality = next(iter(values(metadata[0], "00080060")), "")
    if modality in NOT_IMAGES or any(not values(m, "00280010") for m in metadata):
        raise PacsRefused(f"{name}: not an image series (modality {modality or 'unknown'}): choose a CT or MR series")
    if any("LOCALIZER" in [str(v).upper() for v in values(m, "00080008")] for m in metadata):
        raise PacsRefused(f"{name}: a localizer (scout) series, not a volume: choose the axial series")
    sizes = {(values(m, "00280011")[0], values(m, "00280010")[0]) for m in metadata}
    if len(sizes) > 1:
        shown = ", ".join(f"{c}x{r}" for c, r in sorted(sizes)[:3])
        raise PacsRefused(f"{name}: images of different sizes ({shown}): not one volume")
    orientations = {tuple(round(float(v), 3) for v in values(m, "00200037")) for m in metadata}
    if len(orientations) > 1:
        raise PacsRefused(f"{name}: images in {len(orientations)} orientations: not one volume")
    frames = [int(next(iter(values(m, "00280008")), 1) or 1) for m in metadata]
    if len(metadata) > 1 and any(not values(m, "00200032") for m in metadata):
        raise PacsRefused(f"{name}: images without a position in the patient: not one volume")
    if len(metadata) > 1 and max(frames) > 1:
        raise PacsRefused(f"{name}: several multi-frame instances: not one volume")
    columns, rows = next(iter(sizes))
    try:
        limits.check((int(columns), int(rows), sum(frames)), name)
    except ValueError as exc:
        raise PacsRefused(str(exc)) from None
    return len(metadata)
