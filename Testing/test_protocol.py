"""The wire format: masks and image uploads round-trip, and hostile payloads are refused."""

import base64
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from IBISAgentLib.remote.protocol import (
    ProtocolError,
    UploadedImage,
    decode_image,
    decode_mask,
    encode_image,
    encode_mask,
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(arrays(np.bool_, st.tuples(st.integers(1, 20), st.integers(1, 20))),
                 arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))))  # fmt: skip
def test_masks_round_trip(mask):
    assert np.array_equal(decode_mask(encode_mask(mask), mask.shape), mask)


def test_hostile_masks_are_refused():
    with pytest.raises(ProtocolError, match="the mask is"):
        decode_mask(encode_mask(np.ones((4, 4), bool)), (5, 5))
    bomb = {
        "shape": [64, 64],
        "bbox": [[0, 64], [0, 64]],
        "bits": base64.b64encode(zlib.compress(b"\\1" * 10**7)).decode(),
    }
    with pytest.raises(ProtocolError, match="exactly 512 bytes"):
        decode_mask(bomb)
    with pytest.raises(ProtocolError, match="does not fit"):
        decode_mask({"shape": [4, 4], "bbox": [[0, 9], [0, 1]], "bits": ""})


shapes = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=50, deadline=None)
@given(st.one_of(arrays(np.int16, shapes), arrays(np.uint8, shapes),
                 arrays(np.float32, shapes, elements=st.floats(-100, 100, width=32))))  # fmt: skip
def test_volume_uploads_round_trip(volume):
    image = UploadedImage("volume", volume, (0.5, 1.0, 2.5), (1.0, -2.0, 3.0), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    decoded = decode_image(encode_image(image), 10**6, 64)
    assert np.array_equal(decoded.array, volume) and decoded.array.dtype == volume.dtype
    assert decoded.spacing == image.spacing and decoded.direction == tuple(float(v) for v in image.direction)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(body):
    with pytest.raises(ProtocolError):
        decode_image(body, 10**6, 64)
