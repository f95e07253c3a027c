"""The ``ibisagent`` command line: segment, demo, synth, eval, train, and developer helpers; one module a
group of subcommands (segment.py, training.py) over the options they share (options.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .. import __version__
from ..models.devices import DEVICE_CHOICES
from ..models.tiny_models import DEMO_HOME
from ..pacs import PacsUnavailable
from ..tools import variant_named
from . import pacs, segment, training
from .options import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    VARIANT_NAMES,
    UserError,
    add_segmenter_options,
    build_backend,
)

__all__ = ["UserError", "add_segmenter_options", "build_backend", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for stream in (sys.stdout, sys.stderr):  # model text may hold anything; showing it must never fail
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"ibisagent: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PacsUnavailable as exc:
        print(f"ibisagent: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibisagent", description="Agentic, text-instructed medical image segmentation."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    segment.add_command(commands)

    demo = commands.add_parser(
        "demo", help="run the agent on the bundled sample (released weights, else tiny random-weight models)"
    )
    demo.add_argument("--workdir", default=str(DEMO_HOME), help="where outputs and tiny models go")
    demo.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    demo.set_defaults(handler=_demo)

    training.add_commands(commands)
    pacs.add_command(commands)

    for plugin in entry_points(group="ibisagent.commands"):
        plugin.load()(commands)

    dev = commands.add_parser("dev", help="developer tools").add_subparsers(dest="dev_command", required=True)
    tiny = dev.add_parser("tiny-models", help="write tiny random-weight models for offline tests")
    tiny.add_argument("directory")
    tiny.add_argument(
        "--variant",
        action="append",
        choices=VARIANT_NAMES,
        default=[],
        help="also write a random-weight checkpoint of this SAM 2 family variant (DIR/NAME-random.pt, the "
        "released file's layout; never over DIR/medsam2.pt); repeatable",
    )
    tiny.set_defaults(handler=_tiny_models)
    return parser


def _tiny_models(args: argparse.Namespace) -> int:
    from ..models.tiny_models import build_random_segmenter, build_tiny_models

    mllm, medsam2 = build_tiny_models(args.directory)
    print(f"tiny Qwen2.5-VL: {mllm}\ntiny MedSAM2:   {medsam2}")
    for name in args.variant:
        path = build_random_segmenter(Path(args.directory) / f"{name}-random.pt", variant_named(name))
        print(f"random {name}: {path}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_arguments

    return main(demo_arguments(Path(args.workdir), args.device))


if __name__ == "__main__":
    sys.exit(main())
