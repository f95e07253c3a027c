"""Files from the page's file input, written into a folder of the server under names that cannot leave it.

A browser sends each file's name as the page's script says: ``../../x``, an absolute path, a Windows path or
an empty name are all possible. Only the last part of a name is kept, and a name that is still not a plain
file name, or that two files share, refuses the whole upload (nothing is written outside ``folder``).
"""

from __future__ import annotations

from pathlib import Path

from trame.app.file_upload import ClientFile

MAX_NAME_BYTES = 255  # what common file systems allow for one name


class UploadRefused(ValueError):
    """An upload that is not written; the message says why in one line."""


def write_uploads(uploads: list[dict], folder: Path) -> list[str]:
    """Write each upload ({name, content}) into ``folder`` (which must be empty); the names written."""
    names: list[str] = []
    for upload in uploads:
        received = ClientFile(upload if isinstance(upload, dict) else {})
        name = plain_name(str(received.name or ""))
        if name in names:
            raise UploadRefused(f"Two uploaded files are named {name!r}: upload one of them.")
        if not isinstance(received.content, (bytes, bytearray)):
            raise UploadRefused(f"The file {name!r} arrived without its content: upload it again.")
        (folder / name).write_bytes(received.content)
        names.append(name)
    return names


def plain_name(name: str) -> str:
    """The last part of an uploaded file's name; UploadRefused when no plain name is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    try:
        encoded = base.encode("utf-8")  # a lone surrogate (a page can send one) names no file
    except UnicodeEncodeError:
        encoded = b""
    if base in (".", "..") or not encoded or b"\0" in encoded or len(encoded) > MAX_NAME_BYTES:
        raise UploadRefused(f"An uploaded file has no usable name ({name[:60]!r}): rename it and upload it again.")
    return base
