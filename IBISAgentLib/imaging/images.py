"""Reading and writing 2D images and masks (PNG, JPEG, BMP, TIFF) with clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .limits import DEFAULT_LIMITS, ImageLimits
from .rendering import to_rgb_uint8


class ImageInputError(ValueError):
    """An image or mask file that cannot be used; the message says why in one line."""


def read_rgb_image(path: str | Path, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Read a 2D image as (H, W, 3) uint8. 16-bit greyscale is scaled by its own min..max. Its size is checked
    against ``limits`` from the header, before the pixels are decoded."""
    array = _read(path, "image", limits)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageInputError(f"{path}: the image holds NaN or infinite values")
    if array.ndim == 2 and array.dtype != np.uint8:
        array = _stretch_to_uint8(array)
    if array.dtype != np.uint8:
        raise ImageInputError(f"{path}: unsupported pixel type {array.dtype}")
    if array.size == 0 or min(array.shape[:2]) < 1:
        raise ImageInputError(f"{path}: the image is empty")
    return to_rgb_uint8(array)


def read_mask(path: str | Path, shape: tuple[int, int], label: int | None = None) -> np.ndarray:
    """Read a mask that must have the image's (H, W): pixels equal to ``label``, or any non-zero pixel."""
    array = _read(path, "mask", DEFAULT_LIMITS)
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.shape != shape:
        raise ImageInputError(
            f"{path}: mask is {array.shape[1]}x{array.shape[0]} pixels but the image is {shape[1]}x{shape[0]}"
        )
    return array > 0 if label is None else array == label


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a boolean mask as an 8-bit PNG with 0 outside and 255 inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _read(path: str | Path, what: str, limits: ImageLimits) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such {what} file")
    try:
        with Image.open(path) as img:
            try:
                limits.check(img.size, f"the {what}")
            except ValueError as exc:
                raise ImageInputError(f"{path}: {exc}") from None
            if getattr(img, "n_frames", 1) > 1:
                raise ImageInputError(f"{path}: has {img.n_frames} frames; give one 2D {what}")
            if img.mode in ("P", "LA", "PA", "CMYK", "YCbCr", "HSV"):
                img = img.convert("RGBA" if "A" in img.mode else "RGB")
            if img.mode == "1":
                img = img.convert("L")
            return np.asarray(img)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{path}: declares more pixels than a 2D image may have ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageInputError(f"{path}: cannot read as an {what} ({exc})") from exc


def _stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255).astype(np.uint8)
