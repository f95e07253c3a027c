"""The remote backend: sessions that run on a backend_server, behind the same interface as local ones.

The image crosses the wire once (skipped entirely when the server already holds it, by content hash);
afterwards only small JSON travels: instructions, clicks, and masks as compressed bounding-box crops.
Errors are typed and worded for people; TLS certificates are verified unless told otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from . import __version__
from .propagation import PropagationCancelled
from .protocol import API_VERSION, UploadedImage, content_hash, decode_mask, encode_image, encode_mask
from .session import DEFAULT_MAX_TURNS
from .trace import Step, Trace
from .volume_case import VolumeCase
from .volumes import volume_array

TOKEN_ENV = "IBISAGENT_TOKEN"


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
        token = token or os.environ.get(TOKEN_ENV)
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
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
        try:
            response = http.request(
                method, url, timeout=(self.timeouts.connect, getattr(self.timeouts, phase)), **kwargs
            )
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
        if response.status_code not in accept:
            _raise_for_status(response)
        return response

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
        if isinstance(source, VolumeCase):
            image = source.image
            digest = self.upload(
                UploadedImage(
                    "volume", volume_array(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
                )
            )
            window = source.window
            body |= {
                "slice": source.slice_spec,
                "window": {"level": window.level, "width": window.width, "name": window.name},
            }
            shape = source.geometry.height, source.geometry.width
        else:
            digest = self.upload(UploadedImage("rgb", source))
            shape = source.shape[:2]
        body["image"] = digest
        if initial_mask is not None:
            body["initial_mask"] = encode_mask(initial_mask)
        created = self.request("POST", "/v1/sessions", json=body).json()
        start = initial_mask.astype(bool) if initial_mask is not None else np.zeros(shape, dtype=bool)
        return RemoteSession(self, created["session"], start, on_step)

    def propagate(
        self,
        session: RemoteSession,
        *,
        first: int | None = None,
        last: int | None = None,
        stop_after_empty: int = 3,
        largest_component: bool = False,
        on_progress: Callable[[int, int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        body = {
            "first": first,
            "last": last,
            "stop_after_empty": stop_after_empty,
            "largest_component": largest_component,
        }
        for event in session.stream("/propagate", body, phase="propagate", cancel=cancel):
            if event["event"] == "progress" and on_progress is not None:
                on_progress(event["done"], event["total"], event["index"])
            elif event["event"] == "result":
                return decode_mask(event["mask"])
            elif event["event"] == "cancelled":
                raise PropagationCancelled()
            elif event["event"] == "error":
                raise ServerFailed(f"the server's propagation failed: {event['message']}")
        if cancel is not None and cancel.is_set():
            raise PropagationCancelled()
        raise ServerFailed("the propagation ended without a result")


class RemoteSession:
    """An AgentSession on the server, mirrored here step by step."""

    def __init__(self, backend: RemoteBackend, session_id: str, start: np.ndarray, on_step) -> None:
        self.backend = backend
        self.id = session_id
        self.on_step = on_step
        self.steps: list[Step] = []
        self.stop_reason: str | None = None
        self.answer: str | None = None
        self._masks = [start]

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
        self.steps.pop()
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
        trace = Trace.from_dict(self.backend.request("GET", self._path("/trace")).json())
        for step, local in zip(trace.steps, self.steps, strict=False):
            step.mask = local.mask
        return trace

    def close(self) -> None:
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
        raise AuthFailed(f"the server refused the token ({detail}): check --token or {TOKEN_ENV}")
    if status == 404:
        raise SessionExpired(f"not found on the server: {detail}")
    if status == 503:
        retry = response.headers.get("Retry-After", "a few")
        raise ServerBusy(f"the server is busy ({detail}); try again in {retry} s")
    if status < 500:
        raise RequestRejected(f"the server refused the request (HTTP {status}): {detail}")
    raise ServerFailed(f"the server failed (HTTP {status}): {detail}")
