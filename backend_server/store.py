"""What the server keeps in memory: uploaded images (by content hash) and sessions (with leases).

Both expire: a session idle longer than the idle timeout is closed, and an image that no open session uses
and nobody asked for within the same time is dropped, so memory goes back once the clients are gone.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from IBISAgentLib.remote.protocol import UploadedImage

from .memory import return_memory


class ImageStore:
    """Uploaded images by content hash, least recently used dropped beyond a byte budget. Never on disk."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._images: OrderedDict[str, tuple[UploadedImage, float]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, digest: str, image: UploadedImage) -> None:
        with self._lock:
            self._images[digest] = (image, time.monotonic())
            self._images.move_to_end(digest)
            while sum(i.array.nbytes for i, _ in self._images.values()) > self.budget and len(self._images) > 1:
                self._images.popitem(last=False)

    def get(self, digest: str) -> UploadedImage | None:
        with self._lock:
            held = self._images.get(digest)
            if held is None:
                return None
            self._images[digest] = (held[0], time.monotonic())
            self._images.move_to_end(digest)
            return held[0]

    def expire(self, idle: float, in_use: set[str]) -> int:
        """Drop images unused for ``idle`` seconds that no open session works on; how many were dropped."""
        now = time.monotonic()
        with self._lock:
            stale = [d for d, (_, used) in self._images.items() if d not in in_use and now - used > idle]
            for digest in stale:
                del self._images[digest]
        return len(stale)

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)


@dataclass
class Entry:
    session: Any  # an IBISAgentLib AgentSession
    image: str = ""  # the content hash of the image it works on
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    stop: threading.Event = field(default_factory=threading.Event)  # cancels a propagation

    def cancel(self) -> None:
        """Stop whatever the session is doing: an agent run or a propagation."""
        self.session.cancel()
        self.stop.set()


class SessionStore:
    """Open sessions by random id; sessions idle longer than ``idle_timeout`` are closed by a reaper, which
    also drops the images no session needs any more. ``on_close`` frees a closed session's model memory."""

    def __init__(
        self,
        max_sessions: int,
        idle_timeout: float,
        images: ImageStore,
        on_close: Callable[[Any], None] = lambda session: None,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.images = images
        self.on_close = on_close
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._reap_forever, name="ibisagent-session-reaper", daemon=True).start()

    def add(self, session: Any, image: str) -> str | None:
        """The new session's id, or None when the server is at its session limit."""
        with self._lock:
            self._reap_locked()
            if len(self._entries) >= self.max_sessions:
                return None
            session_id = secrets.token_urlsafe(16)
            self._entries[session_id] = Entry(session, image)
            return session_id

    def get(self, session_id: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.last_used = time.monotonic()
            return entry

    def claim(self, session_id: str) -> Entry | bool | None:
        """The entry marked busy; False when it is busy already; None when there is no such session."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                return None
            if entry.busy:
                return False
            entry.busy = True
            entry.last_used = time.monotonic()
            return entry

    def release(self, entry: Entry) -> None:
        with self._lock:
            entry.busy = False
            entry.last_used = time.monotonic()

    def close(self, session_id: str) -> bool:
        """Cancel and close the session; False when there is no such session."""
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        entry.cancel()
        self.on_close(entry.session)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stop(self) -> None:
        self._stop.set()

    def _reap_forever(self) -> None:
        while not self._stop.wait(min(max(self.idle_timeout / 4, 0.05), 30.0)):
            with self._lock:
                closed = self._reap_locked()
                in_use = {entry.image for entry in self._entries.values()}
            dropped = self.images.expire(self.idle_timeout, in_use)
            if closed or dropped:
                return_memory()

    def _reap_locked(self) -> int:
        now = time.monotonic()
        expired = [
            (session_id, entry)
            for session_id, entry in self._entries.items()
            if not entry.busy and now - entry.last_used > self.idle_timeout
        ]
        for session_id, entry in expired:
            entry.cancel()
            self.on_close(entry.session)
            del self._entries[session_id]
        return len(expired)
