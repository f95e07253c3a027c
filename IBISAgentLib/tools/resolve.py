"""From what the user typed (``--sam2`` a file or a Hugging Face id, ``--sam2-variant`` a name) to a variant
and a checkpoint file: the variant is named, else taken from the released weights' repo, else told by the
checkpoint's tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.weights import HubRef, is_hub_ref, resolve_sam2_file
from .sam2_model import detect, read_state
from .variants import VARIANTS, SAM2Variant, variant_named, variant_of_repo


@dataclass(frozen=True)
class SegmenterSpec:
    """A variant and its checkpoint (None: random weights, for tests and benchmarks)."""

    variant: SAM2Variant
    checkpoint: Path | None

    def tool(self, device: str = "auto", cached_images: int = 16, precision: str = "auto") -> Any:  # -> SAM2Tool
        from .click_tool import SAM2Tool

        return SAM2Tool(
            self.checkpoint, device=device, cached_images=cached_images, variant=self.variant, precision=precision
        )

    def propagator(self, device: str = "auto", precision: str = "auto") -> Any:  # -> SAM2Propagator
        from .propagation import SAM2Propagator

        return SAM2Propagator(self.checkpoint, device=device, variant=self.variant, precision=precision)

    def identity(self, role: str) -> dict[str, str]:
        """What the trace records: the variant, its image size and the checkpoint, under ``role``."""
        return {
            f"{role}_variant": self.variant.name,
            f"{role}_image_size": str(self.variant.image_size),
            f"{role}_checkpoint": str(self.checkpoint) if self.checkpoint else "random weights",
        }


def named_segmenters() -> dict[str, Callable[[type | None], Any]]:
    """The segmenter registry, by the name ``--segmenter`` takes: ``classical`` (the weight-free random walker
    and its propagator) and every SAM 2 family variant (its released checkpoint). Adding one is one entry."""
    from .classical import CLASSICAL

    def released(variant: SAM2Variant) -> Callable[[type | None], SegmenterSpec]:
        return lambda tqdm_class: resolve_segmenter(variant.hub_spec, variant.name, tqdm_class)

    return {CLASSICAL.name: lambda tqdm_class: CLASSICAL, **{v.name: released(v) for v in VARIANTS}}


def segmenter_named(spec: str, variant: str | None = None, tqdm_class: type | None = None) -> Any:
    """``--segmenter`` (``--sam2``): a name from the registry, or a checkpoint file or Hugging Face id, as
    ``resolve_segmenter`` takes. Whatever it gives has ``tool(device)``, ``propagator(device)`` and
    ``identity(role)``."""
    named = named_segmenters().get(spec)
    return named(tqdm_class) if named is not None else resolve_segmenter(spec, variant, tqdm_class)


def resolve_segmenter(spec: str, variant: str | None = None, tqdm_class: type | None = None) -> SegmenterSpec:
    """Raises WeightsUnavailable (not on disk, not downloadable), CheckpointError (tensors that fit no variant
    or several) or ValueError (an unknown variant name), each with a one-line reason."""
    chosen = variant_named(variant) if variant else None
    ref = hub_file_of(spec)
    if ref is not None:
        spec = str(ref)
        chosen = chosen or variant_of_repo(ref.repo)
    path = resolve_sam2_file(spec, tqdm_class)
    if chosen is None:
        chosen = detect(read_state(path), path)
    return SegmenterSpec(chosen, path)


def hub_file_of(spec: str) -> HubRef | None:
    """The Hugging Face file a segmenter spec (a variant's name, or an id) downloads; None for the classical
    segmenter and local files. A released repo without a file name means its checkpoint
    ("facebook/sam2-hiera-large", as sam2 takes it)."""
    spec = next((v.hub_spec for v in VARIANTS if v.name == spec), spec)
    if not is_hub_ref(spec):
        return None
    ref = HubRef.parse(spec)
    released = variant_of_repo(ref.repo)
    return HubRef(ref.repo, released.hub_file) if ref.path is None and released is not None else ref
