"""JSON text that every string survives: the one place where text from outside is made safe for JSON.

Text from outside (model output, instructions, a command line read with surrogateescape, a client's
``"\\ud800"`` escape) can hold lone surrogates. ``json.dumps(..., ensure_ascii=False)`` passes them through and
the UTF-8 encoding after it fails; written as ``\\uXXXX`` escapes they are valid JSON that loads back into the
very same string, while all other text stays readable.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Outside of string literals JSON text is ASCII, so any surrogate in it sits inside a string.
_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON text (non-ASCII kept as is) that always encodes as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def dump_bytes(value: Any, *, indent: int | None = None) -> bytes:
    """``dumps`` encoded as UTF-8."""
    return dumps(value, indent=indent).encode("utf-8")
