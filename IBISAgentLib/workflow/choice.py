"""Which backend runs the sessions: a small value that front ends store (without the token) and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..backends import Backend


@dataclass(frozen=True)
class BackendChoice:
    """Local models (``server`` None) or a server URL, with the models to load locally.

    The token takes part in comparisons (a new token means a new connection) but never in ``settings()``,
    which is what front ends write to disk."""

    server: str | None = None
    mllm: str | None = None
    sam2: str | None = None
    device: str = "auto"
    token: str | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        return self.server is not None

    def settings(self) -> dict[str, str]:
        """The choice as strings to store; never the token."""
        return {"server": self.server or "", "mllm": self.mllm or "", "sam2": self.sam2 or "", "device": self.device}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], token: str | None = None) -> BackendChoice:
        def text(name: str) -> str | None:
            value = str(settings.get(name) or "").strip()
            return value or None

        return cls(text("server"), text("mllm"), text("sam2"), text("device") or "auto", token or None)

    def describe(self) -> str:
        return f"server {self.server}" if self.remote else f"this computer ({self.mllm or 'default model'})"

    def build(self, tqdm_class: Any = None) -> Backend:
        """Connect to the server, or load the local models (``tqdm_class`` reports weight downloads)."""
        if self.remote:
            from ..remote import RemoteBackend

            return RemoteBackend(self.server, token=self.token)
        from ..backends import LocalBackend
        from ..loading import load_models
        from ..weights import mllm_spec, sam2_spec

        policies, tool = load_models(mllm_spec(self.mllm), sam2_spec(self.sam2), self.device, tqdm_class=tqdm_class)
        return LocalBackend(policies, tool, device=self.device)
