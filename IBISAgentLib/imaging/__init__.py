"""Images and volumes as the agent sees them: files, windows, slice geometry (pixel <-> IJK <-> RAS), rendering."""

from .. import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "read_rgb_image": "images",
        "read_mask": "images",
        "ImageInputError": "images",
        "read_volume": "volumes",
        "read_labelmap": "volumes",
        "write_labelmap": "volumes",
        "VolumeInputError": "volumes",
        "VolumeCase": "volume_case",
        "SliceGeometry": "geometry",
        "Window": "windowing",
    },
)
