"""``ibisagent pacs list`` and what ``segment`` needs of a PACS: its options, a series retrieved into a folder
with a progress bar, and the SEG stored back."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..imaging.limits import ImageLimits
from ..pacs import PacsRefused, PacsSettings, pacs_source
from ..pacs.settings import PASSWORD_ENV, USER_ENV, SeriesRef, check_installed, is_date_filter
from .options import EXIT_OK, UserError


def add_pacs_options(parser: argparse.ArgumentParser, ca_bundle: bool = True) -> None:
    """Where the PACS is and how to log in (``segment``, ``pacs list``, ``serve`` and ``web`` take the same)."""
    group = parser.add_argument_group("PACS (DICOMweb)")
    group.add_argument("--pacs", metavar="URL", help="the PACS's DICOMweb root, e.g. https://pacs.example/dicom-web")
    group.add_argument("--pacs-user", help=f"HTTP basic user for the PACS (default: ${USER_ENV})")
    group.add_argument("--pacs-password-file", help=f"a file holding that user's password (default: ${PASSWORD_ENV})")
    group.add_argument("--pacs-token-file", help="a file holding a bearer token for the PACS, instead of a user")
    if ca_bundle:
        group.add_argument(
            "--ca-bundle",
            help="CA certificate file to verify TLS certificates with: the PACS's (and an IBISAgent server's, where "
            "one is used)",
        )


def pacs_settings(args: argparse.Namespace) -> PacsSettings | None:
    """The PACS the options name (None without --pacs); a UserError for a bad URL or unreadable secret."""
    if not args.pacs:
        if args.pacs_user or args.pacs_password_file or args.pacs_token_file:
            raise UserError("--pacs-user, --pacs-password-file and --pacs-token-file need --pacs URL")
        return None
    require_pacs_libraries()
    try:
        return PacsSettings.from_options(
            args.pacs, args.pacs_user, args.pacs_password_file, args.pacs_token_file, getattr(args, "ca_bundle", None)
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def require_pacs_libraries() -> None:
    """A UserError saying how to install them when dicomweb-client or highdicom (the pacs extra) is missing."""
    try:
        check_installed()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def checked_archive(settings: PacsSettings) -> Any:  # -> Pacs
    """The PACS a result is stored to, asked once now: refused credentials (UserError) or a PACS that is down
    (PacsUnavailable) cost no run."""
    from ..pacs.archive import Pacs

    archive = Pacs(settings)
    try:
        archive.check()
    except PacsRefused as exc:
        raise UserError(str(exc)) from None
    return archive


def series_ref(source: str) -> SeriesRef | None:
    try:
        return pacs_source(source)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def retrieve(settings: PacsSettings, ref: SeriesRef, folder: Path, limits: ImageLimits) -> Any:
    """The archive and the series ``ref`` names, its instances retrieved into ``folder`` with a progress bar."""
    from tqdm import tqdm

    from ..pacs.archive import Pacs

    archive = Pacs(settings)
    bars: list[tqdm] = []  # opened once the series is accepted as a volume, closed whatever happens

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="retrieving", unit="image", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        entry = archive.find(ref)
        archive.download(entry, folder, limits, progress)
    except PacsRefused as exc:
        raise UserError(str(exc)) from None
    finally:
        for bar in bars:
            bar.close()
    what = entry.series_description or entry.series_uid
    patient = entry.patient_id or "an unnamed patient"
    print(f"retrieved {entry.modality} series {what} ({entry.instances or '?'} images) of {patient}", file=sys.stderr)
    return archive


def add_command(commands: argparse._SubParsersAction) -> None:
    pacs = commands.add_parser("pacs", help="find studies and series on a PACS (DICOMweb)")
    verbs = pacs.add_subparsers(dest="pacs_command", required=True)
    listing = verbs.add_parser("list", help="list the series on the PACS (QIDO-RS), with the pacs: name to segment")
    listing.add_argument("--patient", help="only this patient ID")
    listing.add_argument("--modality", help="only this modality, e.g. CT or MR")
    listing.add_argument("--date", help="only studies of this date, YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    listing.add_argument("--limit", type=int, default=200, help="series at most (default 200)")
    listing.add_argument("--json", action="store_true", help="one JSON object a series instead of a table")
    add_pacs_options(listing)
    listing.set_defaults(handler=_list)


def _list(args: argparse.Namespace) -> int:
    from ..pacs.archive import Pacs

    settings = pacs_settings(args)
    if settings is None:
        raise UserError("give --pacs URL: the PACS's DICOMweb root")
    if args.date and not is_date_filter(args.date):
        raise UserError(f"--date {args.date}: use YYYYMMDD or YYYYMMDD-YYYYMMDD")
    try:
        found = Pacs(settings).series(args.patient, args.modality, args.date, limit=max(1, args.limit))
    except PacsRefused as exc:
        raise UserError(str(exc)) from None
    if args.json:
        for entry in found:
            print(json.dumps(entry.to_dict() | {"source": str(entry.ref)}))
        return EXIT_OK
    if not found:
        print(f"no series on {settings.where} match", file=sys.stderr)
        return EXIT_OK
    print(f"{'patient':<16} {'date':<8} {'mod':<4} {'images':>6}  {'description':<32} volume argument")
    for e in found:
        description = " / ".join(d for d in (e.study_description, e.series_description) if d)[:32]
        print(f"{e.patient_id[:16]:<16} {e.study_date[:8]:<8} {e.modality[:4]:<4} {e.instances or '?':>6}  "
              f"{description:<32} {e.ref}")  # fmt: skip
    return EXIT_OK
