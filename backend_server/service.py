"""The server's sessions as a service, free of HTTP: images in, sessions opened, model work on the one worker
thread, and refusals as ``Refused`` with the status a route answers with. ``app.py`` is thin routes over it."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from IBISAgentLib.agent.backends import LocalBackend, Session
from IBISAgentLib.agent.trace import Step
from IBISAgentLib.imaging.limits import ImageLimits
from IBISAgentLib.imaging.volumes import VolumeInputError, read_volume
from IBISAgentLib.imaging.windowing import Window, check_finite
from IBISAgentLib.pacs import PacsLoginRefused, PacsNotFound, PacsRefused, PacsUnavailable, SeriesRef
from IBISAgentLib.remote.protocol import (
    ProtocolError,
    UploadedImage,
    content_hash,
    decode_image,
    decode_mask,
    encode_image,
    encode_mask,
    source_image,
)
from IBISAgentLib.tools.propagation import PropagationCancelled, PropagationOptions

from .config import ServerConfig
from .jobs import ModelWorker, QueueFull
from .store import Entry, ImageStore, SessionStore

log = logging.getLogger("ibisagent.server")

Emit = Callable[[dict], None]


class Refused(Exception):
    """A request the service turns down; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SessionService:
    def __init__(self, backend: LocalBackend, config: ServerConfig) -> None:
        self.backend, self.config = backend, config
        self.worker = ModelWorker(config.max_queue)
        self.images = ImageStore(config.image_store_bytes)
        self.sessions = SessionStore(config.max_sessions, config.idle_timeout, self.images, on_close=self._release)

    def _release(self, session: Session) -> None:
        """A closed or expired session frees its tool memory, on the worker (the tool is not thread-safe)."""
        with contextlib.suppress(QueueFull):  # a full queue: the tool's own cache limit frees it later
            self.worker.submit(session.close)

    # -- images and sessions -------------------------------------------------------------------------

    def store_image(self, digest: str, body: bytearray) -> dict[str, Any]:
        try:
            image = decode_image(body, self.config.max_voxels, self.config.max_dimension)
        except ProtocolError as exc:
            raise Refused(422, str(exc)) from None
        self.images.put(digest, image)
        log.info("image %s… stored: %s %s", digest[:12], image.kind, image.array.shape)
        return {"image": digest, "kind": image.kind, "shape": list(image.array.shape)}

    def fetch_series(self, ref: SeriesRef) -> dict[str, Any]:
        """A series retrieved from the server's PACS into the image store, as if uploaded: the workstation sends
        a UID, not the volume. Its files live in a temporary folder only while being read."""
        if self.config.pacs is None:
            raise Refused(404, "this server reads no PACS: start it with ibisagent serve --pacs URL")
        from IBISAgentLib.pacs.archive import Pacs

        limits = ImageLimits(self.config.max_voxels, self.config.max_dimension)
        try:
            archive = Pacs(self.config.pacs)
            entry = archive.find(ref)
            with tempfile.TemporaryDirectory(prefix="ibisagent-pacs-") as folder:
                archive.download(entry, Path(folder), limits)
                try:
                    volume = read_volume(folder, limits)
                except VolumeInputError as exc:  # its message names the server's temporary folder: not sent
                    raise Refused(422, str(exc).replace(folder, str(ref))) from None
            voxels = sitk.GetArrayFromImage(volume)
            check_finite(voxels)
        except PacsNotFound as exc:
            raise Refused(404, str(exc)) from None
        except (PacsLoginRefused, PacsUnavailable) as exc:  # the server's PACS or its set-up, not the request
            raise Refused(502, str(exc)) from None
        except (PacsRefused, ValueError) as exc:
            raise Refused(422, str(exc)) from None
        image = UploadedImage("volume", voxels, volume.GetSpacing(), volume.GetOrigin(), volume.GetDirection())
        digest = content_hash(encode_image(image))
        self.images.put(digest, image)
        log.info("image %s… retrieved from the PACS: %s", digest[:12], voxels.shape)
        return {
            "image": digest, "kind": "volume", "shape": list(voxels.shape), "spacing": list(image.spacing),
            "origin": list(image.origin), "direction": list(image.direction), "study": entry.study_uid,
            "series": entry.series_uid,
        }  # fmt: skip

    def open(
        self,
        digest: str,
        instruction: str,
        *,
        slice_spec: str | None,
        window: Window | None,
        initial_mask: dict | None,
        max_turns: int,
        image_source: str | None,
    ) -> dict[str, Any]:
        if len(instruction) > self.config.max_instruction:
            raise Refused(422, f"the instruction is longer than {self.config.max_instruction} characters")
        uploaded = self.images.get(digest)
        if uploaded is None:
            raise Refused(404, "no such image on the server: upload it first")
        try:
            source = uploaded.source(slice_spec, window)
            mask = decode_mask(initial_mask, source_image(source).shape[:2]) if initial_mask else None
            session = self.backend.open_session(
                source, instruction, initial_mask=mask, max_turns=max_turns, image_source=image_source
            )
        except (ValueError, ProtocolError) as exc:
            raise Refused(422, str(exc)) from None
        session_id = self.sessions.add(session, digest)
        if session_id is None:
            raise Refused(503, f"the server holds its limit of {self.config.max_sessions} sessions")
        log.info("session %s… opened", session_id[:6])
        height, width = session.image.shape[:2]
        return {"session": session_id, "width": width, "height": height, "slice": session.trace().slice}

    def entry(self, session_id: str) -> Entry:
        entry = self.sessions.get(session_id)
        if entry is None:
            raise Refused(404, "no such session: it was closed or expired")
        return entry

    def claim(self, session_id: str) -> Entry:
        """The session, held for one request until ``release``; a cancel from now on stops its work."""
        entry = self.sessions.claim(session_id)
        if entry is None:
            raise Refused(404, "no such session: it was closed or expired")
        if entry is False:
            raise Refused(409, "the session is busy with another request")
        entry.stop.clear()
        return entry  # type: ignore[return-value]

    def close(self, session_id: str) -> None:
        if not self.sessions.close(session_id):
            raise Refused(404, "no such session: it was closed or expired")

    # -- model work ----------------------------------------------------------------------------------

    def click(self, session_id: str, x: int, y: int, positive: bool) -> dict[str, Any]:
        entry = self.claim(session_id)
        try:
            step = self._in_worker(entry, lambda: entry.session.add_click(x, y, positive))
        except ValueError as exc:
            raise Refused(422, str(exc)) from None
        return step_event(step)

    def undo(self, session_id: str) -> dict[str, Any]:
        entry = self.claim(session_id)
        step = self._in_worker(entry, entry.session.undo)
        return {"undone": step.to_dict() if step else None, "mask": encode_mask(entry.session.mask)}

    def run_job(self, entry: Entry, single_step: bool) -> Callable[[Emit], dict]:
        """The agent's turns, each step emitted as it is taken."""
        session = entry.session

        def job(emit: Emit) -> dict:
            if entry.stop.is_set():  # cancelled while it waited in the queue
                return {"event": "end", "stop_reason": "cancelled", "answer": None}
            session.on_step = lambda step: emit(step_event(step))
            try:
                session.step() if single_step else session.run()
            finally:
                session.on_step = None
            return {"event": "end", "stop_reason": session.stop_reason, "answer": session.answer}

        return job

    def check_propagation(self, entry: Entry, options: PropagationOptions) -> None:
        """Refuse, before anything streams, a propagation the session cannot run (a 2D image, a bad range)."""
        case = entry.session.case
        try:
            if case is None:
                raise ValueError("propagation applies to a session on a volume slice; this session is a 2D image")
            options.span(case.geometry)
        except ValueError as exc:
            self.sessions.release(entry)
            raise Refused(422, str(exc)) from None

    def propagate_job(
        self, entry: Entry, options: PropagationOptions, check_budget: int | None = None
    ) -> Callable[[Emit], dict]:
        """The propagation, its progress emitted slice by slice; with ``check_budget`` the volume agent's check
        after it, each re-checked slice emitted as it is done. The result carries the per-slice records."""

        def job(emit: Emit) -> dict:
            try:
                result = self.backend.propagate_and_check(
                    entry.session,
                    options,
                    check_budget,
                    on_progress=lambda done, total, index: emit(
                        {"event": "progress", "done": done, "total": total, "index": index}
                    ),
                    on_check=lambda record: emit({"event": "check", "record": record}),
                    cancel=entry.stop,
                )
            except PropagationCancelled:
                return {"event": "cancelled"}
            return {"event": "result", "mask": encode_mask(result.mask), "slices": result.slices,
                    "checks": result.checks}  # fmt: skip

        return job

    def submit(self, entry: Entry, job: Callable[[Emit], dict], emit: Emit) -> None:
        """Run ``job(emit)`` on the model worker; its last event is emitted, then None. The session is released
        before that last event goes out, so a client that answers it at once finds the session free."""

        def run() -> None:
            final: dict | None = None
            try:
                final = job(emit)
            except Exception as exc:
                log.exception("session job failed")  # the session catches expected failures: this is a bug
                final = {"event": "error", "message": str(exc)}
            finally:
                self.sessions.release(entry)
                emit(final)
                emit(None)

        try:
            self.worker.submit(run)
        except QueueFull:
            self.sessions.release(entry)
            raise

    def _in_worker(self, entry: Entry, job: Callable[[], Any]) -> Any:
        try:
            return self.worker.submit(job).result()
        finally:
            self.sessions.release(entry)


def step_event(step: Step) -> dict[str, Any]:
    """A step in the trace schema plus its mask as a compressed crop."""
    return {"event": "step", "step": step.to_dict(), "mask": encode_mask(step.mask)}
