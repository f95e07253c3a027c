"""Intensity windows that turn a volume into the 8-bit picture the agent, the tool and the propagation
all see. CT gets a named preset in Hounsfield units; anything else its 0.5-99.5 percentile range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (level, width) in Hounsfield units, as radiology viewers name them.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
PERCENTILES = (0.5, 99.5)
# Air is about -1000 HU; a volume whose darkest voxels sit near it and whose range reaches soft tissue
# and beyond is taken for CT.
_CT_AIR_BELOW = -500.0
_CT_TISSUE_ABOVE = 100.0


@dataclass(frozen=True)
class Window:
    level: float
    width: float
    name: str

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2

    def describe(self) -> str:
        return f"{self.name} (level {self.level:g}, width {self.width:g})"


def looks_like_ct(volume: np.ndarray) -> bool:
    low, high = np.percentile(_sample(volume), PERCENTILES)
    return bool(low <= _CT_AIR_BELOW and high >= _CT_TISSUE_ABOVE)


def choose_window(volume: np.ndarray, request: str | Window | None = None) -> Window:
    """``request``: a Window, a preset name, ``LEVEL,WIDTH``, ``percentile``, or None to decide from the data."""
    if isinstance(request, Window):
        if not (np.isfinite(request.level) and np.isfinite(request.width) and request.width > 0):
            raise ValueError(f"window {request.describe()}: the width must be a positive number")
        return request
    if request:
        text = request.strip().lower()
        if text in CT_PRESETS:
            return Window(*CT_PRESETS[text], name=text)
        if text != "percentile":
            return _parse_level_width(request)
    elif looks_like_ct(volume):
        return Window(*CT_PRESETS["abdomen"], name="abdomen")
    low, high = (float(v) for v in np.percentile(_sample(volume), PERCENTILES))
    if high <= low:
        high = low + 1.0
    return Window(level=(low + high) / 2, width=high - low, name="percentile 0.5-99.5")


def apply_window(values: np.ndarray, window: Window, slab_voxels: int = 1 << 22) -> np.ndarray:
    """``clip((v - low) / width * 255)`` rounded to uint8, a slab of leading-axis planes at a time, so the
    float32 working copy stays a few MiB instead of four bytes (times three temporaries) per voxel."""
    out = np.empty(values.shape, dtype=np.uint8)
    if values.ndim == 0 or values.size == 0:
        out[...] = _window_block(np.asarray(values), window)
        return out
    step = max(1, slab_voxels // max(1, values[0].size))
    for start in range(0, values.shape[0], step):
        out[start : start + step] = _window_block(values[start : start + step], window)
    return out


def _window_block(values: np.ndarray, window: Window) -> np.ndarray:
    scaled = values.astype(np.float32)
    scaled -= np.float32(window.low)
    scaled *= np.float32(255.0 / window.width)
    np.rint(scaled, out=scaled)
    return np.clip(scaled, 0, 255, out=scaled)


def check_finite(volume: np.ndarray) -> None:
    if np.issubdtype(volume.dtype, np.floating) and not np.isfinite(volume).all():
        raise ValueError("the volume contains NaN or infinite voxels")


def _parse_level_width(text: str) -> Window:
    try:
        level, width = (float(part) for part in text.split(","))
    except ValueError:
        names = ", ".join(CT_PRESETS)
        raise ValueError(f"--window {text!r}: use a preset ({names}), 'percentile' or LEVEL,WIDTH") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"--window {text!r}: the width must be a positive number")
    return Window(level, width, name="custom")


def _sample(volume: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    """Every n-th voxel, so percentiles of large volumes stay fast; exact for small ones."""
    flat = volume.reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step]
