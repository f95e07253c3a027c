"""Where the PACS is, how to log in to it, and what a ``pacs:`` volume argument names.

Credentials come from files or the environment, never from the command line (``ps`` shows it to every
user) and never from the URL (a URL ends up in messages and logs). Nothing here talks to the PACS.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

USER_ENV = "IBISAGENT_PACS_USER"
PASSWORD_ENV = "IBISAGENT_PACS_PASSWORD"
PACS_PREFIX = "pacs:"
# A DICOM UID: digits in dot-separated components, at most 64 characters (PS3.5 9.1).
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class PacsError(Exception):
    """Something about the PACS; the message says what in one line."""


class PacsRefused(PacsError, ValueError):
    """The user's input: credentials the PACS refused, a UID it does not hold, a series that is not a volume
    (exit code 2, 4xx on the server)."""


class PacsNotFound(PacsRefused):
    """A UID the PACS does not hold."""


class PacsLoginRefused(PacsRefused):
    """Credentials the PACS refused (on a server, its own: a fault of its set-up, not of the request)."""


class PacsUnavailable(PacsError):
    """The PACS is down, unreachable or failed (exit code 1, 502 on the server)."""


@dataclass(frozen=True)
class PacsSettings:
    """A DICOMweb root and how to log in (HTTP basic or a bearer token; neither is shown by ``repr``)."""

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None  # the CA certificates to verify the PACS's TLS with (default: the system's)

    @classmethod
    def from_options(
        cls,
        url: str,
        user: str | None = None,
        password_file: str | None = None,
        token_file: str | None = None,
        ca_bundle: str | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> PacsSettings:
        """The settings of ``--pacs``, ``--pacs-user``, ``--pacs-password-file``, ``--pacs-token-file`` and
        ``--ca-bundle`` (the user and password default to $IBISAGENT_PACS_USER and $IBISAGENT_PACS_PASSWORD);
        a ValueError says which one is wrong."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--pacs {url!r}: give the DICOMweb root as http(s)://HOST[:PORT]/PATH")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(
                "--pacs: give the DICOMweb root alone, no credentials, query or fragment in the URL (use "
                "--pacs-user with --pacs-password-file, or --pacs-token-file)"
            )
        try:
            parts.port  # noqa: B018  (urlsplit checks the port only when asked)
        except ValueError:
            raise ValueError(f"--pacs {url!r}: the port is not a number from 0 to 65535") from None
        token = _read_secret("--pacs-token-file", token_file) if token_file else None
        user = user or environ.get(USER_ENV) or None
        password = _read_secret("--pacs-password-file", password_file) if password_file else environ.get(PASSWORD_ENV)
        if token and (user or password_file):
            raise ValueError("--pacs-token-file and --pacs-user/--pacs-password-file: give one way to log in")
        if password and not user and not token:
            raise ValueError(f"a PACS password without a user: give --pacs-user or ${USER_ENV}")
        if user and not password and not token:
            raise ValueError(f"--pacs-user {user}: give its password with --pacs-password-file or ${PASSWORD_ENV}")
        if ca_bundle and not Path(ca_bundle).is_file():
            raise ValueError(f"--ca-bundle {ca_bundle}: no such file")
        return cls(url.strip().rstrip("/"), user, password if not token else None, token, ca_bundle)

    @property
    def where(self) -> str:
        """The PACS as messages name it: its URL's scheme, host and path (never credentials)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


def check_installed() -> None:
    """PacsRefused, saying how to install them, when the PACS libraries (the ``pacs`` extra) are missing."""
    missing = [name for name in ("dicomweb_client", "highdicom") if importlib.util.find_spec(name) is None]
    if missing:
        raise PacsRefused(
            f"the PACS and DICOM SEG support needs {' and '.join(missing)}: pip install 'ibisagent[pacs]'"
        )


def _read_secret(flag: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.__class__.__name__})") from None
    if not text or "\n" in text:
        raise ValueError(f"{flag} {path}: the file must hold the secret alone, on one line")
    return text


@dataclass(frozen=True)
class SeriesRef:
    """The series a ``pacs:`` argument names (its study too, where given)."""

    series_uid: str
    study_uid: str | None = None

    def __str__(self) -> str:
        return f"{PACS_PREFIX}{self.study_uid + '/' if self.study_uid else ''}{self.series_uid}"


def pacs_source(text: str) -> SeriesRef | None:
    """``pacs:SERIES_UID`` or ``pacs:STUDY_UID/SERIES_UID`` as a SeriesRef; None for anything not starting with
    ``pacs:`` (a file or folder); a ValueError for a malformed UID."""
    if not text.startswith(PACS_PREFIX):
        return None
    uids = text[len(PACS_PREFIX) :].split("/")
    if len(uids) > 2 or not all(_is_uid(u) for u in uids):
        raise ValueError(
            f"{text[:100]!r}: give pacs:SERIES_UID or pacs:STUDY_UID/SERIES_UID, each UID digits and dots "
            "(ibisagent pacs list shows them)"
        )
    return SeriesRef(uids[-1], uids[0] if len(uids) == 2 else None)


def is_date_filter(text: str) -> bool:
    """A QIDO-RS study date filter: YYYYMMDD, or a range YYYYMMDD-YYYYMMDD."""
    parts = text.split("-")
    return 1 <= len(parts) <= 2 and all(len(p) == 8 and p.isdigit() for p in parts)


def _is_uid(text: str) -> bool:
    return len(text) <= 64 and _UID.fullmatch(text) is not None
