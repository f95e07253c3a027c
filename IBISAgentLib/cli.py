"""The ``ibisagent`` command line: segment, demo, and developer helpers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .actions import format_action
from .devices import DEVICE_CHOICES
from .images import ImageInputError, read_mask, read_rgb_image, write_mask, write_rgb
from .trace import Step

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"ibisagent: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibisagent", description="Agentic, text-instructed medical image segmentation."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a 2D image from a text instruction")
    segment.add_argument("image", help="PNG/JPEG/BMP/TIFF image, greyscale or RGB")
    _add_run_options(segment)
    segment.set_defaults(handler=_segment)

    demo = commands.add_parser(
        "demo", help="run the agent on the bundled sample (released weights, else tiny random-weight models)"
    )
    demo.add_argument(
        "--workdir", default=str(Path.home() / ".cache" / "ibisagent"), help="where outputs and tiny models go"
    )
    demo.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    demo.set_defaults(handler=_demo)

    dev = commands.add_parser("dev", help="developer tools").add_subparsers(dest="dev_command", required=True)
    tiny = dev.add_parser("tiny-models", help="write tiny random-weight models for offline tests")
    tiny.add_argument("directory")
    tiny.set_defaults(handler=_tiny_models)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help='what to segment, e.g. "segment the liver tumor"')
    parser.add_argument(
        "--mllm",
        help="model folder, Hugging Face id (owner/repo:folder), http(s)://HOST/v1 endpoint or replay:FILE.json "
        "(default: $IBISAGENT_MLLM or manglu3935/IBIS:qwen2_5vl-7b-RL)",
    )
    parser.add_argument(
        "--mllm-model", help="model name at an http(s) endpoint (default: $IBISAGENT_MLLM_MODEL or the only one served)"
    )
    parser.add_argument("--api-key", help="API key for an http(s) endpoint (default: $IBISAGENT_API_KEY)")
    parser.add_argument(
        "--sam2",
        help="MedSAM2 checkpoint file or Hugging Face id "
        "(default: $IBISAGENT_SAM2 or wanglab/MedSAM2:MedSAM2_latest.pt)",
    )
    parser.add_argument("--out", help="mask PNG to write (default: IMAGE-STEM_mask.png in the current folder)")
    parser.add_argument("--trace", help="trace JSON to write (default: IMAGE-STEM_trace.json in the current folder)")
    parser.add_argument("--overlays", help="folder for the image the model saw at each turn")
    parser.add_argument("--initial-mask", help="mask PNG to refine instead of starting from nothing")
    parser.add_argument("--max-turns", type=_positive_int, default=20, help="agent turns at most (default 20)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument(
        "--jsonl", action="store_true", help="print each step as a trace-schema JSON line instead of text"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _segment(args: argparse.Namespace) -> int:
    from .session import AgentSession

    if not args.prompt.strip():
        raise UserError("--prompt is empty: say what to segment")
    image, initial_mask = _read_inputs(args.image, args.initial_mask)
    stem = Path(args.image).stem
    out = Path(args.out or f"{stem}_mask.png")
    trace_path = Path(args.trace or f"{stem}_trace.json")
    policy, tool = _load_models(args)
    overlays = Path(args.overlays) if args.overlays else None

    def on_step(step: Step) -> None:
        _print_step(step, args.jsonl)
        if overlays is not None and step.mask is not None:
            from .rendering import overlay_mask

            picture = overlay_mask(image, step.mask, session.profile.overlay_color, session.profile.overlay_alpha)
            write_rgb(overlays / f"step_{step.turn:02d}.png", picture)

    session = AgentSession(
        image,
        args.prompt,
        policy,
        tool,
        initial_mask=initial_mask,
        max_turns=args.max_turns,
        on_step=on_step,
        image_source=str(args.image),
    )
    exit_code = EXIT_OK
    try:
        session.run()
    except KeyboardInterrupt:
        session.stop_reason = "cancelled"
        exit_code = EXIT_INTERRUPTED
    trace = session.trace()
    write_mask(out, session.mask)
    trace.save(trace_path)
    last_error = next((s.error for s in reversed(trace.steps) if s.error), None)
    summary = f"stopped: {trace.stop_reason}; mask {int(session.mask.sum())} px -> {out}; trace -> {trace_path}"
    if trace.answer:
        summary += f"\nanswer: {trace.answer}"
    print(summary, file=sys.stderr if args.jsonl else sys.stdout, flush=True)
    if trace.stop_reason == "error":
        print(f"ibisagent: the run failed: {last_error}", file=sys.stderr)
        return EXIT_FAILED
    return exit_code


def _read_inputs(image_path: str, mask_path: str | None):  # -> tuple[np.ndarray, np.ndarray | None]
    try:
        image = read_rgb_image(image_path)
        mask = read_mask(mask_path, image.shape[:2]) if mask_path else None
    except ImageInputError as exc:
        raise UserError(str(exc)) from exc
    return image, mask


def _load_models(args: argparse.Namespace):  # -> tuple[Policy, SegmentationTool]
    from .loading import load_models
    from .medsam2 import CheckpointError
    from .policies.errors import PolicyError
    from .weights import WeightsUnavailable, mllm_spec, sam2_spec

    mllm, sam2 = mllm_spec(args.mllm), sam2_spec(args.sam2)
    print(f"loading policy {mllm} and MedSAM2 {sam2} ...", file=sys.stderr, flush=True)
    try:
        return load_models(mllm, sam2, args.device, args.mllm_model, args.api_key)
    except (WeightsUnavailable, CheckpointError, PolicyError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _print_step(step: Step, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(step.to_dict(), ensure_ascii=False), flush=True)
        return
    head = f"step {step.turn} ({step.source})"
    if step.action is not None:
        head += f": {format_action(step.action)}"
        if step.pixel is not None:
            head += f" -> pixel {step.pixel[0]},{step.pixel[1]}"
    if step.score is not None:
        head += f"  score {step.score:.3f}"
    head += f"  mask {step.mask_area} px"
    t = step.timings_ms
    if t:
        head += f"  [policy {t.get('policy', 0):.0f} ms, tool {t.get('tool', 0):.0f} ms]"
    lines = [head]
    if step.think:
        lines.append(f"  think: {step.think}")
    if step.answer:
        lines.append(f"  answer: {step.answer}")
    if step.error:
        lines.append(f"  ! {step.error}")
    print("\n".join(lines), flush=True)


def _tiny_models(args: argparse.Namespace) -> int:
    from .tiny_models import build_tiny_models

    mllm, medsam2 = build_tiny_models(args.directory)
    print(f"tiny Qwen2.5-VL: {mllm}\ntiny MedSAM2:   {medsam2}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir), args.device, segment=_segment)


if __name__ == "__main__":
    sys.exit(main())
