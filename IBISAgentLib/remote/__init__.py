"""Sessions on a backend server: the wire format (``protocol``) and the client backend (``client``)."""

from .. import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "RemoteBackend": "client",
        "RemoteError": "client",
        "RemoteSession": "client",
    },
)
