"""The wire format between the remote client and backend_server: small JSON for prompts, one binary
upload per image. Nothing here is pickled; every field read from the wire is checked.

Image upload body: ``IBISIMG1`` magic, a little-endian uint32 header length, a UTF-8 JSON header, then
the raw C-order array bytes. The header names ``dtype``, ``shape`` ((k, j, i) for volumes, (H, W, 3)
uint8 for 2D RGB images), ``kind`` ("volume" or "rgb"), and for volumes ``spacing``, ``origin`` and
``direction`` (LPS, as SimpleITK). Masks travel as the bounding box of their inside, bit-packed and
zlib-compressed, base64 in JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..imaging.volume_case import VolumeCase
from ..imaging.volumes import volume_array
from ..imaging.windowing import Window

API_VERSION = 1
MAGIC = b"IBISIMG1"
MAX_HEADER_BYTES = 16_384
ALLOWED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class ProtocolError(ValueError):
    """Bytes or JSON that do not follow the protocol; the message says what is wrong."""


@dataclass
class UploadedImage:
    kind: str  # "volume" or "rgb"
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, source: np.ndarray | VolumeCase) -> UploadedImage:
        """What a session's source sends: a volume with its geometry, or the RGB image itself."""
        if isinstance(source, VolumeCase):
            image = source.image
            return cls("volume", volume_array(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        return cls("rgb", source)

    def source(self, slice_spec: str | None = None, window: Window | None = None) -> np.ndarray | VolumeCase:
        """The session source the server opens from it (a volume at a slice and window); ValueError if the
        slice or window is given for a 2D image."""
        if self.kind != "volume":
            if slice_spec or window:
                raise ValueError("slice and window apply to volumes; this image is a 2D RGB image")
            return self.array
        volume = sitk.GetImageFromArray(self.array)
        volume.SetSpacing(self.spacing)
        volume.SetOrigin(self.origin)
        volume.SetDirection(self.direction)
        return VolumeCase.of(volume, slice_spec, window)


def source_image(source: np.ndarray | VolumeCase) -> np.ndarray:
    """The RGB image a session on ``source`` segments: the image itself, or the volume's key slice."""
    return source.slice_rgb() if isinstance(source, VolumeCase) else source


def content_hasher() -> Any:
    """BLAKE2b-256: as strong as SHA-256 for content addressing and about twice as fast in hashlib."""
    return hashlib.blake2b(digest_size=32)


def content_hash(body: bytes) -> str:
    hasher = content_hasher()
    hasher.update(body)
    return hasher.hexdigest()


def encode_image(image: UploadedImage) -> bytes:
    array = np.ascontiguousarray(image.array)
    header: dict[str, Any] = {"kind": image.kind, "dtype": array.dtype.name, "shape": list(array.shape)}
    if image.kind == "volume":
        header |= {"spacing": list(image.spacing), "origin": list(image.origin), "direction": list(image.direction)}
    encoded = json.dumps(header).encode("utf-8")
    return b"".join((MAGIC, struct.pack("<I", len(encoded)), encoded, memoryview(array).cast("B")))


def decode_image(body: bytes | bytearray, max_voxels: int, max_dimension: int) -> UploadedImage:
    """Parse and check an upload; raises ProtocolError with the reason."""
    if len(body) < len(MAGIC) + 4 or not body.startswith(MAGIC):
        raise ProtocolError("not an IBISAgent image upload (bad magic bytes)")
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {length} bytes is larger than {MAX_HEADER_BYTES}")
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(body[start : start + length]).decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON, or an integer beyond Python's 4300-digit limit
        raise ProtocolError(f"header is not JSON: {exc}") from exc
    except RecursionError:
        raise ProtocolError("header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    kind, dtype, shape = header.get("kind"), header.get("dtype"), header.get("shape")
    if kind not in ("volume", "rgb"):
        raise ProtocolError("kind must be 'volume' or 'rgb'")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype must be one of {', '.join(ALLOWED_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise ProtocolError("shape must be a list of integers")
    if kind == "rgb" and (len(shape) != 3 or shape[2] != 3 or dtype != "uint8"):
        raise ProtocolError("an rgb image must be uint8 with shape (height, width, 3)")
    if kind == "volume" and len(shape) != 3:
        raise ProtocolError(f"a volume must have 3 dimensions (k, j, i), got {len(shape)}")
    if any(s < 1 for s in shape):
        raise ProtocolError(f"every dimension must be at least 1, got {shape}")
    if any(s > max_dimension for s in shape[:2] if kind == "rgb") or (
        kind == "volume" and any(s > max_dimension for s in shape)
    ):
        raise ProtocolError(f"a dimension of {shape} is larger than the limit {max_dimension}")
    voxels = math.prod(shape[:2]) if kind == "rgb" else math.prod(shape)
    if voxels > max_voxels:
        raise ProtocolError(f"{voxels} voxels is more than the limit {max_voxels}")
    data = memoryview(body)[start + length :]
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ProtocolError(f"expected {expected} bytes of {dtype} voxels for shape {shape}, got {len(data)}")
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError("the image contains NaN or infinite values")
    if kind == "rgb":
        return UploadedImage(kind, array)
    return UploadedImage(kind, array, *_geometry(header))


def _geometry(header: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    values = []
    for name, count in (("spacing", 3), ("origin", 3), ("direction", 9)):
        field = header.get(name)
        if not (isinstance(field, list) and len(field) == count and all(_finite_number(v) for v in field)):
            raise ProtocolError(f"{name} must be a list of {count} finite numbers")
        values.append(tuple(float(v) for v in field))
    spacing, origin, direction = values
    if min(spacing) <= 0:
        raise ProtocolError("spacing must be positive")
    matrix = np.array(direction).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
        raise ProtocolError("direction must be an orthonormal 3 x 3 matrix")
    return spacing, origin, direction


def _finite_number(value: Any) -> bool:
    """A JSON number that is a finite float (an integer such as 10**400 is too large to be one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A 2D or 3D bool mask as its bounding box, bit-packed, zlib-compressed and base64-encoded."""
    if not mask.any():
        return {"shape": list(mask.shape), "bbox": None, "bits": ""}
    box = [
        (int(idx.min()), int(idx.max()) + 1)
        for idx in (np.flatnonzero(mask.any(axis=other)) for other in _others(mask))
    ]
    crop = mask[tuple(slice(lo, hi) for lo, hi in box)]
    bits = zlib.compress(np.packbits(crop, axis=None).tobytes(), 1)  # speed over size: masks are small
    return {"shape": list(mask.shape), "bbox": [list(b) for b in box], "bits": base64.b64encode(bits).decode("ascii")}


def decode_mask(data: dict[str, Any], expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The mask, after checking its shape (against ``expected_shape`` when given) and its box, and inflating
    no more bytes than the box needs (a small payload cannot expand into a huge one)."""
    try:
        shape = tuple(int(s) for s in data["shape"])
        if expected_shape is not None and shape != tuple(expected_shape):
            raise ProtocolError(f"the mask is {shape}, the image is {tuple(expected_shape)}")
        mask = np.zeros(shape, dtype=bool)
        if data["bbox"] is None:
            return mask
        box = [(int(lo), int(hi)) for lo, hi in data["bbox"]]
        if len(box) != len(shape) or any(not 0 <= lo < hi <= n for (lo, hi), n in zip(box, shape, strict=True)):
            raise ProtocolError(f"the mask box {box} does not fit its shape {shape}")
        crop_shape = tuple(hi - lo for lo, hi in box)
        needed = math.ceil(math.prod(crop_shape) / 8)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(data["bits"]), needed)
        if len(raw) != needed or inflater.unconsumed_tail:
            raise ProtocolError(f"the mask bits do not hold exactly {needed} bytes")
        packed = np.frombuffer(raw, dtype=np.uint8)
        crop = np.unpackbits(packed, count=math.prod(crop_shape)).reshape(crop_shape).astype(bool)
        mask[tuple(slice(lo, hi) for lo, hi in box)] = crop
        return mask
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise ProtocolError(f"malformed mask: {exc}") from exc


def _others(mask: np.ndarray) -> list[tuple[int, ...]]:
    """For each axis, the other axes (to reduce over when finding that axis' extent)."""
    return [tuple(a for a in range(mask.ndim) if a != axis) for axis in range(mask.ndim)]
