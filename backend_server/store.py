"""What the server keeps in memory: uploaded images (by content hash) and sessions (with leases)."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from IBISAgentLib.protocol import UploadedImage


class ImageStore:
    """Uploaded images by content hash, least recently used dropped beyond a byte budget. Never on disk."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._images: OrderedDict[str, UploadedImage] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, digest: str, image: UploadedImage) -> None:
        with self._lock:
            self._images[digest] = image
            self._images.move_to_end(digest)
            while sum(i.array.nbytes for i in self._images.values()) > self.budget and len(self._images) > 1:
                self._images.popitem(last=False)

    def get(self, digest: str) -> UploadedImage | None:
        with self._lock:
            image = self._images.get(digest)
            if image is not None:
                self._images.move_to_end(digest)
            return image


@dataclass
class Entry:
    session: Any  # an IBISAgentLib AgentSession
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    stop: threading.Event = field(default_factory=threading.Event)  # cancels a propagation

    def cancel(self) -> None:
        """Stop whatever the session is doing: an agent run or a propagation."""
        self.session.cancel()
        self.stop.set()


class SessionStore:
    """Open sessions by random id; sessions idle longer than ``idle_timeout`` are closed by a reaper."""

    def __init__(self, max_sessions: int, idle_timeout: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._reap_forever, name="ibisagent-session-reaper", daemon=True).start()

    def add(self, session: Any) -> str | None:
        """The new session's id, or None when the server is at its session limit."""
        with self._lock:
            self._reap_locked()
            if len(self._entries) >= self.max_sessions:
                return None
            session_id = secrets.token_urlsafe(16)
            self._entries[session_id] = Entry(session)
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

    def remove(self, session_id: str) -> Entry | None:
        with self._lock:
            return self._entries.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stop(self) -> None:
        self._stop.set()

    def _reap_forever(self) -> None:
        while not self._stop.wait(min(max(self.idle_timeout / 4, 0.05), 30.0)):
            with self._lock:
                self._reap_locked()

    def _reap_locked(self) -> None:
        now = time.monotonic()
        for session_id, entry in list(self._entries.items()):
            if not entry.busy and now - entry.last_used > self.idle_timeout:
                entry.cancel()
                del self._entries[session_id]
