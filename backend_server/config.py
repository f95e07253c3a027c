from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Limits and lifetimes; every number is a flag of ``ibisagent serve``."""

    token: str | None = None
    max_sessions: int = 32
    idle_timeout: float = 900.0  # seconds without a request before a session is closed
    max_queue: int = 16  # model jobs waiting at most; beyond that requests get 503
    max_upload_bytes: int = 1 << 30
    max_voxels: int = 512 * 512 * 2048
    max_dimension: int = 4096
    max_instruction: int = 2000
    image_store_bytes: int = 8 << 30  # uploaded images kept in memory (least recently used dropped first)
