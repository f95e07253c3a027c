"""The remote backend: sessions that run on a backend_server, behind the same interface as local ones.

The image crosses the wire once (skipped entirely when the server already holds it, by content hash);
afterwards only small JSON travels: instructions, clicks, and masks as compressed bounding-box crops.
Errors are typed and worded for people; TLS certificates are verified unless told otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests

from .. import __version__
from ..agent.session import DEFAULT_MAX_TURNS
from ..agent.trace import ImageInfo, Step, Trace
from ..agent.volume_agent import CheckedPropagation
from ..imaging.volume_case import VolumeCase
from ..tools.propagation import DEFAULT_PROPAGATION, PropagationCancelled, PropagationOptions
from .protocol import API_VERSION, UploadedImage, content_hash, decode_mask, encode_image, encode_mask, source_image

TOKEN_ENV = "IBISAGENT_TOKEN"
log = logging.getLogger(__name__)


def token_from(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The bearer token: given, else read from ``token_file`` (kept out of ``ps``), else ``$IBISAGENT_TOKEN``."""
    if token:
        return token
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {token_file}: cannot read it ({exc.__class__.__name__})") from None
        if not text:
            raise ValueError(f"--token-file {token_file}: the file is empty")
        return text
    return os.environ.get(TOKEN_ENV) or None


class RemoteError(Exception):
    """Something went wrong talking to the server; the message says what and what to do."""


class CannotConnect(RemoteError):
    pass


class AuthFailed(RemoteError):
    pass


class VersionMismatch(RemoteError):
    pass


class ServerBusy(RemoteError):
    pass


class SessionExpired(RemoteError):
    pass


class RequestRejected(RemoteError):
    """The server refused a request as invalid (4xx)."""


class ServerFailed(RemoteError):
    """The server failed or stopped answering mid-request."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds for each phase; connect applies to every request."""

    connect: float = 10.0
    control: float = 30.0
    upload: float = 600.0
    step: float = 900.0
    propagate: float = 3600.0
    busy: float = 120.0  # waiting in all, as the server's Retry-After asks, while its model queue is full


class RemoteBackend:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        verify: bool | str = True,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self.url = url.rstrip("/")
        self.timeouts = timeouts
        self.headers = {"User-Agent": f"ibisagent/{__version__}"}
        token = token_from(token)
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
            if token_exposed(self.url):
                log.warning(
                    "the token goes to %s over plain http: anyone on the network path can read it and the images; "
                    "use https (README: a TLS reverse proxy in front of the server)",
                    urlsplit(self.url).hostname,
                )
        self.verify = verify
        self.http = requests.Session()
        self.http.headers.update(self.headers)
        self.http.verify = verify
        self.server = self._check()

    # -- requests ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, phase: str = "control", **kwargs: Any) -> requests.Response:
        return self._request(self.http, method, path, phase, **kwargs)

    def _request(
        self, http: requests.Session, method: str, path: str, phase: str, accept: tuple[int, ...] = (), **kwargs: Any
    ) -> requests.Response:
        """A request with typed errors; statuses in ``accept`` are returned instead of raised."""
        url = self.url + path
        waited = 0.0
        while True:
            response = self._send(http, method, url, phase, **kwargs)
            wait = _retry_after(response)
            if wait is None or waited + wait > self.timeouts.busy:
                break
            response.close()
            log.warning("the server is busy; trying again in %g s", wait)
            time.sleep(wait)
            waited += wait
        if response.status_code not in accept:
            _raise_for_status(response)
        return response

    def _send(self, http: requests.Session, method: str, url: str, phase: str, **kwargs: Any) -> requests.Response:
        try:
            return http.request(method, url, timeout=(self.timeouts.connect, getattr(self.timeouts, phase)), **kwargs)
        except requests.exceptions.SSLError as exc:
            raise CannotConnect(f"TLS certificate check failed for {self.url}: {exc}") from exc
        except requests.ConnectionError as exc:
            raise CannotConnect(
                f"cannot connect to the IBISAgent server at {self.url}: is it running and reachable? "
                f"({exc.__class__.__name__})"
            ) from exc
        except requests.Timeout as exc:
            raise ServerFailed(
                f"the server at {self.url} did not answer within {getattr(self.timeouts, phase):g} s"
            ) from exc

    def _check(self) -> dict[str, Any]:
        health = self.request("GET", "/v1/health").json()
        if health.get("api") != API_VERSION:
            raise VersionMismatch(
                f"the server speaks protocol v{health.get('api')} (IBISAgent {health.get('version')}), this client "
                f"v{API_VERSION} (IBISAgent {__version__}): install matching versions"
            )
        return self.request("GET", "/v1/capabilities").json()

    # -- images and sessions -----------------------------------------------------------------------

    def upload(self, image: UploadedImage) -> str:
        """Send the image unless the server already has it; returns its content hash."""
        body = encode_image(image)
        digest = content_hash(body)
        held = self._request(self.http, "HEAD", f"/v1/images/{digest}", "control", accept=(404,))
        if held.status_code == 404:
            self.request(
                "PUT", f"/v1/images/{digest}", phase="upload", data=body,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
        return digest

    def fetch_from_pacs(self, series_uid: str, study_uid: str | None = None) -> dict[str, Any]:
        """Have the server retrieve a series from its own PACS instead of uploading the volume: the image's
        digest (to open sessions on), shape and geometry; RequestRejected says what was wrong (an unknown series,
        a series that is not a volume, a server without a PACS)."""
        body = {"series": series_uid, "study": study_uid}
        try:
            return self.request("POST", "/v1/images/pacs", phase="upload", json=body).json()
        except SessionExpired as exc:  # a 404 here is an unknown series (or no PACS), not a lost session
            raise RequestRejected(str(exc).replace("not found on the server: ", "")) from None

    def open_session(
        self,
        source: np.ndarray | VolumeCase,
        instruction: str,
        *,
        initial_mask: np.ndarray | None = None,
        max_turns: int = DEFAULT_MAX_TURNS,
        on_step: Callable[[Step], None] | None = None,
        image_source: str | None = None,
    ) -> RemoteSession:
        body: dict[str, Any] = {"instruction": instruction, "max_turns": max_turns, "image_source": image_source}
        digest = self.upload(UploadedImage.of(source))
        if isinstance(source, VolumeCase):
            window = source.window
            body |= {
                "slice": source.slice_spec,
                "window": {"level": window.level, "width": window.width, "name": window.name},
            }
        image = source_image(source)
        shape = image.shape[:2]
        body["image"] = digest
        if initial_mask is not None:
            body["initial_mask"] = encode_mask(initial_mask)
        created = self.request("POST", "/v1/sessions", json=body).json()
        start = initial_mask.astype(bool) if initial_mask is not None else np.zeros(shape, dtype=bool)
        mirror = Trace(
            instruction=instruction.strip(),
            image=ImageInfo(width=int(shape[1]), height=int(shape[0]), source=image_source),
            models=dict(self.server.get("models", {})),
            steps=[],
            answer=None,
            stop_reason=None,
            initial_mask_area=None if initial_mask is None else int(np.count_nonzero(initial_mask)),
            slice=created.get("slice"),
        )
        case = source if isinstance(source, VolumeCase) else None
        return RemoteSession(self, created["session"], start, on_step, mirror, image, case)

    def propagate(
        self,
        session: RemoteSession,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        *,
        on_progress: Callable[[int, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        return self.propagate_and_check(session, options, on_progress=on_progress, cancel=cancel).mask

    def propagate_and_check(
        self,
        session: RemoteSession,
        options: PropagationOptions = DEFAULT_PROPAGATION,
        check_budget: int | None = None,
        *,
        on_progress: Callable[[int, int, int], None] | None = None,
        on_check: Callable[[dict], None] | None = None,
        cancel: threading.Event | None = None,
        workers: int = 1,
    ) -> CheckedPropagation:
        """As ``LocalBackend.propagate_and_check``, on the server: progress and checks stream back as they
        happen (the server runs one model job at a time, so ``workers`` does not apply)."""
        if session.case is None:
            raise ValueError("propagation needs a session on a volume slice")
        first, last = options.span(session.case.geometry)
        body = dataclasses.asdict(options) | {"check_budget": check_budget}
        for event in session.stream("/propagate", body, phase="propagate", cancel=cancel):
            if event["event"] == "progress" and on_progress is not None:
                on_progress(event["done"], event["total"], event["index"])
            elif event["event"] == "check" and on_check is not None:
                on_check(event["record"])
            elif event["event"] == "result":
                mask = decode_mask(event["mask"])
                return CheckedPropagation(mask, first, last, event.get("slices", []), event.get("checks"))
            elif event["event"] == "cancelled":
                raise PropagationCancelled()
            elif event["event"] == "error":
                raise ServerFailed(f"the server's propagation failed: {event['message']}")
        if cancel is not None and cancel.is_set():
            raise PropagationCancelled()
        raise ServerFailed("the propagation ended without a result")


class RemoteSession:
    """An AgentSession on the server, mirrored here step by step: when the server goes away, ``trace()`` is
    what this client received (with ``error`` saying so), so a failed run still leaves its record."""

    def __init__(
        self,
        backend: RemoteBackend,
        session_id: str,
        start: np.ndarray,
        on_step: Callable[[Step], None] | None,
        mirror: Trace,
        image: np.ndarray,
        case: VolumeCase | None,
    ) -> None:
        self.backend = backend
        self.id = session_id
        self.image = image
        self.case = case
        self.on_step = on_step
        self.steps: list[Step] = []
        self.undone: list[Step] = []
        self.stop_reason: str | None = None
        self.answer: str | None = None
        self._masks = [start]
        self._mirror = mirror
        self._closed = False

    @property
    def mask(self) -> np.ndarray:
        return self._masks[-1]

    def run(self) -> Trace:
        self._agent({"single_step": False})
        return self.trace()

    def step(self) -> Step | None:
        count = len(self.steps)
        self._agent({"single_step": True})
        return self.steps[-1] if len(self.steps) > count else None

    def add_click(self, x: int, y: int, positive: bool) -> Step:
        event = self.backend.request("POST", self._path("/clicks"), json={"x": x, "y": y, "positive": positive}).json()
        return self._record(event)

    def undo(self) -> Step | None:
        event = self.backend.request("POST", self._path("/undo")).json()
        if event["undone"] is None:
            return None
        self.undone.append(self.steps.pop())
        self._masks.pop()
        self.stop_reason, self.answer = None, None
        return Step.from_dict(event["undone"])

    def cancel(self) -> None:
        """Ask the server to stop the run in progress. Returns at once (safe from a UI thread); the run's
        stream keeps delivering what the server finished until it ends, so both sides stay in step."""

        def send() -> None:
            with requests.Session() as http:
                http.headers.update(self.backend.headers)
                http.verify = self.backend.verify
                with contextlib.suppress(RemoteError):
                    self.backend._request(http, "POST", self._path("/cancel"), "control")

        threading.Thread(target=send, name="ibisagent-cancel", daemon=True).start()

    def trace(self) -> Trace:
        try:
            trace = Trace.from_dict(self.backend.request("GET", self._path("/trace")).json())
        except RemoteError as exc:
            if self._closed:
                raise
            return self._mirrored(f"{exc} (this trace holds what the client received)")
        for step, local in zip(trace.steps, self.steps, strict=False):
            step.mask = local.mask
        return trace

    def _mirrored(self, error: str) -> Trace:
        return dataclasses.replace(
            self._mirror,
            steps=list(self.steps),
            undone=list(self.undone),
            answer=self.answer,
            stop_reason=self.stop_reason or "error",
            error=error,
        )

    def close(self) -> None:
        self._closed = True
        self.backend.request("DELETE", self._path(""))

    # -- internals ---------------------------------------------------------------------------------

    def _path(self, suffix: str) -> str:
        return f"/v1/sessions/{self.id}{suffix}"

    def _agent(self, body: dict[str, Any]) -> None:
        self.stop_reason, self.answer = None, None
        for event in self.stream("/run", body, phase="step", cancel=None):
            if event["event"] == "step":
                self._record(event)
            elif event["event"] == "end":
                self.stop_reason, self.answer = event["stop_reason"], event["answer"]
                return
            elif event["event"] == "error":
                raise ServerFailed(f"the server's run failed: {event['message']}")
        raise ServerFailed("the server stopped answering during the run; the unfinished turn was not applied")

    def stream(self, suffix: str, body: dict[str, Any], phase: str, cancel: threading.Event | None) -> Iterator[dict]:
        response = self.backend.request("POST", self._path(suffix), phase=phase, json=body, stream=True)
        with response:
            try:
                for line in response.iter_lines():
                    if cancel is not None and cancel.is_set():
                        return
                    if line:
                        yield json.loads(line)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise ServerFailed(
                    "the connection to the server broke mid-stream; the unfinished work was not applied"
                ) from exc

    def _record(self, event: dict[str, Any]) -> Step:
        step = Step.from_dict(event["step"])
        step.mask = decode_mask(event["mask"])
        self.steps.append(step)
        self._masks.append(step.mask)
        if self.on_step is not None:
            self.on_step(step)
        return step


def token_exposed(url: str) -> bool:
    """Whether a token sent to ``url`` crosses a network in clear text (plain http to another machine)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(response: requests.Response) -> float | None:
    """Seconds to wait before trying again, for a 503 that says when (a full model queue: nothing was done)."""
    if response.status_code != 503:
        return None
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 600 else None


def _raise_for_status(response: requests.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text or response.reason
    detail = detail if isinstance(detail, str) else json.dumps(detail)[:500]
    if status == 401:
        raise AuthFailed(f"the server refused the token ({detail}): check --token-file or {TOKEN_ENV}")
    if status == 404:
        raise SessionExpired(f"not found on the server: {detail}")
    if status == 503:
        retry = response.headers.get("Retry-After", "a few")
        raise ServerBusy(f"the server is busy ({detail}); try again in {retry} s")
    if status < 500:
        raise RequestRejected(f"the server refused the request (HTTP {status}): {detail}")
    raise ServerFailed(f"the server failed (HTTP {status}): {detail}")
