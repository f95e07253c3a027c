"""The agent: its action grammar, prompts, the session (the one agent loop), the trace, and the backends that
open sessions in this process (``backends``) or on a server (``IBISAgentLib.remote``)."""

from .. import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "AgentSession": "session",
        "DEFAULT_MAX_TURNS": "session",
        "Trace": "trace",
        "Step": "trace",
        "LocalBackend": "backends",
        "Backend": "backends",
        "Session": "backends",
        "Click": "interfaces",
        "Policy": "interfaces",
        "SegmentationTool": "interfaces",
        "IBIS_V1": "prompts",
    },
)
