from __future__ import annotations

from dataclasses import dataclass

from IBISAgentLib.imaging.limits import MAX_DIMENSION, MAX_VOXELS
from IBISAgentLib.pacs import PacsSettings


@dataclass(frozen=True)
class ServerConfig:
    """Limits and lifetimes; every number is a flag of ``ibisagent serve``."""

    token: str | None = None
    max_sessions: int = 32
    idle_timeout: float = 900.0  # seconds without a request before a session is closed
    max_queue: int = 16  # model jobs waiting at most; beyond that requests get 503
    max_upload_bytes: int = 1 << 30
    body_timeout: float = 30.0  # seconds an upload may go without a byte before it is given up
    max_voxels: int = MAX_VOXELS  # the same limits as the CLI and the web app
    max_dimension: int = MAX_DIMENSION
    max_instruction: int = 2000
    image_store_bytes: int = 8 << 30  # uploaded images kept in memory (least recently used dropped first)
    pacs: PacsSettings | None = None  # the PACS that POST /v1/images/pacs retrieves series from
