"""``ibisagent serve`` and ``python -m backend_server``: load the models once, then serve HTTP."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from IBISAgentLib.cli import UserError, add_segmenter_options, build_backend
from IBISAgentLib.cli.options import add_limit_options, positive_int
from IBISAgentLib.cli.pacs import add_pacs_options, pacs_settings
from IBISAgentLib.remote.client import TOKEN_ENV, is_loopback, token_from
from IBISAgentLib.workflow import BackendChoice

from .config import ServerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--token", help="bearer token clients must send (visible in ps: prefer --token-file or the variable)"
    )
    parser.add_argument("--token-file", help=f"a file holding the bearer token (default: ${TOKEN_ENV})")
    parser.add_argument(
        "--allow-no-token",
        action="store_true",
        help="listen on a non-loopback address without a token (only behind an authenticating proxy)",
    )
    parser.add_argument("--mllm", help="as for ibisagent segment (default: $IBISAGENT_MLLM or the released IBIS)")
    parser.add_argument("--mllm-model", help="model name at an http(s) endpoint")
    parser.add_argument("--api-key", help="API key for an http(s) endpoint")
    add_segmenter_options(parser)
    add_limit_options(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--max-sessions",
        type=positive_int,
        default=defaults.max_sessions,
        help=f"sessions open at once (default {defaults.max_sessions}); each keeps its slice embedding in memory",
    )
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout, help="seconds (default 900)")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue, help="model jobs waiting at most")
    parser.add_argument(
        "--max-upload-mb", type=int, default=defaults.max_upload_bytes >> 20, help="largest upload in MiB"
    )
    parser.add_argument(
        "--image-store-mb",
        type=int,
        default=defaults.image_store_bytes >> 20,
        help="uploaded images kept in memory at most, in MiB (least recently used dropped first)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_timeout,
        help=f"seconds an upload may send nothing before it is given up (default {defaults.body_timeout:g})",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_pacs_options(parser)  # POST /v1/images/pacs retrieves series from this PACS


def register(commands: Any) -> None:
    """Adds ``serve`` to the ``ibisagent`` command (entry point group ``ibisagent.commands``)."""
    parser = commands.add_parser("serve", help="serve agent sessions over HTTP for remote clients (3D Slicer, CLI)")
    add_arguments(parser)
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .memory import pin_malloc_thresholds

    try:
        token = token_from(args.token, args.token_file)
    except ValueError as exc:
        print(f"ibisagent serve: error: {exc}", file=sys.stderr)
        return 2
    if not token and not is_loopback(args.host) and not args.allow_no_token:
        print(
            f"ibisagent serve: refusing to listen on {args.host} without a token: set --token-file or {TOKEN_ENV} "
            "(or --allow-no-token behind an authenticating reverse proxy)",
            file=sys.stderr,
        )
        return 2
    try:
        pacs = pacs_settings(args)
    except UserError as exc:
        print(f"ibisagent serve: error: {exc}", file=sys.stderr)
        return 2
    pin_malloc_thresholds()  # before the models load, so no thread arena keeps a large block
    try:
        # One slice embedding kept per session allowed: with fewer, sessions taking turns evict each other's and
        # every step recomputes one (tenfold slower steps above 16 sessions when the cache was fixed at 16).
        backend = build_backend(BackendChoice.from_arguments(args), cached_images=args.max_sessions)
        backend.propagator  # noqa: B018  (models load once, at start-up)
    except (UserError, ValueError) as exc:
        print(f"ibisagent serve: error: {exc}", file=sys.stderr)
        return 2
    config = ServerConfig(
        token=token,
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout,
        max_queue=args.max_queue,
        max_upload_bytes=args.max_upload_mb << 20,
        image_store_bytes=args.image_store_mb << 20,
        body_timeout=args.body_timeout,
        max_voxels=args.max_voxels,
        pacs=pacs,
    )
    models = {"policy": backend.policy_factory().description, "tool": backend.tool.description}
    app = create_app(backend, config, models)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    logging.getLogger("uvicorn.access").addFilter(WithoutQueryStrings())
    server.run()
    return 0


class WithoutQueryStrings(logging.Filter):
    """Access-log lines without query strings: the API takes none, so one holds what a client should not have
    sent there (a token, say) and must not reach the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?(query removed)", *args[3:])
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend_server", description="IBISAgent backend server")
    add_arguments(parser)
    return serve(parser.parse_args(argv))
