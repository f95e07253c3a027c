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


def overlay_mask(
    image: np.ndarray, mask: np.ndarray | None, color: tuple[int, int, int], alpha: float
) -> np.ndarray:
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
