"""From what the user names to ready models: weight specs and downloads, devices, loading, tiny test models."""

from .. import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "load_models": "loading",
        "load_backend": "loading",
        "WeightsUnavailable": "weights",
        "build_tiny_models": "tiny_models",
    },
)
