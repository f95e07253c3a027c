"""Talking to the PACS: list series (QIDO-RS), retrieve one into a folder (WADO-RS), store a SEG (STOW-RS).

Every failure becomes a PacsRefused (the user's input: refused credentials, an unknown UID, a series that is
not a volume) or a PacsUnavailable (down, unreachable, failing), each one line naming the PACS by its URL.
The retrieved files are named by their position in the download, never by anything the PACS sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from .. import __version__
from ..imaging.limits import DEFAULT_LIMITS, ImageLimits
from .settings import PacsLoginRefused, PacsNotFound, PacsRefused, PacsSettings, PacsUnavailable, SeriesRef

# Modalities of series that hold no image to segment (results, reports, presentation states, documents).
NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "OT_DOC", "FID", "PLAN"}
_ATTEMPTS = 3  # tries a request gets (dicomweb-client's retry): unreachable, or busy (503, 429, 504, 408)
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
        return asdict(self)

    @classmethod
    def of_json(cls, item: dict[str, Any]) -> SeriesEntry:
        """From a QIDO-RS result (DICOM JSON); anything missing or malformed is empty."""

        def text(tag: str) -> str:
            value = _first(item, tag)
            return str(value.get("Alphabetic", "") if isinstance(value, dict) else value if value is not None else "")

        count = text("00201209")
        return cls(
            study_uid=text("0020000D"), series_uid=text("0020000E"), patient_id=text("00100020"),
            patient_name=text("00100010"), study_date=text("00080020"), study_description=text("00081030"),
            modality=text("00080060"), series_description=text("0008103E"), series_number=text("00200011"),
            instances=int(count) if count.isdecimal() and len(count) < 10 else None,
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
        self.client = DICOMwebClient(settings.url, session=http, timeout=(10.0, timeout))
        # Its retry (the retrying package) repeats a request that raised or answered busy: 0.5 s, then 1 s apart.
        self.client.set_http_retry_params(max_attempts=_ATTEMPTS, wait_exponential_multiplier=250)

    def series(
        self, patient: str | None = None, modality: str | None = None, date: str | None = None, limit: int = 200
    ) -> list[SeriesEntry]:
        """The series matching the filters (QIDO-RS; a date is YYYYMMDD or a range YYYYMMDD-YYYYMMDD)."""
        filters = {key: value for key, value in
                   (("PatientID", patient), ("Modality", modality), ("StudyDate", date)) if value}  # fmt: skip
        with self._talking("the series search"):
            found = self.client.search_for_series(fields=_SERIES_FIELDS, search_filters=filters, limit=limit)
        return [SeriesEntry.of_json(item) for item in _items(found)]

    def check(self) -> None:
        """One small search: a PACS that is down, or refuses the credentials, is found before a run, not after."""
        with self._talking("a search"):
            self.client.search_for_studies(limit=1)

    def find(self, ref: SeriesRef) -> SeriesEntry:
        """The series ``ref`` names; PacsRefused when the PACS does not hold it."""
        filters = {"SeriesInstanceUID": ref.series_uid}
        if ref.study_uid:
            filters["StudyInstanceUID"] = ref.study_uid
        with self._talking(f"the series {ref}"):
            found = self.client.search_for_series(fields=_SERIES_FIELDS, search_filters=filters)
        entries = [SeriesEntry.of_json(item) for item in _items(found)]
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
                if len(files) == total:  # more than its metadata listed: a PACS that would fill the disk
                    raise PacsUnavailable(f"{entry.ref}: the PACS sent more instances than the series' {total}")
                path = folder / f"{len(files):05d}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                files.append(path)
                if on_progress is not None:
                    on_progress(len(files), total)
        if len(files) != total:
            raise PacsUnavailable(f"{entry.ref}: the PACS sent {len(files)} of the series' {total} instances")
        return files

    def store(self, dataset: Any) -> str:
        """Store one instance (STOW-RS) into its study, then ask for it back (QIDO-RS): a PACS may answer that
        it stored what a filter of its own threw away (Orthanc does). Where it went, as a line for the user."""
        study, instance = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
        where = self.settings.where
        with self._talking("the stored SEG"):
            answer = self.client.store_instances([dataset], study_instance_uid=study)
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "no reason given")
            raise PacsUnavailable(f"the PACS at {where} did not store the SEG (failure reason {reason})")
        with self._talking("the stored SEG"):
            held = self.client.search_for_instances(study, search_filters={"SOPInstanceUID": instance})
        if not any(_first(item, "00080018") == instance for item in _items(held)):
            raise PacsUnavailable(f"the PACS at {where} answered that it stored the SEG, but it does not hold it")
        return f"study {study} on {where}"

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        import retrying
        from pydicom.errors import InvalidDicomError

        where = self.settings.where
        try:
            yield
        except requests.exceptions.SSLError as exc:
            raise PacsUnavailable(f"the TLS certificate of the PACS at {where} failed the check: {exc}") from None
        except requests.ConnectionError as exc:
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
        except retrying.RetryError:
            raise PacsUnavailable(f"the PACS at {where} stayed busy ({what}, tried {_ATTEMPTS} times)") from None
        except requests.RequestException as exc:
            raise PacsUnavailable(f"the PACS at {where} failed on {what} ({exc.__class__.__name__})") from None
        except (ValueError, InvalidDicomError) as exc:  # not JSON, not DICOM, a broken multipart answer
            raise PacsUnavailable(f"the PACS at {where} sent a malformed answer to {what} ({exc})"[:300]) from None


def _items(found: Any) -> list[dict[str, Any]]:
    """The objects of a DICOM JSON answer (a PACS that sends anything else sent nothing usable)."""
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    return next(iter(_values(item, tag)), None)


def check_volume_metadata(metadata: Any, limits: ImageLimits, name: str) -> int:
    """The number of instances of a series that is one volume; PacsRefused naming why it is not one (no
    images, a localizer, mixed sizes or orientations, no positions, too many voxels, metadata that cannot be
    read)."""
    try:
        return _volume_instances(_items(metadata), limits, name)
    except (ValueError, TypeError, OverflowError) as exc:
        if isinstance(exc, PacsRefused):
            raise
        raise PacsRefused(f"{name}: the PACS sent metadata that cannot be read ({exc.__class__.__name__})") from None


def _volume_instances(metadata: list[dict[str, Any]], limits: ImageLimits, name: str) -> int:
    if not metadata:
        raise PacsRefused(f"{name}: the series holds no instances")
    modality = str(_first(metadata[0], "00080060") or "")
    if modality in NOT_IMAGES or any(not _values(m, "00280010") for m in metadata):
        raise PacsRefused(f"{name}: not an image series (modality {modality or 'unknown'}): choose a CT or MR series")
    if any("LOCALIZER" in [str(v).upper() for v in _values(m, "00080008")] for m in metadata):
        raise PacsRefused(f"{name}: a localizer (scout) series, not a volume: choose the axial series")
    sizes = {(int(_first(m, "00280011")), int(_first(m, "00280010"))) for m in metadata}
    if len(sizes) > 1:
        shown = ", ".join(f"{c}x{r}" for c, r in sorted(sizes)[:3])
        raise PacsRefused(f"{name}: images of different sizes ({shown}): not one volume")
    orientations = {tuple(round(float(v), 3) for v in _values(m, "00200037")) for m in metadata}
    if len(orientations) > 1:
        raise PacsRefused(f"{name}: images in {len(orientations)} orientations: not one volume")
    frames = [int(_first(m, "00280008") or 1) for m in metadata]
    if len(metadata) > 1 and any(not _values(m, "00200032") for m in metadata):
        raise PacsRefused(f"{name}: images without a position in the patient: not one volume")
    if len(metadata) > 1 and max(frames) > 1:
        raise PacsRefused(f"{name}: several multi-frame instances: not one volume")
    columns, rows = next(iter(sizes))
    try:
        limits.check((columns, rows, sum(frames)), name)
    except ValueError as exc:
        raise PacsRefused(str(exc)) from None
    return len(metadata)
