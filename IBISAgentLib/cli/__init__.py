"""The ``ibisagent`` command line: segment, demo, and developer helpers."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TextIO

import numpy as np

from .. import __version__
from ..agent import jsontext
from ..agent.actions import format_action
from ..agent.backends import Backend, Session
from ..agent.prompts import IBIS_V1
from ..agent.trace import ImageInfo, Step, Trace
from ..imaging.images import ImageInputError, read_mask, read_rgb_image, write_mask, write_rgb
from ..imaging.rendering import overlay_mask
from ..imaging.volume_case import VolumeCase
from ..imaging.volumes import write_labelmap
from ..models.devices import DEVICE_CHOICES
from ..remote.client import RemoteError
from ..tools import MEDSAM2, SETTINGS, VARIANTS, CheckpointError, PropagationOptions, resolve_segmenter, variant_named

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """Bad input: printed as one line, exit code 2."""


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibisagent", description="Agentic, text-instructed medical image segmentation."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a 2D image or a slice of a volume from a text instruction")
    segment.add_argument(
        "image", help="PNG/JPEG/BMP/TIFF image, or a volume: .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM folder"
    )
    _add_run_options(segment)
    _add_volume_options(segment)
    segment.set_defaults(handler=_segment)

    demo = commands.add_parser(
        "demo", help="run the agent on the bundled sample (released weights, else tiny random-weight models)"
    )
    demo.add_argument(
        "--workdir", default=str(Path.home() / ".cache" / "ibisagent"), help="where outputs and tiny models go"
    )
    demo.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    demo.set_defaults(handler=_demo)

    synth = commands.add_parser("synth", help="synthesize SFT and RL training data with the oracle clicker")
    synth.add_argument(
        "--dataset", required=True, help="manifest JSONL (image, mask, instruction|target, modality, slice)"
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--teacher", help="OpenAI-compatible endpoint http(s)://HOST/v1 that writes the reasoning")
    synth.add_argument("--teacher-model", help="model name at the teacher endpoint")
    _add_training_tool_options(synth)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synth)

    evaluate = commands.add_parser("eval", help="evaluate a model or the oracle on a labelled dataset")
    evaluate.add_argument("--dataset", required=True, help="manifest JSONL")
    who = evaluate.add_mutually_exclusive_group(required=True)
    who.add_argument("--mllm", help="the model, as for segment")
    who.add_argument("--policy", choices=("oracle",), help="the oracle clicker instead of a model")
    _add_training_tool_options(evaluate)
    evaluate.add_argument("--report", required=True, help="folder for results.jsonl, report.json and report.md")
    evaluate.add_argument("--max-turns", type=_positive_int, default=20)
    evaluate.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="sessions run at once against an OpenAI-compatible --mllm endpoint, which batches them (default 1)",
    )
    evaluate.add_argument(
        "--propagate",
        action="store_true",
        help="also propagate each volume sample's final mask through its volume and report the 3D Dice and "
        "95%% Hausdorff distance against its 3D label",
    )
    evaluate.add_argument("--propagator", help="the SAM 2 family checkpoint that propagates (default: --sam2's)")
    evaluate.add_argument(
        "--propagator-variant", choices=VARIANT_NAMES, help="its variant, where the file does not tell"
    )
    evaluate.add_argument("--mllm-model")
    evaluate.add_argument("--api-key")
    evaluate.set_defaults(handler=_eval)

    train = commands.add_parser(
        "train", help="fine-tune Qwen2.5-VL: sft on synthesized turns, grpo on its own episodes"
    )
    recipes = train.add_subparsers(dest="recipe", required=True)
    grpo = recipes.add_parser("grpo", help="episode GRPO with TRL: G episodes of the agent loop per start")
    grpo.add_argument("--dataset", required=True, help="manifest JSONL: the starts (image, mask, instruction|target)")
    grpo.add_argument("--model", required=True, help="the Qwen2.5-VL to train: a folder or a Hugging Face id")
    grpo.add_argument("--out", required=True, help="folder for the adapter (or model) and episodes.jsonl")
    _add_training_tool_options(grpo)
    grpo.add_argument("--group", type=_whole_number_at_least(2), default=4, help="episodes per start, G (default 4)")
    grpo.add_argument("--starts-per-step", type=_positive_int, default=1, help="starts per optimizer step (1)")
    grpo.add_argument("--max-turns", type=_positive_int, default=8, help="turns an episode may take (8)")
    grpo.add_argument("--episode-weight", type=float, default=1.0, help="weight of the episode-return advantage")
    grpo.add_argument("--shaped-weight", type=float, default=0.5, help="weight of the per-turn shaped advantage")
    grpo.add_argument("--no-std-scaling", action="store_true", help="centre advantages only (Dr. GRPO)")
    grpo.add_argument("--lr", type=float, default=1e-6)
    grpo.add_argument("--epochs", type=float, default=1.0)
    grpo.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    grpo.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on the language model; 0: full fine-tuning")
    grpo.add_argument("--max-completion-length", type=_positive_int, default=512)
    grpo.add_argument("--temperature", type=float, default=1.0)
    grpo.add_argument("--vllm", choices=("colocate", "server"), help="sample episodes with vLLM (TRL's modes)")
    grpo.add_argument("--seed", type=int, default=0)
    grpo.set_defaults(handler=_train_grpo)
    sft = recipes.add_parser("sft", help="LoRA SFT with TRL on the turns ibisagent synth wrote")
    sft.add_argument("--data", required=True, help="the folder ibisagent synth wrote")
    sft.add_argument("--model", required=True, help="the Qwen2.5-VL to train: a folder or a Hugging Face id")
    sft.add_argument("--out", required=True)
    sft.add_argument("--epochs", type=float, default=10.0)
    sft.add_argument("--lr", type=float, default=1e-5)
    sft.add_argument("--max-steps", type=int, default=-1)
    sft.add_argument("--lora-rank", type=_positive_int, default=8)
    sft.set_defaults(handler=_train_sft)
    merge = recipes.add_parser("merge", help="fold a LoRA adapter into its base model (for grpo, segment, vLLM)")
    merge.add_argument("adapter", help="the folder train sft or train grpo wrote")
    merge.add_argument("--out", required=True, help="folder for the merged model")
    merge.add_argument("--base", help="the base model, where the adapter's recorded one is not here")
    merge.set_defaults(handler=_train_merge)

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
        help="also write a random-weight checkpoint of this SAM 2 family variant (DIR/NAME.pt, the released "
        "file's layout); repeatable",
    )
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
    add_segmenter_options(parser)
    parser.add_argument(
        "--out",
        help="mask to write: PNG for images, .nii.gz/.nrrd/.mha for volumes "
        "(default: IMAGE-STEM_mask.png or IMAGE-STEM_mask.nii.gz in the current folder)",
    )
    parser.add_argument("--trace", help="trace JSON to write (default: IMAGE-STEM_trace.json in the current folder)")
    parser.add_argument(
        "--scene",
        help="also write the result as a 3D Slicer scene (.mrb) to review: the volume, the segment, the clicks "
        "and the trace (volumes only; needs the [slicer] extra)",
    )
    parser.add_argument("--overlays", help="folder for the image the model saw at each turn")
    parser.add_argument(
        "--initial-mask", help="mask to refine instead of starting from nothing (PNG, or a labelmap for volumes)"
    )
    parser.add_argument("--max-turns", type=_positive_int, default=20, help="agent turns at most (default 20)")
    parser.add_argument(
        "--click",
        action="append",
        type=_user_click,
        default=[],
        metavar="X,Y[,+|-]",
        help="a correction click at pixel column X, row Y of the (slice) image after the agent stops; repeatable",
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--server", help="run on an IBISAgent server at this URL instead of in this process")
    parser.add_argument(
        "--token", help="the server's bearer token (visible to other users in ps: prefer --token-file or the variable)"
    )
    parser.add_argument("--token-file", help="a file holding the server's bearer token (default: $IBISAGENT_TOKEN)")
    parser.add_argument("--ca-bundle", help="CA certificate file to verify the server's TLS certificate with")
    parser.add_argument(
        "--jsonl", action="store_true", help="print each step as a trace-schema JSON line instead of text"
    )


VARIANT_NAMES = tuple(v.name for v in VARIANTS)
RELEASED = variant_named("sam2-hiera-l")


def add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    """The click tool and the propagator: any SAM 2 family checkpoint (the segment command and the server)."""
    group = parser.add_argument_group("segmenter")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--sam2",
        help="the click tool's SAM 2 family checkpoint: a file or a Hugging Face id (owner/repo[:file]); the "
        "variant comes from the id, from --sam2-variant, or from the checkpoint's tensors (default: "
        f"$IBISAGENT_SAM2 or {SETTINGS['paper']})",
    )
    which.add_argument(
        "--setting",
        choices=tuple(SETTINGS),
        help=f"paper: {MEDSAM2.title} (the paper, the default); released: {RELEASED.title} at "
        f"{RELEASED.image_size} px, the segmenter the released IBIS weights were tuned with in the authors' code",
    )
    names = ", ".join(VARIANT_NAMES)
    group.add_argument(
        "--sam2-variant",
        choices=VARIANT_NAMES,
        metavar="NAME",
        help=f"the variant of --sam2, where it does not tell: {names}",
    )
    group.add_argument("--propagator", help="the checkpoint that propagates through volumes (default: --sam2's)")
    group.add_argument(
        "--propagator-variant", choices=VARIANT_NAMES, metavar="NAME", help="the variant of --propagator"
    )


def segmenter_specs(args: argparse.Namespace) -> tuple[str, str | None, str | None, str | None]:
    """(click-tool spec, its variant, propagator spec or None, its variant) from the options."""
    from ..models.weights import sam2_spec

    spec = SETTINGS[args.setting] if args.setting else sam2_spec(args.sam2)
    return spec, args.sam2_variant, args.propagator, args.propagator_variant


def _add_training_tool_options(parser: argparse.ArgumentParser) -> None:
    """The click tool of synthesis, evaluation and training: a SAM 2 family model or the random walker."""
    parser.add_argument("--tool", choices=("sam2", "classical"), default="sam2", help="a SAM 2 family model, or none")
    parser.add_argument("--sam2", help="the SAM 2 family checkpoint for --tool sam2 (default as for segment)")
    parser.add_argument("--sam2-variant", choices=VARIANT_NAMES, help="its variant, where the file does not tell")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")


def _add_volume_options(parser: argparse.ArgumentParser) -> None:
    volume = parser.add_argument_group("volumes")
    volume.add_argument(
        "--slice", help="AXIS:INDEX, AXIS one of axial, coronal, sagittal (default: the middle axial slice)"
    )
    volume.add_argument(
        "--window",
        help="abdomen, lung, bone, brain, percentile or LEVEL,WIDTH (default: abdomen for CT, percentile otherwise)",
    )
    volume.add_argument("--propagate", action="store_true", help="grow the result through the volume with MedSAM2")
    volume.add_argument("--range", help="A:B, the slices to propagate through (default: all)")
    volume.add_argument(
        "--stop-after-empty",
        type=_non_negative_int,
        default=3,
        help="stop a direction after this many empty slices in a row (0: never; default 3)",
    )
    volume.add_argument("--largest-component", action="store_true", help="keep only the largest 3D connected part")


def _whole_number_at_least(minimum: int):  # -> Callable[[str], int]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _user_click(text: str) -> tuple[int, int, bool]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("+", "-")):
        raise argparse.ArgumentTypeError(f"{text!r}: use X,Y or X,Y,+ or X,Y,-")
    try:
        return int(parts[0]), int(parts[1]), len(parts) == 2 or parts[2] == "+"
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y are whole pixel numbers") from None


_non_negative_int = _whole_number_at_least(0)
_positive_int = _whole_number_at_least(1)


def _segment(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError("--prompt is empty: say what to segment")
    case, image, initial_mask = _read_inputs(args)
    out, trace_path = _output_paths(args, case is not None)
    _check_clicks(args.click, image.shape[:2])
    write_scene = _scene_writer(args.scene, case) if args.scene else None
    options = None
    if args.propagate:
        options = _propagation_options(args.range, args.stop_after_empty, args.largest_component, case)
    backend = _backend(args)
    report = sys.stderr if args.jsonl else sys.stdout
    outcome = _run(args, backend, case, image, initial_mask, report, options)
    if case is None:
        write_mask(out, outcome.mask)
    else:
        write_labelmap(out, outcome.mask, case.image)
    trace = outcome.trace
    trace.save(trace_path)
    if write_scene is not None:
        try:
            write_scene(args.scene, case, outcome.mask, trace, Path(args.image).name)
        except Exception as exc:  # Slicer's core reports failures in several types; all end the same way
            print(f"ibisagent: could not write the scene {args.scene}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    area = int(trace.steps[-1].mask_area if trace.steps else np.count_nonzero(outcome.mask))
    summary = f"stopped: {trace.stop_reason}; mask {area} px -> {out}; trace -> {trace_path}"
    if trace.answer:
        summary += f"\nanswer: {trace.answer}"
    print(summary, file=report, flush=True)
    if trace.stop_reason == "error":
        reason = trace.error or next((s.error for s in reversed(trace.steps) if s.error), "unknown error")
        print(f"ibisagent: the run failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    return outcome.exit_code


@dataclass
class _Outcome:
    mask: np.ndarray  # the 2D mask, or the 3D labelmap of a volume
    trace: Trace
    exit_code: int


def _run(args, backend, case, image, initial_mask, report, options) -> _Outcome:
    """The agent, the scripted corrections and the propagation. Whatever fails or is interrupted once the
    inputs are good, the outcome holds what was done until then: the one place a failed run is written from."""
    overlays = Path(args.overlays) if args.overlays else None

    def on_step(step: Step) -> None:
        _print_step(step, args.jsonl)
        if overlays is not None and step.mask is not None:
            picture = overlay_mask(image, step.mask, IBIS_V1.overlay_color, IBIS_V1.overlay_alpha)
            write_rgb(overlays / f"step_{step.turn:02d}.png", picture)

    session, propagated, exit_code, error = None, None, EXIT_OK, None
    try:
        session = backend.open_session(
            case if case is not None else image,
            args.prompt,
            initial_mask=initial_mask,
            max_turns=args.max_turns,
            on_step=on_step,
            image_source=str(args.image),
        )
        session.run()
        for x, y, positive in args.click:
            session.add_click(x, y, positive)
        if options is not None and session.stop_reason != "error":
            propagated, exit_code = _propagate(case, backend, session, report, options)
    except KeyboardInterrupt:
        if session is not None:
            session.cancel()
            session.stop_reason = "cancelled"
        exit_code = EXIT_INTERRUPTED
    except RemoteError as exc:
        exit_code, error = EXIT_FAILED, str(exc)
    if session is None:
        key = initial_mask if initial_mask is not None else np.zeros(image.shape[:2], dtype=bool)
        trace = _unstarted_trace(args, image, initial_mask, error)
    else:
        key = session.mask
        trace = session.trace()
        with contextlib.suppress(RemoteError):  # a remote session frees the server's memory at once
            session.close()
    if error is not None:
        trace.stop_reason, trace.error = "error", trace.error or error
    if case is None:
        return _Outcome(key, trace, exit_code)
    return _Outcome(propagated if propagated is not None else case.place(key), trace, exit_code)


def _unstarted_trace(args, image: np.ndarray, initial_mask: np.ndarray | None, error: str | None) -> Trace:
    height, width = image.shape[:2]
    return Trace(
        instruction=args.prompt.strip(),
        image=ImageInfo(width=width, height=height, source=str(args.image)),
        models={},
        steps=[],
        answer=None,
        stop_reason="error" if error else "cancelled",
        initial_mask_area=None if initial_mask is None else int(np.count_nonzero(initial_mask)),
        error=error,
    )


def _propagate(
    case: VolumeCase, backend: Backend, session: Session, report: TextIO, options: PropagationOptions
) -> tuple[np.ndarray | None, int]:
    """The propagated 3D mask, or None (the key slice alone) when there is nothing to grow or it was interrupted."""
    from tqdm import tqdm

    if not session.mask.any():
        print("nothing to propagate: the key slice mask is empty", file=report, flush=True)
        return None, EXIT_OK
    first, last = options.span(case.geometry)
    with tqdm(total=last - first + 1, desc="propagating", unit="slice", file=sys.stderr) as bar:

        def progress(done: int, total: int, index: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{case.geometry.axis} {index}")

        try:
            mask = backend.propagate(session, options, on_progress=progress)
        except KeyboardInterrupt:
            print("propagation interrupted: writing the key slice only", file=sys.stderr)
            return None, EXIT_INTERRUPTED
    print(f"propagated through {bar.n} slices: {int(mask.sum())} voxels", file=report)
    return mask, EXIT_OK


def _propagation_options(
    text: str | None, stop_after_empty: int, largest_component: bool, case: VolumeCase | None
) -> PropagationOptions:
    """``--range A:B`` and the other propagation flags as one value, checked against the volume."""
    if case is None:
        raise UserError("--propagate applies to volumes")
    first = last = None
    if text:
        try:
            first, last = (int(part) for part in text.split(":"))
        except ValueError:
            raise UserError(f"--range {text!r}: use A:B with whole slice numbers") from None
    options = PropagationOptions(first, last, stop_after_empty, largest_component)
    try:
        options.span(case.geometry)
    except ValueError as exc:
        raise UserError(f"--range {text}: {exc}") from None
    return options


def _output_paths(args: argparse.Namespace, volume: bool) -> tuple[Path, Path]:
    from ..imaging.volumes import VOLUME_SUFFIXES

    source = Path(args.image)
    stem = source.name
    for suffix in (*VOLUME_SUFFIXES, *source.suffixes[-1:]):
        stem = stem.removesuffix(suffix)
    out = Path(args.out or f"{stem}_mask{'.nii.gz' if volume else '.png'}")
    if volume and not out.name.lower().endswith(VOLUME_SUFFIXES):
        raise UserError(f"--out {out}: a volume's mask is written as .nii.gz, .nii, .nrrd, .mha or .mhd")
    if not volume and out.name.lower().endswith(VOLUME_SUFFIXES):
        raise UserError(f"--out {out}: a 2D image's mask is written as PNG")
    trace = Path(args.trace or f"{stem}_trace.json")
    for flag, path in (("--out", out), ("--trace", trace)):
        _check_writable(flag, path)
    if args.overlays and Path(args.overlays).exists() and not Path(args.overlays).is_dir():
        raise UserError(f"--overlays {args.overlays}: is a file; name a folder")
    return out, trace


def _scene_writer(path: str, case):  # -> Callable[..., None]
    """The scene-bundle writer (Slicer's core, an optional extra), loaded before the run so a missing one
    costs nothing."""
    if case is None:
        raise UserError("--scene applies to volumes: a 2D image's result is the mask PNG and the trace")
    if not path.lower().endswith(".mrb"):
        raise UserError(f"--scene {path}: a Slicer scene bundle is written as .mrb")
    _check_writable("--scene", Path(path))
    writers = entry_points(group="ibisagent.scene_bundle")
    try:
        return next(iter(writers)).load()
    except (StopIteration, ImportError) as exc:
        raise UserError(
            f"--scene needs 3D Slicer's core (slicer-core), which is not installed ({exc or 'no writer'}): "
            "pip install 'ibisagent[slicer]', or leave out --scene"
        ) from None


def _check_writable(flag: str, path: Path) -> None:
    """Refuse before the run an output that could not be written after it."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; name a file in it")
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing}")


def _check_clicks(clicks: list[tuple[int, int, bool]], shape: tuple[int, int]) -> None:
    height, width = shape
    for x, y, _ in clicks:
        if not (0 <= x < width and 0 <= y < height):
            raise UserError(f"--click {x},{y}: outside the {width}x{height} image (columns 0..{width - 1}, "
                            f"rows 0..{height - 1})")  # fmt: skip


def _read_inputs(args: argparse.Namespace):  # -> tuple[VolumeCase | None, np.ndarray, np.ndarray | None]
    from ..imaging.volume_case import VolumeCase
    from ..imaging.volumes import VolumeInputError, is_volume_path

    try:
        if is_volume_path(args.image):
            case = VolumeCase.load(args.image, args.slice, args.window)
            mask = case.slice_of_labelmap(args.initial_mask) if args.initial_mask else None
            return case, case.slice_rgb(), mask
        for flag, value in (("--slice", args.slice), ("--window", args.window), ("--range", args.range)):
            if value:
                raise UserError(f"{flag} applies to volumes; {args.image} is a 2D image")
        if args.propagate:
            raise UserError(f"--propagate applies to volumes; {args.image} is a 2D image")
        image = read_rgb_image(args.image)
        mask = read_mask(args.initial_mask, image.shape[:2]) if args.initial_mask else None
        return None, image, mask
    except (ImageInputError, VolumeInputError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _backend(args: argparse.Namespace):  # -> Backend
    if args.server:
        from ..remote.client import RemoteBackend, token_from

        print(f"connecting to {args.server} ...", file=sys.stderr, flush=True)
        try:
            token = token_from(args.token, args.token_file)
            return RemoteBackend(args.server, token=token, verify=args.ca_bundle or True)
        except (RemoteError, ValueError) as exc:
            raise UserError(str(exc)) from exc
    return load_local_backend(args)


def load_local_backend(args: argparse.Namespace):  # -> LocalBackend
    """The models the options name (the segment command and the server); bad specs are a UserError."""
    from ..models.loading import load_backend
    from ..models.weights import WeightsUnavailable, mllm_spec
    from ..policies.errors import PolicyError

    mllm = mllm_spec(args.mllm)
    sam2, sam2_variant, propagator, propagator_variant = segmenter_specs(args)
    print(f"loading policy {mllm} and segmenter {sam2} ...", file=sys.stderr, flush=True)
    try:
        return load_backend(
            mllm, sam2, args.device, sam2_variant=sam2_variant, propagator=propagator,
            propagator_variant=propagator_variant, model_name=args.mllm_model, api_key=args.api_key,
        )  # fmt: skip
    except (WeightsUnavailable, PolicyError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _print_step(step: Step, as_json: bool) -> None:
    if as_json:
        print(jsontext.dumps(step.to_dict()), flush=True)
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


def _training_tool(args: argparse.Namespace):  # -> SegmentationTool
    if args.tool == "classical":
        from ..tools.classical import RandomWalkerTool

        return RandomWalkerTool()
    from ..models.weights import WeightsUnavailable, sam2_spec

    try:
        return resolve_segmenter(sam2_spec(args.sam2), args.sam2_variant).tool(args.device)
    except (WeightsUnavailable, CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def _manifest(path: str):  # -> list[dict]
    from ..training.manifest import ManifestError, read_manifest

    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise UserError(str(exc)) from exc


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.manifest import ManifestError, load_sample
    from ..training.synthesis import Teacher, synthesize

    records = _manifest(args.dataset)
    try:
        samples = [load_sample(r) for r in records]
    except ManifestError as exc:
        raise UserError(str(exc)) from exc
    tool = _training_tool(args)
    teacher = Teacher(args.teacher, args.teacher_model) if args.teacher else None
    tool_name = "classical" if tool.spec is None else str(tool.spec.checkpoint)
    with tqdm(total=len(samples), desc="synthesizing", unit="sample", file=sys.stderr) as bar:
        paths = synthesize(
            samples, tool, Path(args.out), teacher, tool_name, args.seed, progress=lambda n: bar.update(1)
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..training.evaluation import evaluate
    from ..training.manifest import ManifestError, load_sample
    from ..training.oracle import OraclePolicy

    records = _manifest(args.dataset)
    tool = _training_tool(args)
    propagator = _eval_propagator(args, tool) if args.propagate else None
    if args.policy == "oracle":
        policy_for = lambda sample: OraclePolicy(sample.ground_truth)  # noqa: E731
    else:
        from ..models.loading import load_policy_factory
        from ..models.weights import WeightsUnavailable

        try:
            factory = load_policy_factory(args.mllm, args.device, args.mllm_model, args.api_key, args.workers)
        except (WeightsUnavailable, ValueError) as exc:
            raise UserError(str(exc)) from exc
        policy_for = lambda sample: factory()  # noqa: E731
    load = lambda record: load_sample(record, keep_volume=args.propagate)  # noqa: E731
    with tqdm(total=len(records), desc="evaluating", unit="sample", file=sys.stderr) as bar:
        try:
            report = evaluate(records, load, policy_for, tool, Path(args.report), args.max_turns,
                              progress=lambda done, total: bar.update(done - bar.n), workers=args.workers,
                              propagator=propagator)  # fmt: skip
        except ManifestError as exc:
            raise UserError(str(exc)) from exc
    summary = report["summary"]
    volumes = (
        f", {summary['volumes']} volumes: 3D Dice {summary['volume_dice']:.4f}, HD95 "
        + ("undefined" if summary["hd95_mm"] is None else f"{summary['hd95_mm']:.2f} mm")
        if "volumes" in summary
        else ""
    )
    print(
        f"{summary['samples']} samples: Dice {summary['dice']:.4f}, IoU {summary['iou']:.4f}, F1 {summary['f1']:.4f}, "
        f"NoC@85 {summary['noc85']:.2f}, NoC@90 {summary['noc90']:.2f}{volumes} -> {Path(args.report) / 'report.md'}"
    )
    return EXIT_OK


def _eval_propagator(args: argparse.Namespace, tool):  # -> SAM2Propagator
    """The propagator of ``--propagate``: ``--propagator``, else the click tool's own SAM 2 family model."""
    from ..models.loading import load_propagator
    from ..models.weights import WeightsUnavailable

    if args.propagator:
        try:
            return load_propagator(args.propagator, args.propagator_variant).propagator(args.device)
        except (WeightsUnavailable, ValueError) as exc:
            raise UserError(str(exc)) from exc
    if args.tool == "classical":
        raise UserError("--propagate with --tool classical needs --propagator (the random walker cannot propagate)")
    return tool.spec.propagator(args.device)


def _train_grpo(args: argparse.Namespace) -> int:
    import importlib.util

    from ..training.episodes import EpisodeWeights
    from ..training.grpo_trl import train
    from ..training.manifest import ManifestError, load_sample

    if args.vllm and importlib.util.find_spec("vllm") is None:
        raise UserError("--vllm needs vLLM installed (pip install vllm, on a GPU machine)")
    if args.lora_rank < 0:
        raise UserError(f"--lora-rank must be 0 (full fine-tuning) or more, got {args.lora_rank}")
    model = _model_folder(args.model)
    try:
        samples = [load_sample(record) for record in _manifest(args.dataset)]
    except ManifestError as exc:
        raise UserError(str(exc)) from exc
    weights = EpisodeWeights(args.episode_weight, args.shaped_weight, scale=not args.no_std_scaling)
    out = train(samples, _training_tool(args), model, Path(args.out), weights=weights,
                group_size=args.group, starts_per_step=args.starts_per_step, max_turns=args.max_turns,
                max_steps=args.max_steps, epochs=args.epochs, learning_rate=args.lr, lora_rank=args.lora_rank,
                max_completion_length=args.max_completion_length, temperature=args.temperature, vllm=args.vllm,
                seed=args.seed)  # fmt: skip
    print(
        f"{'LoRA adapter' if args.lora_rank else 'model'} written to {out}; episodes logged in {out / 'episodes.jsonl'}"
    )
    return EXIT_OK


def _train_sft(args: argparse.Namespace) -> int:
    from ..training.sft_trl import train

    if not (Path(args.data) / "sft_trl.jsonl").is_file():
        raise UserError(f"{args.data} holds no sft_trl.jsonl: give the folder ibisagent synth wrote")
    out = train(Path(args.data), _model_folder(args.model), Path(args.out), args.epochs, args.lr, args.max_steps,
                args.lora_rank)  # fmt: skip
    print(f"LoRA adapter written to {out}")
    return EXIT_OK


def _train_merge(args: argparse.Namespace) -> int:
    from ..training.merge import MergeError, merge_adapter

    base = _model_folder(args.base) if args.base else None
    try:
        out = merge_adapter(Path(args.adapter), Path(args.out), base)
    except MergeError as exc:
        raise UserError(str(exc)) from exc
    print(f"merged model written to {out}")
    return EXIT_OK


def _model_folder(spec: str) -> Path:
    from ..models.weights import WeightsUnavailable, resolve_mllm_folder

    try:
        return resolve_mllm_folder(spec)
    except WeightsUnavailable as exc:
        raise UserError(str(exc).replace("--mllm", "--model", 1)) from exc


def _tiny_models(args: argparse.Namespace) -> int:
    from ..models.tiny_models import build_random_segmenter, build_tiny_models

    mllm, medsam2 = build_tiny_models(args.directory)
    print(f"tiny Qwen2.5-VL: {mllm}\ntiny MedSAM2:   {medsam2}")
    for name in args.variant:
        path = build_random_segmenter(Path(args.directory) / f"{name}.pt", variant_named(name))
        print(f"random {name}: {path}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_arguments

    return main(demo_arguments(Path(args.workdir), args.device))


if __name__ == "__main__":
    sys.exit(main())
