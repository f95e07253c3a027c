"""The segmenters: click tools (any SAM 2 family network, or the weight-free random walker), 3D propagation,
and the one table of SAM 2 family variants. A variant is a config plus a checkpoint; ``resolve`` turns what
the user typed (a file or a Hugging Face id, and maybe a variant name) into both."""

from .propagation import DEFAULT_PROPAGATION, PropagationCancelled, PropagationOptions
from .resolve import SegmenterSpec, resolve_segmenter
from .sam2_model import CheckpointError
from .variants import MEDSAM2, SETTINGS, VARIANTS, SAM2Variant, variant_named

__all__ = [
    "DEFAULT_PROPAGATION",
    "MEDSAM2",
    "SETTINGS",
    "VARIANTS",
    "CheckpointError",
    "PropagationCancelled",
    "PropagationOptions",
    "SAM2Variant",
    "SegmenterSpec",
    "resolve_segmenter",
    "variant_named",
]
