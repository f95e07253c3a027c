"""``ibisagent web [VOLUME]``: serve the web app (loopback by default; one user per process)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from IBISAgentLib.cli import UserError, add_segmenter_options
from IBISAgentLib.cli.options import add_limit_options, image_limits
from IBISAgentLib.cli.pacs import add_pacs_options, pacs_settings
from IBISAgentLib.models.devices import DEVICE_CHOICES
from IBISAgentLib.remote.client import TOKEN_ENV, is_loopback, token_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("volume", nargs="?", help="a volume to open at start (NIfTI, NRRD, MHA, or a DICOM folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    parser.add_argument(
        "--access-key-file",
        help="a file holding the page's access key (required to listen beyond this computer); the URL printed "
        "at start carries it",
    )
    parser.add_argument("--out", default="ibisagent-web", help="the folder Save writes to (default ./ibisagent-web)")
    parser.add_argument("--mllm", help="as for ibisagent segment (default: $IBISAGENT_MLLM or the released IBIS)")
    add_segmenter_options(parser)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--server", help="an IBISAgent server URL: its models run the agent (instead of this computer)")
    parser.add_argument("--token-file", help=f"a file holding the server's token (default: ${TOKEN_ENV})")
    parser.add_argument("--max-turns", type=int, default=20, help="agent turns at most per run (default 20)")
    add_limit_options(parser)
    add_pacs_options(parser)  # Open from PACS / Save to PACS; its credentials never reach the page


def register(commands: Any) -> None:
    """Adds ``web`` to the ``ibisagent`` command (entry point group ``ibisagent.commands``)."""
    parser = commands.add_parser("web", help="serve IBISAgent as a web app: open the printed URL in a browser")
    add_arguments(parser)
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    try:
        key = _access_key(args)
        token = token_from(None, args.token_file)
        pacs = pacs_settings(args)
    except (ValueError, UserError) as exc:
        print(f"ibisagent web: error: {exc}", file=sys.stderr)
        return 2
    # Offscreen rendering through EGL (Mesa's llvmpipe where there is no GPU): set before VTK loads.
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    _load_triton_first()
    from IBISAgentLib.workflow import BackendChoice

    try:
        from .app import IBISAgentWebApp
    except ImportError as exc:
        print(f"ibisagent web: needs the web extra ({exc}): pip install 'ibisagent[web]'", file=sys.stderr)
        return 2

    choice = BackendChoice.from_arguments(args, token)
    # trame reads sys.argv for its own options: it gets only what it must know, and the key through a file.
    sys.argv = [sys.argv[0], "--server"] + (["--authKeyFile", str(Path(args.access_key_file).resolve())] if key else [])
    app = IBISAgentWebApp(
        choice=choice, out_dir=Path(args.out), max_turns=args.max_turns, limits=image_limits(args), pacs=pacs
    )
    if args.volume:
        message = app.scene.open_path(args.volume)
        if message:
            print(f"ibisagent web: error: {message}", file=sys.stderr)
            return 2

    def announce(**_: Any) -> None:
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{shown}:{app.server.port}/" + (f"?secret={key}" if key else "")
        print(f"IBISAgent web app: open {url}", flush=True)

    app.server.controller.on_server_ready.add(announce)
    # timeout=0: trame's websocket server would otherwise stop 300 s after the last client left.
    app.server.start(host=args.host, port=args.port, open_browser=False, timeout=0, show_connection_info=False)
    return 0


def _access_key(args: argparse.Namespace) -> str | None:
    key = None
    if args.access_key_file:
        try:
            key = Path(args.access_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--access-key-file {args.access_key_file}: cannot read it ({exc.strerror})") from None
        if not key:
            raise ValueError(f"--access-key-file {args.access_key_file}: the file is empty")
    if not is_loopback(args.host) and key is None:
        raise ValueError(
            f"listening on {args.host} opens the app to other machines: give --access-key-file FILE (make one "
            "with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > FILE)"
        )
    return key


def _load_triton_first() -> None:
    """Triton (torch's compiler, imported lazily on the first model load) bundles its own LLVM and crashes the
    process in libtriton when it loads after Mesa's llvmpipe has loaded libLLVM for the views; loaded
    first, both work."""
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401
