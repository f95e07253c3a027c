"""Which backend runs the sessions: a small value that front ends store (without the token) and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..agent.backends import Backend

STORED = ("server", "mllm", "sam2", "sam2_variant", "propagator", "propagator_variant", "device")


@dataclass(frozen=True)
class BackendChoice:
    """Local models (``server`` None) or a server URL, with the models to load locally.

    The token takes part in comparisons (a new token means a new connection) but never in ``settings()``,
    which is what front ends write to disk."""

    server: str | None = None
    mllm: str | None = None
    sam2: str | None = None
    sam2_variant: str | None = None
    propagator: str | None = None
    propagator_variant: str | None = None
    device: str = "auto"
    token: str | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        return self.server is not None

    def settings(self) -> dict[str, str]:
        """The choice as strings to store; never the token."""
        return {name: getattr(self, name) or "" for name in STORED}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], token: str | None = None) -> BackendChoice:
        values = {name: str(settings.get(name) or "").strip() or None for name in STORED}
        return cls(**{**values, "device": values["device"] or "auto"}, token=token or None)

    def describe(self) -> str:
        return f"server {self.server}" if self.remote else f"this computer ({self.mllm or 'default model'})"

    def build(self, tqdm_class: Any = None) -> Backend:
        """Connect to the server, or load the local models (``tqdm_class`` reports weight downloads)."""
        if self.remote:
            from ..remote.client import RemoteBackend

            return RemoteBackend(self.server, token=self.token)
        from ..models.loading import load_backend
        from ..models.weights import mllm_spec, sam2_spec

        return load_backend(
            mllm_spec(self.mllm), sam2_spec(self.sam2), self.device, sam2_variant=self.sam2_variant,
            propagator=self.propagator, propagator_variant=self.propagator_variant, tqdm_class=tqdm_class,
        )  # fmt: skip
