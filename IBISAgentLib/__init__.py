"""IBISAgent core: agentic, text-instructed medical image segmentation.

Importing this package is light on purpose (3D Slicer imports it at start-up): torch, transformers and
sam2 are imported inside the classes that use them.
"""

__version__ = "0.1.0"


def lazy_face(package: str, exports: dict[str, str]):  # -> (module __getattr__, __all__)
    """A subpackage's face: ``exports`` maps a public name to the submodule that defines it, imported on first
    use, so importing one submodule never imports its siblings (and no import cycle can form)."""
    import importlib

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__, sorted(exports)
