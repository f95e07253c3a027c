"""The HTTP API (versioned under /v1; OpenAPI at /docs). See IBISAgentLib.remote.protocol for the wire format."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

import IBISAgentLib
from IBISAgentLib.agent.backends import LocalBackend
from IBISAgentLib.agent.jsontext import dump_bytes
from IBISAgentLib.imaging.windowing import Window
from IBISAgentLib.pacs import SeriesRef
from IBISAgentLib.remote.protocol import API_VERSION, content_hasher
from IBISAgentLib.tools.propagation import PropagationOptions

from .config import ServerConfig
from .jobs import QueueFull
from .security import BodyTooLarge, GateMiddleware
from .service import Emit, Refused, SessionService
from .store import Entry

log = logging.getLogger("backend_server")

Digest = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
DICOM_UID = r"^[0-9]+(\.[0-9]+)*$"


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


class PacsSeriesRequest(Strict):
    """A series on the server's PACS, by its UID (and its study's, where known)."""

    series: str = Field(pattern=DICOM_UID, max_length=64)
    study: str | None = Field(default=None, pattern=DICOM_UID, max_length=64)


class RunRequest(Strict):
    single_step: bool = False


class ClickRequest(Strict):
    x: int = Field(ge=0, le=1_000_000)
    y: int = Field(ge=0, le=1_000_000)
    positive: bool


class PropagateRequest(Strict):
    first: int | None = Field(default=None, ge=0, le=1_000_000)
    last: int | None = Field(default=None, ge=0, le=1_000_000)
    stop_after_empty: int = Field(default=3, ge=0, le=100_000)
    largest_component: bool = False
    check_budget: int | None = Field(default=None, ge=0, le=64)  # the volume agent's check: slices it may re-run


def create_app(backend: LocalBackend, config: ServerConfig, models: dict[str, str]) -> FastAPI:
    """Thin routes over one SessionService: each checks its request, asks the service, and answers."""
    app = FastAPI(
        title="IBISAgent backend",
        version=IBISAgentLib.__version__,
        description="Agentic text-instructed segmentation sessions: upload an image once, then prompt small.",
        default_response_class=SafeJSONResponse,
    )
    service = SessionService(backend, config)
    app.state.service = service

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

    @app.exception_handler(Refused)
    async def turned_down(request: Request, exc: Refused) -> JSONResponse:
        return SafeJSONResponse({"detail": str(exc)}, status_code=exc.status)

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
            "slice_embeddings_kept": getattr(backend.tool, "cached_images", None),
            "sessions_open": len(service.sessions),
            "idle_timeout": config.idle_timeout,
        }

    @app.head("/v1/images/{digest}")
    def has_image(digest: Digest) -> Response:
        return Response(status_code=200 if service.images.get(digest) is not None else 404)

    @app.put("/v1/images/{digest}", status_code=201)
    async def upload(digest: Digest, request: Request) -> dict[str, Any]:
        return service.store_image(digest, await _read_body(request, digest, config.body_timeout))

    @app.post("/v1/images/pacs", status_code=201)
    def from_pacs(request: PacsSeriesRequest) -> dict[str, Any]:
        return service.fetch_series(SeriesRef(request.series, request.study))

    @app.post("/v1/sessions", status_code=201)
    def open_session(request: SessionRequest) -> dict[str, Any]:
        return service.open(
            request.image,
            request.instruction,
            slice_spec=request.slice,
            window=Window(**request.window.model_dump()) if request.window else None,
            initial_mask=request.initial_mask.model_dump() if request.initial_mask else None,
            max_turns=request.max_turns,
            image_source=request.image_source,
        )

    @app.post("/v1/sessions/{session_id}/run")
    async def run(session_id: SessionId, request: RunRequest) -> StreamingResponse:
        entry = service.claim(session_id)
        return _stream(service, entry, service.run_job(entry, request.single_step))

    @app.post("/v1/sessions/{session_id}/clicks")
    def click(session_id: SessionId, request: ClickRequest) -> dict[str, Any]:
        return service.click(session_id, request.x, request.y, request.positive)

    @app.post("/v1/sessions/{session_id}/undo")
    def undo(session_id: SessionId) -> dict[str, Any]:
        return service.undo(session_id)

    @app.post("/v1/sessions/{session_id}/cancel", status_code=202)
    def cancel(session_id: SessionId) -> dict[str, str]:
        service.entry(session_id).cancel()
        return {"status": "cancelling"}

    @app.post("/v1/sessions/{session_id}/propagate")
    async def propagate(session_id: SessionId, request: PropagateRequest) -> StreamingResponse:
        entry = service.claim(session_id)
        options = PropagationOptions(**request.model_dump(exclude={"check_budget"}))
        service.check_propagation(entry, options)
        return _stream(service, entry, service.propagate_job(entry, options, request.check_budget))

    @app.get("/v1/sessions/{session_id}/trace")
    def trace(session_id: SessionId) -> dict[str, Any]:
        return service.entry(session_id).session.trace().to_dict()

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    def close(session_id: SessionId) -> Response:
        service.close(session_id)
        return Response(status_code=204)

    app.add_middleware(GateMiddleware, token=config.token, max_body=config.max_upload_bytes)
    return app


async def _read_body(request: Request, digest: str, timeout: float) -> bytearray:
    """The upload, hashed as it arrives into a buffer that grows with the bytes received (a declared length
    reserves nothing: a client that declares a gigabyte and sends eight bytes holds eight bytes); refused
    unless its length and content hash are what the request says, and given up when ``timeout`` seconds pass
    without a byte."""
    declared = request.headers.get("content-length")
    if declared is None:
        raise HTTPException(411, "send the image with a Content-Length")
    expected, body, hasher = int(declared), bytearray(), content_hasher()
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), timeout)
            except StopAsyncIteration:
                break
            if len(body) + len(chunk) > expected:
                raise HTTPException(400, "the body is longer than its Content-Length")
            body += chunk
            hasher.update(chunk)
    except TimeoutError:
        raise HTTPException(408, f"no upload bytes for {timeout:g} s: the upload was given up") from None
    except ClientDisconnect:
        raise HTTPException(400, "the client went away during the upload") from None
    if len(body) != expected:
        raise HTTPException(400, "the body is shorter than its Content-Length")
    if hasher.hexdigest() != digest:
        raise HTTPException(422, "the body's content hash (BLAKE2b-256) does not match the address")
    return body


def _stream(service: SessionService, entry: Entry, job: Callable[[Emit], dict]) -> StreamingResponse:
    """Run ``job`` on the model worker and stream what it emits as NDJSON, then its last event. A client that
    goes away cancels the session's work."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict | None] = asyncio.Queue()

    def emit(event: dict | None) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    service.submit(entry, job, emit)

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


class SafeJSONResponse(JSONResponse):
    """JSON in which any text survives (lone surrogates from a client's escapes included), never a 500."""

    def render(self, content: Any) -> bytes:
        return dump_bytes(content)
