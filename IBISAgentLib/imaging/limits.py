"""The largest images IBISAgent takes in, one rule for the CLI, the web app and the server.

Checked from a file's header before its pixels are read, so a small file that declares a huge image (a
compressed file of zeros, a lying header) is refused before it costs memory. 2D images count pixels, volumes
voxels; ``--max-voxels`` raises the voxel limit where a site needs larger volumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# 512 x 512 x 1024: a 1024-slice CT (0.5 GB as int16; the windowed copy and the views add about as much again).
MAX_VOXELS = 512 * 512 * 1024
MAX_DIMENSION = 4096  # per axis; also the side of the largest 2D image


@dataclass(frozen=True)
class ImageLimits:
    max_voxels: int = MAX_VOXELS
    max_dimension: int = MAX_DIMENSION

    def check(self, size: Sequence[int], what: str = "the image") -> None:
        """ValueError naming the limit ``size`` (any axis order) goes over."""
        if any(s > self.max_dimension for s in size):
            raise ValueError(
                f"{what} is {' x '.join(map(str, size))}: a side is larger than the limit of {self.max_dimension}"
            )
        if math.prod(size) > self.max_voxels:
            raise ValueError(
                f"{what} is {' x '.join(map(str, size))} = {math.prod(size):,} voxels, more than the limit of "
                f"{self.max_voxels:,} (--max-voxels raises it)"
            )


DEFAULT_LIMITS = ImageLimits()
