"""Pixels the model and the tool see: 8-bit RGB images and the mask overlay."""

from __future__ import annotations

import numpy as np


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A greyscale (H, W), (H, W, 1) or colour (H, W, 3|4) uint8 image as contiguous (H, W, 3) uint8."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected a greyscale or RGB image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def overlay_mask(image: np.ndarray, mask: np.ndarray | None, color: tuple[int, int, int], alpha: float) -> np.ndarray:
    """Blend ``color`` into ``image`` inside ``mask`` only: ``img * (1 - a) + color * a``, clipped, uint8.

    The blend is computed in float64 and truncated to uint8, as numpy does in the authors' inference;
    pixels outside the mask are returned unchanged.
    """
    if mask is None or not mask.any():
        return image
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    out = image.copy()
    inside = image[mask].astype(np.float64)
    blended = inside * (1.0 - alpha) + np.asarray(color, dtype=np.float64) * alpha
    out[mask] = np.clip(blended, 0, 255).astype(np.uint8)
    return out


class OverlayRenderer:
    """``overlay_mask`` for a sequence of masks on one image, at a fraction of its cost per turn.

    The agent loop draws the current mask every turn. The tinted image (every pixel blended, with the
    same float64 formula) is computed once; each turn then only selects, per pixel, tinted or original.
    Pixels are packed as 32-bit words so the selection is one pass over H x W words instead of
    H x W x 3 bytes. Masks are treated as immutable: the same mask object is not redrawn. Returned images
    are (H, W, 3) uint8 views that are never modified afterwards.
    """

    def __init__(self, image: np.ndarray, color: tuple[int, int, int], alpha: float) -> None:
        self.image = image
        self.color = color
        self.alpha = alpha
        self._packed = _pack(image)
        self._tinted: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self._picture = image

    def render(self, mask: np.ndarray) -> np.ndarray:
        if mask is self._mask:
            return self._picture
        if mask.shape != self.image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {self.image.shape[:2]}")
        if self._tinted is None:
            self._tinted = _pack(overlay_mask(self.image, np.ones(mask.shape, dtype=bool), self.color, self.alpha))
        packed = np.where(mask, self._tinted, self._packed)
        self._mask = mask
        self._picture = packed.view(np.uint8).reshape(*mask.shape, 4)[:, :, :3]
        return self._picture


def _pack(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 as (H, W) uint32 words holding R, G, B and a zero byte."""
    padded = np.zeros((*image.shape[:2], 4), dtype=np.uint8)
    padded[:, :, :3] = image
    return padded.view(np.uint32)[:, :, 0]
