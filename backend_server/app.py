"""The HTTP API (versioned under /v1; OpenAPI at /docs). See IBISAgentLib.remote.protocol for the wire format."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

import IBISAgentLib
from IBISAgentLib.agent.backends import LocalBackend
from IBISAgentLib.agent.jsontext import dump_bytes
from IBISAgentLib.agent.trace import Step
from IBISAgentLib.imaging.windowing import Window
from IBISAgentLib.remote.protocol import (
    API_VERSION,
    ProtocolError,
    content_hasher,
    decode_image,
    decode_mask,
    encode_mask,
    source_image,
)
from IBISAgentLib.tools.propagation import PropagationCancelled, PropagationOptions

from .config import ServerConfig
from .jobs import ModelWorker, QueueFull
from .security import BodyTooLarge, GateMiddleware
from .store import Entry, ImageStore, SessionStore

log = logging.getLogger("backend_server")

Digest = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{16,64}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaskPayload(Strict):
    shape: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(min_length=2, max_length=3)
    bbox: list[list[Annotated[int, Field(ge=0)]]] | None
    bits: str = Field(max_length=50_000_000)


class WindowSpec(Strict):
    level: float = Field(allow_inf_nan=False)
    width: float = Field(gt=0, allow_inf_nan=False)
    name: str = Field(default="custom", max_length=64)


class SessionRequest(Strict):
    image: str = Field(pattern=r"^[0-9a-f]{64}$")
    instruction: str = Field(min_length=1)
    max_turns: int = Field(default=20, ge=1, le=200)
    slice: str | None = Field(default=None, max_length=32)
    window: WindowSpec | None = None
    initial_mask: MaskPayload | None = None
    image_source: str | None = Field(default=None, max_length=500)


class RunRequest(Strict):
    single_step: bool = False


class ClickRequest(Strict):
    x: int = Field(ge=0, le=1_000_000)
    y: int = Field(ge=0, le=1_000_000)
    positive: bool


class PropagateRequest(Strict):
    first: int | None = Field(default=None, ge=0)
    last: int | None = Field(default=None, ge=0)
    stop_after_empty: int = Field(default=3, ge=0, le=100_000)
    largest_component: bool = False


def create_app(backend: LocalBackend, config: ServerConfig, models: dict[str, str]) -> FastAPI:
    app = FastAPI(
        title="IBISAgent backend",
        version=IBISAgentLib.__version__,
        description="Agentic text-instructed segmentation sessions: upload an image once, then prompt small.",
        default_response_class=SafeJSONResponse,
    )
    worker = ModelWorker(config.max_queue)

    def release(session: Any) -> None:
        """A closed or expired session frees its tool memory, on the worker (the tool is not thread-safe)."""
        with contextlib.suppress(QueueFull):  # a full queue: the tool's own cache limit frees it later
            worker.submit(session.close)

    images = ImageStore(config.image_store_bytes)
    sessions = SessionStore(config.max_sessions, config.idle_timeout, images, on_close=release)
    app.state.sessions, app.state.images, app.state.worker = sessions, images, worker

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # What was wrong and where, never the input itself (it may be an instruction, or not valid JSON text).
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return SafeJSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": "the model queue is full"}, status_code=503, headers={"Retry-After": "2"})

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": IBISAgentLib.__version__, "api": API_VERSION}

    @app.get("/v1/capabilities")
    def capabilities() -> dict[str, Any]:
        return {
            "models": models,
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_voxels": config.max_voxels,
                "max_dimension": config.max_dimension,
                "max_instruction": config.max_instruction,
                "max_sessions": config.max_sessions,
            },
            "sessions_open": len(sessions),
            "idle_timeout": config.idle_timeout,
        }

    @app.head("/v1/images/{digest}")
    def has_image(digest: Digest) -> Response:
        return Response(status_code=200 if images.get(digest) is not None else 404)

    @app.put("/v1/images/{digest}", status_code=201)
    async def upload(digest: Digest, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is None:
            raise HTTPException(411, "send the image with a Content-Length")
        # Written into one buffer of the declared size as it arrives (never held twice) and hashed meanwhile.
        body, hasher, filled = bytearray(int(declared)), content_hasher(), 0
        async for chunk in request.stream():
            if filled + len(chunk) > len(body):
                raise HTTPException(400, "the body is longer than its Content-Length")
            body[filled : filled + len(chunk)] = chunk
            hasher.update(chunk)
            filled += len(chunk)
        if filled != len(body):
            raise HTTPException(400, "the body is shorter than its Content-Length")
        if hasher.hexdigest() != digest:
            raise HTTPException(422, "the body's content hash (BLAKE2b-256) does not match the address")
        try:
            image = decode_image(body, config.max_voxels, config.max_dimension)
        except ProtocolError as exc:
            raise HTTPException(422, str(exc)) from None
        images.put(digest, image)
        log.info("image %s… stored: %s %s", digest[:12], image.kind, image.array.shape)
        return {"image": digest, "kind": image.kind, "shape": list(image.array.shape)}

    @app.post("/v1/sessions", status_code=201)
    def open_session(request: SessionRequest) -> dict[str, Any]:
        if len(request.instruction) > config.max_instruction:
            raise HTTPException(422, f"the instruction is longer than {config.max_instruction} characters")
        uploaded = images.get(request.image)
        if uploaded is None:
            raise HTTPException(404, "no such image on the server: upload it first")
        try:
            window = Window(**request.window.model_dump()) if request.window else None
            source = uploaded.source(request.slice, window)
            shape = source_image(source).shape[:2]
            mask = decode_mask(request.initial_mask.model_dump(), shape) if request.initial_mask else None
            session = backend.open_session(
                source,
                request.instruction,
                initial_mask=mask,
                max_turns=request.max_turns,
                image_source=request.image_source,
            )
        except (ValueError, ProtocolError) as exc:
            raise HTTPException(422, str(exc)) from None
        session_id = sessions.add(session, request.image)
        if session_id is None:
            raise HTTPException(503, f"the server holds its limit of {config.max_sessions} sessions")
        log.info("session %s… opened", session_id[:6])
        height, width = session.image.shape[:2]
        return {"session": session_id, "width": width, "height": height, "slice": session.trace().slice}

    def claimed(session_id: str) -> Entry:
        entry = sessions.claim(session_id)
        if entry is None:
            raise HTTPException(404, "no such session: it was closed or expired")
        if entry is False:
            raise HTTPException(409, "the session is busy with another request")
        entry.stop.clear()  # a cancel from now on, even before the job starts, stops this request's work
        return entry  # type: ignore[return-value]

    def in_worker(entry: Entry, job: Callable[[], Any]) -> Any:
        try:
            return worker.submit(job).result()
        finally:
            sessions.release(entry)

    def stream(entry: Entry, job: Callable[[Callable[[dict], None]], dict]) -> StreamingResponse:
        """Run ``job(emit)`` on the model worker and stream what it emits as NDJSON, then its last event.
        A client that goes away cancels the session's work."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict | None] = asyncio.Queue()

        def emit(event: dict | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def run() -> None:
            final: dict | None = None
            try:
                final = job(emit)
            except Exception as exc:
                log.exception("session job failed")  # the session catches expected failures: this is a bug
                final = {"event": "error", "message": str(exc)}
            finally:
                # Released before the last event goes out: a client that answers it at once finds the session free.
                sessions.release(entry)
                emit(final)
                emit(None)

        try:
            worker.submit(run)
        except QueueFull:
            sessions.release(entry)
            raise

        async def lines() -> AsyncIterator[bytes]:
            finished = False
            try:
                while (event := await events.get()) is not None:
                    yield dump_bytes(event) + b"\n"
                finished = True
            finally:
                if not finished:
                    entry.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/v1/sessions/{session_id}/run")
    async def run(session_id: SessionId, request: RunRequest) -> StreamingResponse:
        entry = claimed(session_id)
        session = entry.session

        def job(emit: Callable[[dict], None]) -> dict:
            if entry.stop.is_set():  # cancelled while it waited in the queue
                return {"event": "end", "stop_reason": "cancelled", "answer": None}
            session.on_step = lambda step: emit(step_event(step))
            try:
                session.step() if request.single_step else session.run()
            finally:
                session.on_step = None
            return {"event": "end", "stop_reason": session.stop_reason, "answer": session.answer}

        return stream(entry, job)

    @app.post("/v1/sessions/{session_id}/clicks")
    def click(session_id: SessionId, request: ClickRequest) -> dict[str, Any]:
        entry = claimed(session_id)
        try:
            step = in_worker(entry, lambda: entry.session.add_click(request.x, request.y, request.positive))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return step_event(step)

    @app.post("/v1/sessions/{session_id}/undo")
    def undo(session_id: SessionId) -> dict[str, Any]:
        entry = claimed(session_id)
        step = in_worker(entry, entry.session.undo)
        return {"undone": step.to_dict() if step else None, "mask": encode_mask(entry.session.mask)}

    @app.post("/v1/sessions/{session_id}/cancel", status_code=202)
    def cancel(session_id: SessionId) -> dict[str, str]:
        entry = sessions.get(session_id)
        if entry is None:
            raise HTTPException(404, "no such session: it was closed or expired")
        entry.cancel()
        return {"status": "cancelling"}

    @app.post("/v1/sessions/{session_id}/propagate")
    async def propagate(session_id: SessionId, request: PropagateRequest) -> StreamingResponse:
        entry = claimed(session_id)

        def job(emit: Callable[[dict], None]) -> dict:
            try:
                mask = backend.propagate(
                    entry.session,
                    PropagationOptions(**request.model_dump()),
                    on_progress=lambda done, total, index: emit(
                        {"event": "progress", "done": done, "total": total, "index": index}
                    ),
                    cancel=entry.stop,
                )
            except PropagationCancelled:
                return {"event": "cancelled"}
            return {"event": "result", "mask": encode_mask(mask)}

        return stream(entry, job)

    @app.get("/v1/sessions/{session_id}/trace")
    def trace(session_id: SessionId) -> dict[str, Any]:
        entry = sessions.get(session_id)
        if entry is None:
            raise HTTPException(404, "no such session: it was closed or expired")
        return entry.session.trace().to_dict()

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    def close(session_id: SessionId) -> Response:
        if not sessions.close(session_id):
            raise HTTPException(404, "no such session: it was closed or expired")
        return Response(status_code=204)

    app.add_middleware(GateMiddleware, token=config.token, max_body=config.max_upload_bytes)
    return app


class SafeJSONResponse(JSONResponse):
    """JSON in which any text survives (lone surrogates from a client's escapes included), never a 500."""

    def render(self, content: Any) -> bytes:
        return dump_bytes(content)


def step_event(step: Step) -> dict[str, Any]:
    """A step in the trace schema plus its mask as a compressed crop."""
    return {"event": "step", "step": step.to_dict(), "mask": encode_mask(step.mask)}
